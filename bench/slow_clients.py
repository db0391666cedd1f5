#!/usr/bin/env python3
"""bench/slow_clients.py: slowloris and idle keep-alive connections against a server, held until
stopped (SIGTERM/SIGINT) or until --deadline.

Used by bench/slowloris.sh. Two kinds of connection, each kept at its target count:

  trickle  connects and sends one byte of an endless request head (`GET /healthz HTTP/1.1`,
           `Host`, then `X-Slow: 1` header lines forever) every --interval seconds, each
           connection at its own phase, so the head never ends. The server's
           HTTP_HEADER_TIMEOUT cuts such a connection (408 then close); the cut is counted by
           kind (408, another status, EOF without an answer, reset) and the connection is
           opened again at once, as a slowloris attacker would.
  idle     connects, sends one `GET /healthz` (keep-alive), reads the whole 200 answer, then
           sits idle. A close by the server (HTTP_IDLE_TIMEOUT) is counted and the connection
           opened again.

The trickle connections are first opened evenly over --ramp seconds (give the server's header
timeout: its cuts, and the reopening, then come at an even rate instead of all at once); the
idle ones at once. At most --concurrency connections are being set up at any time. Only loopback is contacted.
Every second the counters go to --stats (JSON, replaced atomically) and a line to --series
(CSV); "ready" in the JSON turns true once both targets were reached. The final counters are
printed as JSON on stdout at the end. Exit status 0, or 2 when the run could not be set up.
"""
import argparse
import errno
import heapq
import json
import os
import random
import resource
import selectors
import signal
import socket
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/ from the import below
from idle_client import response_complete  # noqa: E402

IDLE_REQUEST = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"User-Agent: limits-bench-idle\r\n\r\n")
TRICKLE_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: limits-bench-slow\r\n"
TRICKLE_LINE = b"X-Slow: 1\r\n"


def trickle_byte(pos):
    if pos < len(TRICKLE_HEAD):
        return TRICKLE_HEAD[pos:pos + 1]
    i = (pos - len(TRICKLE_HEAD)) % len(TRICKLE_LINE)
    return TRICKLE_LINE[i:i + 1]


class Conn:
    __slots__ = ("kind", "sock", "state", "buf", "pos", "t0", "gen")

    def __init__(self, kind):
        self.kind = kind
        self.sock = None
        self.state = "new"
        self.buf = b""
        self.pos = 0
        self.t0 = 0.0
        self.gen = 0


