#!/usr/bin/env python3
"""bench/idle_client.py: hold N idle keep-alive connections to a server and report its RSS growth.

Used by bench/idle_rss.sh. Every connection sends one `GET /healthz` and reads the whole
response (so it is a real keep-alive connection, past its first request), then stays idle.
The server's VmRSS (from /proc/PID/status) is read before the first connection and once all N
are idle; while they are open, fresh connections and a keep-alive connection probe /healthz,
and a sample of the idle connections sends a second request to prove they are still usable.
Only the given host (127.0.0.1 by default) is contacted. Everything is bounded by --deadline.

Prints a markdown report; exit status 0 when every goal is met, 1 when one is missed, 2 when
the run could not be done (server gone, too few file descriptors, connections refused...).
"""
import argparse
import errno
import os
import random
import resource
import selectors
import socket
import statistics
import sys
import time

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: limits-bench-idle\r\n\r\n"
PER_CONN_GOAL = 2048          # bytes of server RSS per idle connection
TOTAL_GOAL = 20 * 1024 * 1024  # bytes of server RSS growth for the whole run
PROBE_GOAL_MS = 100.0         # slowest /healthz probe while the idle connections are open


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmSize"):
                out[key] = int(rest.split()[0]) * 1024
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def tcp_mem_bytes():
    """Kernel memory of all TCP sockets (/proc/net/sockstat 'mem', in pages)."""
    try:
        with open("/proc/net/sockstat", encoding="ascii") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    return -1


class Conn:
    __slots__ = ("sock", "state", "buf", "t0", "need", "attempts")

    def __init__(self):
        self.sock = None
        self.state = "new"
        self.buf = b""
        self.t0 = 0.0
        self.need = -1
        self.attempts = 0


