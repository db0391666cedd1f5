#!/usr/bin/env python3
"""bench/stack_report.py: the markdown tables of bench/cards.sh, tokens.sh, loads.sh,
slowloris.sh, workers.sh and redis.sh.

    stack_report.py RUNS_FILE [ROWS_FILE]

RUNS_FILE has one line per measured run, key=value words written by measured() in
bench/stack_lib.sh: case, side (limits or pgbench), conns, round, attempt, goal (optional: see
below), file (the load generator's output), secs, clk, CPU jiffies of server, pg, redis, fake,
loadgen over the run, core_* busy/total jiffies, other (% of a core taken by work that is not
ours), noisy, auth_lookups, xacts (PostgreSQL transactions), rc.

Optional fields: tool (wrk, pgbench or redis-benchmark: how to read the output file; default
pgbench when side is pgbench, else wrk), extra (CPU jiffies of other processes of ours, such as
the slow clients of slowloris.sh), bound, label.

Goals, on a line of a case (the `goal` field; `baseline` marks the line the others of the case
are compared with, by default the pgbench line; `info` or no goal: no verdict):
    ratio:X         req/s >= X * the baseline's rate (pgbench tps, or another side's req/s)
    abs:X           req/s >= X
    minratio:X:B    req/s >= X * min(B, the baseline's rate)
    bound:X         req/s >= X * the run's `bound` field (Little's law: conns / latency)
    latmax:X        p50 <= X * the baseline's p50 and p99 <= X * the baseline's p99
The "vs" column is the rate's ratio to the baseline of the case, or to `bound` when given.
With REPORT_INFO=1 in the environment the verdicts are shown as information ("would be ...")
and never change the exit status (bench/loads.sh ARRANGE=shared).
Per case and side, figures are medians over the quiet runs (noisy ones when there are no quiet
ones; the verdict is then "inconclusive (noisy)"). Exit status: 0 all goals met, 1 a goal missed
or errors seen (non-2xx, socket errors, statuses other than 200 in a measured HTTP run), 3 a
verdict inconclusive.

ROWS_FILE, when given, gets one tab-separated line per verdict, for bench/all.sh: what was
measured, the figure, the baseline, the ratio, the goal, the result (pass, FAIL or
inconclusive).
"""
import os
import re
import statistics
import sys

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_wrk(text, out):
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Requests/sec:"):
            out["rate"] = float(s.split()[1])
        elif s.startswith("50%"):
            out["p50"] = to_us(s.split()[1])
        elif s.startswith("99%"):
            out["p99"] = to_us(s.split()[1])
        elif "requests in" in s:
            out["count"] = int(s.split()[0])
        elif s.startswith("Socket errors:"):
            out["errors"] += sum(int(n) for n in re.findall(r"\d+", s))
            out["error_lines"].append(s)
        elif s.startswith("Non-2xx or 3xx responses:"):
            out["error_lines"].append(s)
        elif s.startswith("statuses:"):
            for k, v in re.findall(r"(\d+)=(\d+)", s):
                out["statuses"][k] = int(v)
    other = sum(v for k, v in out["statuses"].items() if k != "200")
    if other:
        out["errors"] += other
        out["error_lines"].append("statuses: " + ", ".join(
            f"{k}: {v}" for k, v in sorted(out["statuses"].items())))


def parse_pgbench(text, out):
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("tps ="):
            out["rate"] = float(s.split()[2])
        elif s.startswith("latency average ="):
            out["lat_avg"] = float(s.split()[3]) * 1e3
        elif s.startswith("number of transactions actually processed:"):
            out["count"] = int(s.split(":")[1].split()[0])
        elif s.startswith("number of failed transactions:"):
            n = int(s.split(":")[1].split()[0])
            if n:
                out["errors"] += n
                out["error_lines"].append(s)
        elif "aborted" in s or s.startswith("pgbench: error"):
            out["errors"] += 1
            out["error_lines"].append(s)