class Slow:
    def __init__(self, args):
        self.args = args
        self.addr = (args.host, args.port)
        self.sel = selectors.DefaultSelector()
        self.conns = [Conn("trickle") for _ in range(args.trickle)] + \
                     [Conn("idle") for _ in range(args.idle)]
        self.timers = []  # (when, seq, index, generation): trickle sends; generation -1: open
        self.seq = 0
        # Idle connections open at once; trickle ones spread evenly over --ramp seconds, so that
        # the server's header timeout later cuts them at an even rate, not all at one moment.
        self.pending = list(range(len(self.conns) - 1, args.trickle - 1, -1))  # to (re)open
        t0 = time.monotonic()
        for i in range(args.trickle):
            if args.ramp > 0:
                self.seq += 1
                heapq.heappush(self.timers, (t0 + args.ramp * i / args.trickle, self.seq, i, -1))
            else:
                self.pending.append(i)
        self.connecting = 0
        self.rng = random.Random(7)
        self.c = {"connects": 0, "connect_errors": 0, "cut_408": 0, "cut_other_status": 0,
                  "cut_eof": 0, "cut_reset": 0, "idle_closed": 0, "idle_bad": 0,
                  "bytes_sent": 0, "trickle_open": 0, "idle_open": 0}
        self.other_status = {}
        self.lifetimes = []  # seconds from connect to cut, trickle connections
        self.ready = False
        self.ready_at = None
        self.t_start = time.monotonic()

    # ---- connections ----------------------------------------------------------------------
    def start(self, i):
        c = self.conns[i]
        c.gen += 1
        c.buf, c.pos = b"", 0
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex(self.addr)
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            self.c["connect_errors"] += 1
            if rc in (errno.EMFILE, errno.ENFILE):
                raise SystemExit(f"cannot open a connection: {os.strerror(rc)}")
            return False
        c.sock, c.state, c.t0 = s, "connecting", time.monotonic()
        self.sel.register(s, selectors.EVENT_WRITE, i)
        self.connecting += 1
        self.c["connects"] += 1
        return True

    def drop(self, i, reopen=True):
        c = self.conns[i]
        if c.sock is not None:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
        if c.state in ("connecting", "requesting"):
            self.connecting -= 1
        elif c.state == "trickling":
            self.c["trickle_open"] -= 1
        elif c.state == "idle":
            self.c["idle_open"] -= 1
        c.sock, c.state = None, "new"
        c.gen += 1  # cancels its timer
        if reopen:
            self.pending.append(i)

    def cut(self, i, data, err=False):
        """A trickle connection ended by the server: classify, count, reopen."""
        c = self.conns[i]
        if data.startswith(b"HTTP/"):
            try:
                code = int(data.split(b" ", 2)[1])
            except (IndexError, ValueError):
                code = 0
            if code == 408:
                self.c["cut_408"] += 1
            else:
                self.c["cut_other_status"] += 1
                self.other_status[str(code)] = self.other_status.get(str(code), 0) + 1
        elif err:
            self.c["cut_reset"] += 1
        else:
            self.c["cut_eof"] += 1
        self.lifetimes.append(time.monotonic() - c.t0)
        if len(self.lifetimes) > 20000:
            del self.lifetimes[:10000]
        self.drop(i)

    def schedule(self, i, when):
        self.seq += 1
        heapq.heappush(self.timers, (when, self.seq, i, self.conns[i].gen))

    def send_byte(self, i, next_in=None):
        c = self.conns[i]
        try:
            n = c.sock.send(trickle_byte(c.pos))
        except BlockingIOError:
            n = 0
        except OSError:
            # The server closed it: its answer (a 408) may be waiting to be read.
            try:
                data = c.sock.recv(4096)
            except OSError:
                data = b""
            self.cut(i, data, err=not data)
            return
        c.pos += n
        self.c["bytes_sent"] += n
        self.schedule(i, time.monotonic() + (self.args.interval if next_in is None else next_in))

    def on_event(self, i):
        c = self.conns[i]
        if c.state == "connecting":
            self.connecting -= 1
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                c.state = "failed"
                self.c["connect_errors"] += 1
                self.drop(i)
                return
            if c.kind == "trickle":
                c.state = "trickling"
                self.c["trickle_open"] += 1
                self.sel.modify(c.sock, selectors.EVENT_READ, i)
                # The first byte at once; the second at a random point of the first interval,
                # so that the connections' sends spread evenly; then one per interval.
                self.send_byte(i, self.rng.uniform(0.0, self.args.interval))
            else:
                try:
                    c.sock.send(IDLE_REQUEST)
                except OSError:
                    self.c["idle_bad"] += 1
                    c.state = "failed"
                    self.drop(i)
                    return
                c.state = "requesting"
                self.connecting += 1  # still being set up
                self.sel.modify(c.sock, selectors.EVENT_READ, i)
            return
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data, err = b"", True
        else:
            err = False
        if c.state == "trickling":
            self.cut(i, data, err)
        elif c.state == "requesting":
            if not data:
                self.c["idle_bad"] += 1
                self.drop(i)
                return
            c.buf += data
            done, status, keep_alive = response_complete(c.buf)
            if not done:
                return
            self.connecting -= 1
            if status != 200 or not keep_alive:
                self.c["idle_bad"] += 1
                c.state = "failed"
                self.drop(i)
                return
            c.state, c.buf = "idle", b""
            self.c["idle_open"] += 1
        elif c.state == "idle":
            if data:
                self.c["idle_bad"] += 1
            else:
                self.c["idle_closed"] += 1
            self.drop(i)

    # ---- reporting ------------------------------------------------------------------------
    def snapshot(self):
        d = dict(self.c)
        d["t"] = round(time.monotonic() - self.t_start, 3)
        d["epoch"] = round(time.time(), 3)
        d["ready"] = self.ready
        d["ready_after_s"] = None if self.ready_at is None else round(self.ready_at, 3)
        d["trickle_target"] = self.args.trickle
        d["idle_target"] = self.args.idle
        d["interval_s"] = self.args.interval
        d["other_statuses"] = self.other_status
        d["cuts"] = len(self.lifetimes)
        d["lifetime_median_s"] = (round(statistics.median(self.lifetimes), 3)
                                  if self.lifetimes else None)
        d["lifetime_max_s"] = round(max(self.lifetimes), 3) if self.lifetimes else None
        return d

    def write_stats(self, series):
        d = self.snapshot()
        if self.args.stats:
            tmp = self.args.stats + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(d, f)
            os.replace(tmp, self.args.stats)
        if series is not None:
            series.write(",".join(str(d[k]) for k in SERIES_FIELDS) + "\n")
            series.flush()

    # ---- loop -----------------------------------------------------------------------------
    def run(self, stop):
        deadline = self.t_start + self.args.deadline
        series = None
        if self.args.series:
            series = open(self.args.series, "w", encoding="utf-8")
            series.write(",".join(SERIES_FIELDS) + "\n")
        next_stats = 0.0
        while not stop["now"] and time.monotonic() < deadline:
            while self.pending and self.connecting < self.args.concurrency:
                i = self.pending.pop()
                if not self.start(i):
                    self.pending.insert(0, i)
                    break
            now = time.monotonic()
            wait = 0.2
            if self.timers:
                wait = max(0.0, min(wait, self.timers[0][0] - now))
            for key, _ in self.sel.select(timeout=wait):
                self.on_event(key.data)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, i, gen = heapq.heappop(self.timers)
                c = self.conns[i]
                if gen == -1:
                    self.pending.append(i)
                elif gen == c.gen and c.state == "trickling":
                    self.send_byte(i)
            if (not self.ready and self.c["trickle_open"] >= self.args.trickle and
                    self.c["idle_open"] >= self.args.idle):
                self.ready = True
                self.ready_at = now - self.t_start
            if now >= next_stats:
                self.write_stats(series)
                next_stats = now + 1.0
        self.write_stats(series)
        if series is not None:
            series.close()
        final = self.snapshot()
        for i in range(len(self.conns)):
            if self.conns[i].sock is not None:
                self.drop(i, reopen=False)
        return final