def response_complete(buf):
    """(done, status, keep_alive) for a buffered HTTP/1.1 response, or (False, ...) if partial."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False, 0, False
    head = buf[:head_end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        return True, 0, False
    length = 0
    keep_alive = True
    for h in head[1:]:
        name, _, value = h.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and "close" in value.lower():
            keep_alive = False
    if len(buf) < head_end + 4 + length:
        return False, status, keep_alive
    return True, status, keep_alive


def one_request(sock, timeout):
    """Send REQUEST on a blocking socket and read one response. Returns (status, ms, keep_alive)."""
    sock.settimeout(timeout)
    t0 = time.perf_counter()
    sock.sendall(REQUEST)
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, (time.perf_counter() - t0) * 1000, False
        buf += chunk
        done, status, ka = response_complete(buf)
        if done:
            return status, (time.perf_counter() - t0) * 1000, ka


def open_idle(args, deadline):
    """Open args.conns keep-alive connections, each past one request. Returns (conns, stats)."""
    sel = selectors.DefaultSelector()
    conns = [Conn() for _ in range(args.conns)]
    pending = list(range(args.conns - 1, -1, -1))  # stack of indexes still to start
    in_flight = 0
    idle = 0
    stats = {"connect_errors": 0, "bad_status": 0, "server_closed": 0, "retries": 0,
             "first_request_ms": []}
    addr = (args.host, args.port)

    def start(i):
        c = conns[i]
        c.attempts += 1
        c.buf = b""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex(addr)
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            return rc
        c.sock, c.state, c.t0 = s, "connecting", time.perf_counter()
        sel.register(s, selectors.EVENT_WRITE, i)
        return 0

    def fail(i, what):
        nonlocal in_flight
        c = conns[i]
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        c.sock, c.state = None, "new"
        in_flight -= 1
        stats[what] += 1
        if c.attempts < 3:
            stats["retries"] += 1
            pending.append(i)
        else:
            c.state = "failed"

    while (pending or in_flight) and time.monotonic() < deadline:
        while pending and in_flight < args.concurrency:
            i = pending.pop()
            rc = start(i)
            if rc:
                stats["connect_errors"] += 1
                if rc in (errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL):
                    raise SystemExit(f"cannot open connection {i + 1}: {os.strerror(rc)}")
                conns[i].state = "failed" if conns[i].attempts >= 3 else "new"
                if conns[i].state == "new":
                    pending.append(i)
                    break
                continue
            in_flight += 1
        for key, _ in sel.select(timeout=0.5):
            i = key.data
            c = conns[i]
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(i, "connect_errors")
                    continue
                try:
                    c.sock.send(REQUEST)  # 80 bytes on a fresh socket: sent whole
                except OSError:
                    fail(i, "connect_errors")
                    continue
                c.state = "reading"
                sel.modify(c.sock, selectors.EVENT_READ, i)
            elif c.state == "reading":
                try:
                    chunk = c.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    fail(i, "server_closed")
                    continue
                c.buf += chunk
                done, status, keep_alive = response_complete(c.buf)
                if not done:
                    continue
                if status != 200 or not keep_alive:
                    fail(i, "bad_status")
                    continue
                stats["first_request_ms"].append((time.perf_counter() - c.t0) * 1000)
                sel.unregister(c.sock)
                c.state, c.buf = "idle", b""
                in_flight -= 1
                idle += 1
    sel.close()
    return conns, idle, stats


def still_open(conns):
    """How many idle connections the server has closed (readable with EOF or error)."""
    sel = selectors.DefaultSelector()
    for i, c in enumerate(conns):
        if c.state == "idle":
            sel.register(c.sock, selectors.EVENT_READ, i)
    closed = 0
    for key, _ in sel.select(timeout=0):
        c = conns[key.data]
        try:
            data = c.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            closed += 1
    sel.close()
    return closed


def fmt_mib(n):
    return f"{n / (1024 * 1024):.2f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="server process to measure")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200, help="connections being set up at once")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before measuring")
    ap.add_argument("--probes", type=int, default=50)
    ap.add_argument("--sample", type=int, default=200, help="idle connections reused at the end")
    ap.add_argument("--deadline", type=float, default=180.0, help="seconds for the whole run")
    ap.add_argument("--rows", help="also write the verdicts here, tab-separated (bench/all.sh)")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("this benchmark only talks to loopback")
    deadline = time.monotonic() + args.deadline

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.conns + args.probes + 64
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            print(f"error: open-files hard limit {hard} < {want} needed for {args.conns} "
                  "connections", file=sys.stderr)
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    # Baseline: a few requests first so that lazily allocated state of a served request exists.
    warm = []
    for _ in range(5):
        with socket.create_connection((args.host, args.port), timeout=2) as s:
            warm.append(one_request(s, 2)[1])
    time.sleep(0.5)
    before = proc_status(args.pid)
    kmem_before = tcp_mem_bytes()

    t_open = time.monotonic()
    conns, idle, stats = open_idle(args, deadline)
    open_s = time.monotonic() - t_open
    if idle < args.conns:
        print(f"warning: only {idle} of {args.conns} connections reached idle keep-alive "
              f"(connect errors {stats['connect_errors']}, closed by server "
              f"{stats['server_closed']}, bad responses {stats['bad_status']})", file=sys.stderr)
    time.sleep(args.settle)
    try:
        after = proc_status(args.pid)
    except FileNotFoundError:
        print("error: the server process is gone", file=sys.stderr)
        return 2
    kmem_after = tcp_mem_bytes()

    # Probes while the idle connections are open: fresh connections, then one keep-alive one.
    fresh, fresh_bad = [], 0
    for _ in range(args.probes):
        try:
            with socket.create_connection((args.host, args.port), timeout=2) as s:
                status, ms, _ = one_request(s, 2)
        except OSError:
            status, ms = 0, 2000.0
        fresh.append(ms)
        fresh_bad += status != 200
    ka, ka_bad = [], 0
    try:
        with socket.create_connection((args.host, args.port), timeout=2) as s:
            for _ in range(args.probes):
                status, ms, _ = one_request(s, 2)
                ka.append(ms)
                ka_bad += status != 200
    except OSError:
        ka_bad += 1

    closed_by_server = still_open(conns)
    # A sample of the idle connections sends a second request: still usable keep-alive?
    idle_idx = [i for i, c in enumerate(conns) if c.state == "idle"]
    sample = random.Random(1).sample(idle_idx, min(args.sample, len(idle_idx)))
    reuse_ok = 0
    reuse_ms = []
    for i in sample:
        try:
            status, ms, _ = one_request(conns[i].sock, 2)
        except OSError:
            status, ms = 0, 0.0
        reuse_ok += status == 200
        reuse_ms.append(ms)
    during = proc_status(args.pid)

    for c in conns:
        if c.sock is not None:
            c.sock.close()
    time.sleep(args.settle)
    try:
        closed = proc_status(args.pid)
    except FileNotFoundError:
        print("error: the server process is gone after the connections closed", file=sys.stderr)
        return 2

    growth = after["VmRSS"] - before["VmRSS"]
    per_conn = growth / idle if idle else float("inf")
    probes = fresh + ka
    probe_max = max(probes) if probes else float("inf")
    goals = {
        "all connections idle": idle == args.conns and closed_by_server == 0,
        "RSS growth": growth < TOTAL_GOAL and per_conn <= PER_CONN_GOAL,
        "/healthz probes": fresh_bad == 0 and ka_bad == 0 and probe_max < PROBE_GOAL_MS,
        "idle connections reusable": reuse_ok == len(sample),
    }

    def row(name, value, goal=None, ok=None):
        verdict = "" if ok is None else ("pass" if ok else "**FAIL**")
        print(f"| {name} | {value} | {goal or ''} | {verdict} |")

    print(f"## {args.conns} idle keep-alive connections: server RSS\n")
    print("| measure | value | goal | result |")
    print("|---|---|---|---|")
    row("connections idle after one GET /healthz each", f"{idle} of {args.conns} "
        f"(opened in {open_s:.1f} s; connect retries {stats['retries']}, "
        f"closed by server {stats['server_closed'] + closed_by_server}, "
        f"bad responses {stats['bad_status']})", f"{args.conns}, none closed",
        goals["all connections idle"])
    row("server VmRSS before", f"{before['VmRSS']} B ({fmt_mib(before['VmRSS'])})")
    row("server VmRSS with all idle", f"{after['VmRSS']} B ({fmt_mib(after['VmRSS'])})")
    row("VmRSS growth", f"{growth} B ({fmt_mib(growth)}; {growth / 1e6:.2f} MB)",
        "< 20 MiB", growth < TOTAL_GOAL)
    row("VmRSS growth per connection", f"{per_conn:.0f} B", f"≤ {PER_CONN_GOAL} B",
        per_conn <= PER_CONN_GOAL)
    row("RssAnon growth", f"{after['RssAnon'] - before['RssAnon']} B "
        f"({(after['RssAnon'] - before['RssAnon']) / max(idle, 1):.0f} B per connection)")
    row("server VmHWM (peak RSS) with all idle", fmt_mib(after["VmHWM"]))
    row("server open fds before / with all idle", f"{before['fds']} / {after['fds']}")
    if kmem_before >= 0:
        row("kernel TCP memory change, whole machine (all processes; not in RSS)",
            fmt_mib(kmem_after - kmem_before))
    row("time to first response while opening (median / max)",
        f"{statistics.median(stats['first_request_ms']):.2f} ms / "
        f"{max(stats['first_request_ms']):.2f} ms" if stats["first_request_ms"] else "n/a")
    row(f"/healthz on {len(fresh)} fresh connections while idle ones open (median / max)",
        f"{statistics.median(fresh):.2f} ms / {max(fresh):.2f} ms, non-200: {fresh_bad}"
        if fresh else "n/a", f"all 200, max < {PROBE_GOAL_MS:.0f} ms",
        fresh_bad == 0 and fresh and max(fresh) < PROBE_GOAL_MS)
    row(f"/healthz x{len(ka)} on one keep-alive connection (median / max)",
        f"{statistics.median(ka):.2f} ms / {max(ka):.2f} ms, non-200: {ka_bad}"
        if ka else f"failed ({ka_bad})", f"all 200, max < {PROBE_GOAL_MS:.0f} ms",
        ka_bad == 0 and ka and max(ka) < PROBE_GOAL_MS)
    row(f"second request on {len(sample)} of the idle connections",
        f"{reuse_ok} answered 200 (median {statistics.median(reuse_ms):.2f} ms)"
        if reuse_ms else "n/a", "all 200", goals["idle connections reusable"])
    row("baseline /healthz before the run (median of 5)", f"{statistics.median(warm):.2f} ms")
    row("server VmRSS after the second requests", fmt_mib(during["VmRSS"]))
    row(f"server VmRSS {args.settle:.0f} s after all connections closed",
        f"{fmt_mib(closed['VmRSS'])} (fds {closed['fds']})")
    if args.rows:
        def verdict(ok):
            return "pass" if ok else "FAIL"
        n = args.conns
        with open(args.rows, "w", encoding="utf-8") as f:
            for r in (
                (f"{n} idle conns: server RSS growth", fmt_mib(growth), "-", "-", "< 20 MiB",
                 verdict(growth < TOTAL_GOAL)),
                (f"{n} idle conns: RSS growth per connection", f"{per_conn:.0f} B", "-", "-",
                 f"≤ {PER_CONN_GOAL} B", verdict(per_conn <= PER_CONN_GOAL)),
                (f"{n} idle conns: /healthz probes meanwhile (max)",
                 f"{probe_max:.2f} ms, non-200 {fresh_bad + ka_bad}", "-", "-",
                 f"all 200, < {PROBE_GOAL_MS:.0f} ms", verdict(goals["/healthz probes"])),
                (f"{n} idle conns: kept open and reusable",
                 f"{idle} idle, {stats['server_closed'] + closed_by_server} closed, "
                 f"{reuse_ok}/{len(sample)} reused", "-", "-", "all",
                 verdict(goals["all connections idle"] and goals["idle connections reusable"])),
            ):
                f.write("\t".join(r) + "\n")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