def parse_redis_benchmark(text, out):
    """redis-benchmark --csv: a header line, then "test","rps","avg_latency_ms",...,"p50_latency_ms",
    "p95_latency_ms","p99_latency_ms","max_latency_ms"."""
    lines = [l for l in text.splitlines() if l.startswith('"')]
    if len(lines) < 2:
        out["errors"] += 1
        out["error_lines"].append("no redis-benchmark --csv result")
        return
    head = [h.strip('"') for h in lines[0].split('","')]
    vals = [v.strip('"') for v in lines[-1].rsplit('","', len(head) - 1)]
    row = dict(zip(head, vals))
    out["rate"] = float(row.get("rps", 0) or 0)
    out["p50"] = float(row.get("p50_latency_ms", "nan")) * 1e3
    out["p99"] = float(row.get("p99_latency_ms", "nan")) * 1e3
    m = re.search(r"^requests: (\d+)", text, re.M)  # written by bench/redis.sh before the run
    if m:
        out["count"] = int(m.group(1))
    for l in text.splitlines():
        if "ERR" in l or "NOSCRIPT" in l or "Error" in l:
            out["errors"] += 1
            out["error_lines"].append(l.strip()[:200])
            break


def load_runs(path):
    runs = []
    for line in open(path, encoding="utf-8"):
        f = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if "file" not in f:
            continue
        r = {"rate": 0.0, "p50": float("nan"), "p99": float("nan"), "lat_avg": float("nan"),
             "count": 0, "errors": 0, "error_lines": [], "statuses": {}}
        try:
            text = open(f["file"], encoding="utf-8", errors="replace").read()
        except OSError:
            text = ""
        tool = f.get("tool", "pgbench" if f["side"] == "pgbench" else "wrk")
        r["tool"] = tool
        {"wrk": parse_wrk, "pgbench": parse_pgbench,
         "redis-benchmark": parse_redis_benchmark}[tool](text, r)
        if f.get("rc", "0") != "0":
            r["errors"] += 1
            r["error_lines"].append(f"load generator exit status {f['rc']}")
        clk, secs = int(f["clk"]), float(f["secs"])
        n = r["count"] or 1
        for part in ("server", "pg", "redis", "fake", "loadgen", "extra"):
            ticks = int(f.get(part, 0))
            r[part + "_us"] = ticks / clk * 1e6 / n      # CPU µs per request
            r[part + "_cores"] = ticks / clk / secs      # share of one core
        r["core_s"] = int(f["core_s_busy"]) / max(1, int(f["core_s_total"]))
        r["core_c"] = int(f["core_c_busy"]) / max(1, int(f["core_c_total"]))
        r["other"] = int(f["other"]) / 100
        r["noisy"] = f["noisy"] == "1"
        r["auth_per_req"] = int(f["auth_lookups"]) / n
        r["xacts_per_req"] = int(f["xacts"]) / n
        r.update({k: f[k] for k in ("case", "side", "conns", "round", "attempt")})
        r["goal"] = f.get("goal", "")
        r["bound"] = float(f["bound"]) if "bound" in f else float("nan")
        r["label"] = f.get("label", f["case"])
        runs.append(r)
    return runs


def fmt_lat(us):
    if us != us:
        return "-"
    if us < 1000:
        return f"{us:.0f} µs"
    return f"{us / 1000:.2f} ms" if us < 100000 else f"{us / 1000:.0f} ms"


def pct(x):
    return f"{100 * x:.0f}%"