SERIES_FIELDS = ("epoch", "trickle_open", "idle_open", "cut_408", "cut_other_status", "cut_eof",
                 "cut_reset", "idle_closed", "idle_bad", "connect_errors", "bytes_sent")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--trickle", type=int, default=1000, help="slowloris connections")
    ap.add_argument("--idle", type=int, default=1000, help="idle keep-alive connections")
    ap.add_argument("--interval", type=float, default=2.0,
                    help="seconds between two bytes of one trickle connection")
    ap.add_argument("--ramp", type=float, default=0.0,
                    help="seconds over which the trickle connections are first opened")
    ap.add_argument("--concurrency", type=int, default=200,
                    help="connections being set up at once")
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds at most")
    ap.add_argument("--stats", help="JSON counters, rewritten every second")
    ap.add_argument("--series", help="CSV, one line of counters per second")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("this benchmark only talks to loopback")
    if args.interval <= 0 or args.trickle < 0 or args.idle < 0:
        raise SystemExit("--interval must be > 0, --trickle and --idle >= 0")
    want = args.trickle + args.idle + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            print(f"error: open-files hard limit {hard} < {want} needed", file=sys.stderr)
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    stop = {"now": False}

    def on_signal(_sig, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    s = Slow(args)
    final = s.run(stop)
    json.dump(final, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