def main():
    runs = load_runs(sys.argv[1])
    groups, order = {}, []
    for r in runs:
        key = (r["case"], r["side"], r["conns"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)

    def used(key):
        q = [r for r in groups.get(key, []) if not r["noisy"]]
        return q or groups.get(key, [])

    def med(key, field):
        vals = [r[field] for r in used(key) if r[field] == r[field]]
        return statistics.median(vals) if vals else float("nan")

    def baseline(case):
        for k in order:
            if k[0] == case and groups[k][0]["goal"] == "baseline":
                return k
        return None

    def unit(key):
        return {"pgbench": "tps", "redis-benchmark": "calls/s"}.get(groups[key][0]["tool"], "req/s")

    rows = []

    status = 0
    print("| case | side | conns | req/s or tps | p50 | p99 | errors | vs baseline or bound | goal | result "
          "| server CPU/req | PG CPU/req | Redis CPU/req | fake CPU/req | server core busy "
          "| client core busy "
          "| other work | auth lookups/req | PG xacts/req | runs used | rate of every run |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:"
          "|---:|---|---|")
    for key in order:
        case, side, conns = key
        rs = groups[key]
        rate = med(key, "rate")
        errors = sum(r["errors"] for r in rs)
        nquiet = sum(not r["noisy"] for r in rs)
        every = ", ".join(f"{r['rate']:.0f}" + ("*" if r["noisy"] else "") for r in rs)
        goal = rs[0]["goal"]
        b = baseline(case)
        brate = med(b, "rate") if b else float("nan")
        ratio = rate / brate if b and brate else float("nan")
        bound = rs[0]["bound"]
        if bound == bound:
            ratio = rate / bound
        goal_txt, verdict = "-", "-"
        if rs[0]["tool"] == "pgbench":
            p50, p99 = "-", f"avg {fmt_lat(med(key, 'lat_avg'))}"
        else:
            p50, p99 = fmt_lat(med(key, "p50")), fmt_lat(med(key, "p99"))
        if goal in ("baseline", "info"):
            goal_txt = "baseline" if goal == "baseline" else "(information)"
        bname = f"{b[1]} c{b[2]}" if b else "baseline"
        btxt = f"{bname}: {brate:.0f} {unit(b)}" if b else "-"
        label = f"{rs[0]['label']} {side} c{conns}"
        figure = f"{rate:.0f} {unit(key)}"
        if goal and goal not in ("baseline", "info"):
            kind, *args = goal.split(":")
            row_ratio, row_base, row_goal = ratio, btxt, ""
            lat_ok = True
            if kind == "ratio":
                need = float(args[0]) * brate
                goal_txt = f"≥ {float(args[0]):.2f} × {bname} = {need:.0f}/s"
                row_goal = f"≥ {float(args[0]):.2f}"
            elif kind == "abs":
                need = float(args[0])
                goal_txt = f"≥ {need:.0f}/s"
                row_ratio, row_base, row_goal = float("nan"), "-", goal_txt
            elif kind == "bound":
                need = float(args[0]) * bound
                goal_txt = f"≥ {float(args[0]):.2f} × {bound:.0f} = {need:.0f}/s"
                row_base, row_goal = f"Little's bound {bound:.0f}/s", f"≥ {float(args[0]):.2f}"
            elif kind == "minratio":
                x, cap = float(args[0]), float(args[1])
                need = x * min(cap, brate)
                goal_txt = f"≥ {x:.2f} × min({cap:.0f}, {bname}) = {need:.0f}/s"
                row_ratio = rate / min(cap, brate) if brate else float("nan")
                row_base = f"min({cap:.0f}/s, {btxt})"
                row_goal = f"≥ {x:.2f}"
            elif kind == "latmax":
                x = float(args[0])
                need = 0.0  # no rate goal
                bp50, bp99 = med(b, "p50") if b else float("nan"), med(b, "p99") if b else float("nan")
                r50 = med(key, "p50") / bp50 if bp50 else float("nan")
                r99 = med(key, "p99") / bp99 if bp99 else float("nan")
                lat_ok = r50 <= x and r99 <= x
                goal_txt = f"p50 and p99 ≤ {x:.2f} × {bname} (p50 {r50:.2f}×, p99 {r99:.2f}×)"
            else:
                need = float("nan")
            noisy = any(r["noisy"] for r in used(key) + (used(b) if b else []))
            if errors:
                verdict = "**FAIL** (errors)"
            elif need != need:
                verdict = "n/a"
            elif noisy:
                verdict = "inconclusive (noisy)" + (" - below" if rate < need or not lat_ok
                                                    else " - above")
            else:
                verdict = "pass" if rate >= need and lat_ok else "**FAIL**"
            if os.environ.get("REPORT_INFO") == "1":
                # An arrangement shown for information (bench/loads.sh ARRANGE=shared).
                verdict = "(information; would be " + verdict.replace("*", "") + ")"
            elif verdict.startswith("**FAIL"):
                status = 1
            elif verdict.startswith("inconclusive") and status == 0:
                status = 3
            plain = verdict.replace("*", "")
            err_txt = f", {errors} errors" if errors else ""
            if kind == "latmax":
                for q, rq in (("p50", r50), ("p99", r99)):
                    if errors:
                        v = "FAIL"
                    elif noisy:
                        v = "inconclusive (noisy)"
                    else:
                        v = "pass" if rq <= x else "FAIL"
                    rows.append((f"{label} {q}", f"{fmt_lat(med(key, q))}{err_txt}",
                                 f"{bname}: {fmt_lat(med(b, q)) if b else '-'}",
                                 f"{rq:.2f}", f"≤ {x:.2f}", v))
            else:
                rows.append((label, figure + err_txt, row_base,
                             "-" if row_ratio != row_ratio else f"{row_ratio:.2f}",
                             row_goal or goal_txt, plain))
        elif errors and (rs[0]["tool"] == "wrk" or side == "limits"):
            verdict = "**errors**"
            status = 1
            rows.append((label, f"{figure}, {errors} errors", "-", "-", "no errors", "FAIL"))
        print(f"| {rs[0]['label']} | {side} | {conns} | {rate:.0f} | {p50} | {p99} | {errors} "
              f"| {'-' if ratio != ratio or goal == 'baseline' or rs[0]['tool'] == 'pgbench' else f'{ratio:.2f}'} | {goal_txt} "
              f"| {verdict} "
              f"| {med(key, 'server_us'):.1f} µs | {med(key, 'pg_us'):.1f} µs "
              f"| {med(key, 'redis_us'):.1f} µs | {med(key, 'fake_us'):.1f} µs "
              f"| {pct(med(key, 'core_s'))} "
              f"| {pct(med(key, 'core_c'))} | {pct(med(key, 'other'))} "
              f"| {med(key, 'auth_per_req'):.3f} | {med(key, 'xacts_per_req'):.2f} "
              f"| {nquiet} quiet of {len(rs)} | {every} |")
    # The strict reading: each judged line against the best pgbench figure of its case (any
    # concurrency), as information next to the verdict.
    best_lines = []
    for key in order:
        rs = groups[key]
        goal = rs[0]["goal"]
        if rs[0]["tool"] == "pgbench" or not goal or goal in ("baseline", "info"):
            continue
        pg = [k for k in order if k[0] == key[0] and groups[k][0]["tool"] == "pgbench"]
        if len(pg) < 2:
            continue
        best = max(pg, key=lambda k: med(k, "rate"))
        brate, rate = med(best, "rate"), med(key, "rate")
        kind, *args = goal.split(":")
        if kind not in ("ratio", "minratio") or not brate:
            continue
        x = float(args[0])
        cap = float(args[1]) if kind == "minratio" else float("inf")
        base = min(cap, brate)
        ratio = rate / base
        label = f"{rs[0]['label']} {key[1]} c{key[2]} vs the best pgbench"
        verdict = "meets" if ratio >= x else "below"
        best_lines.append(f"- {label} (c{best[2]}, {brate:.0f} tps): {ratio:.2f} "
                          f"({verdict} the goal's {x:.2f})")
        rows.append((label, f"{rate:.0f} {unit(key)}", f"pgbench c{best[2]}: {brate:.0f} tps",
                     f"{ratio:.2f}", f"≥ {x:.2f} (strict reading)",
                     f"information ({verdict} {x:.2f})"))
    if best_lines:
        print()
        print("Against the best pgbench figure of the case (information, the strict reading):")
        print()
        print("\n".join(best_lines))
    print()
    print("Figures are medians over the quiet runs of each line (over all its runs when none "
          "was quiet). CPU/req: CPU time (user + system, from /proc/PID/stat) of that process "
          "over the run divided by the requests (or pgbench transactions) completed; PG is the "
          "whole PostgreSQL (postmaster, backends, also those that exited). core busy: share of "
          "that core busy with anything. other work: CPU time on the two cores not spent by "
          "limits, PostgreSQL, Redis, the fake gateway or the load generator, as a share of one "
          "core (kernel threads doing loopback network work count here too); more than "
          "NOISE_MAX marks a run noisy (*). auth lookups/req: API-key lookups that reached "
          "PostgreSQL (auth cache misses) per request.")
    for key in order:
        for r in groups[key]:
            if r["error_lines"]:
                print(f"\n{key[0]} {key[1]} c{key[2]} round {r['round']} attempt "
                      f"{r['attempt']}: " + "; ".join(r["error_lines"]))
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            for row in rows:
                f.write("\t".join(str(c).replace("\t", " ") for c in row) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
