#!/usr/bin/env python3
"""bench/wrk_report.py: the markdown table of bench/healthz.sh.

Reads the runs file written by healthz.sh (tab-separated, one line per measured wrk run:
round conns server wrk_output server_ticks core_busy core_total client_busy client_total
wrk_cpu_seconds clk_tck noisy), parses each wrk --latency output and prints, per connection count and
server, the median over rounds of req/s, p50 and p99, the ratios of limits to nginx and the
verdict against the goals (inconclusive when a side has only noisy runs). Runs flagged noisy (other work took a share of a core during the run)
are left out of the medians when quiet runs of the same case exist. Exit status 1 when a goal is missed or a run had errors, 3 when a verdict is inconclusive.

    wrk_report.py RUNS_FILE [ROWS_FILE]

ROWS_FILE, when given, gets tab-separated lines for bench/all.sh (what, figure, baseline, ratio,
goal, result): per connection count one for req/s and one for p99, limits against nginx.
"""
import re
import statistics
import sys

RPS_GOAL = 0.80  # limits req/s >= 80% of nginx
P99_GOAL = 2.00  # limits p99 <= 2x nginx
UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_wrk(path):
    out = {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": 0,
           "requests": 0, "error_lines": []}
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return out
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Requests/sec:"):
            out["rps"] = float(s.split()[1])
        elif s.startswith("50%"):
            out["p50"] = to_us(s.split()[1])
        elif s.startswith("99%"):
            out["p99"] = to_us(s.split()[1])
        elif "requests in" in s:
            out["requests"] = int(s.split()[0])
        elif s.startswith("Socket errors:"):
            out["errors"] += sum(int(n) for n in re.findall(r"\d+", s))
            out["error_lines"].append(s)
        elif s.startswith("Non-2xx or 3xx responses:"):
            out["errors"] += int(s.split(":")[1])
            out["error_lines"].append(s)
    return out


def fmt_lat(us):
    if us != us:  # nan
        return "n/a"
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def pct(x):
    return f"{100 * x:.0f}%"


def main():
    runs = {}
    order = []
    for line in open(sys.argv[1], encoding="utf-8"):
        f = line.rstrip("\n").split("\t")
        if len(f) < 12:
            continue
        rnd, conns, server, path = int(f[0]), int(f[1]), f[2], f[3]
        srv_ticks, sb, st, cb, ct = (int(x) for x in f[4:9])
        wrk_cpu, clk = float(f[9]), int(f[10])
        r = parse_wrk(path)
        r["round"] = rnd
        r["noisy"] = f[11] == "1"
        r["server_cpu"] = srv_ticks / st if st else 0.0
        r["core_other"] = max(0.0, (sb - srv_ticks) / st) if st else 0.0
        r["wrk_cpu"] = wrk_cpu * clk / ct if ct else 0.0
        r["client_busy"] = cb / ct if ct else 0.0
        key = (conns, server)
        if key not in runs:
            runs[key] = []
            order.append(key)
        runs[key].append(r)

    def used(key):
        quiet = [r for r in runs.get(key, []) if not r["noisy"]]
        return quiet or runs.get(key, [])

    def med(key, field):
        vals = [r[field] for r in used(key) if r[field] == r[field]]
        return statistics.median(vals) if vals else float("nan")

    nrounds = max((len({r["round"] for r in v}) for v in runs.values()), default=0)
    any_noisy_used = any(r["noisy"] for k in runs for r in used(k))
    status = 0
    rows = []
    print("| scenario | server | conns | req/s | p50 | p99 | errors | req/s vs nginx "
          "| p99 vs nginx | goal | result | server CPU | other load on server core "
          "| wrk CPU | runs used | req/s of every run |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|")
    conns_list = sorted({k[0] for k in order})
    for conns in conns_list:
        for server in ("limits", "nginx"):
            key = (conns, server)
            if key not in runs:
                continue
            rps, p50, p99 = med(key, "rps"), med(key, "p50"), med(key, "p99")
            errors = sum(r["errors"] for r in runs[key])
            per_round = ", ".join(f"{r['rps']:.0f}" + ("*" if r["noisy"] else "")
                                  for r in runs[key])
            nquiet = sum(not r["noisy"] for r in runs[key])
            cpu = (pct(med(key, "server_cpu")), pct(med(key, "core_other")),
                   pct(med(key, "wrk_cpu")),
                   f"{nquiet} quiet of {len(runs[key])}" if nquiet
                   else f"all {len(runs[key])} noisy")
            if server == "nginx":
                ratio_cells = ("1.00", "1.00", "baseline", "-")
            else:
                n = (conns, "nginx")
                nrps, np99 = med(n, "rps"), med(n, "p99")
                rr = rps / nrps if nrps and nrps == nrps else 0.0
                pr = p99 / np99 if np99 and np99 == np99 and p99 == p99 else float("inf")
                ok = rr >= RPS_GOAL and pr <= P99_GOAL and errors == 0
                noisy = any(r["noisy"] for r in used(key) + used(n))
                if errors:
                    verdict = "**FAIL**"
                elif noisy:
                    verdict = "inconclusive (noisy)"
                else:
                    verdict = "pass" if ok else "**FAIL**"
                if verdict == "**FAIL**":
                    status = 1
                elif verdict != "pass" and status == 0:
                    status = 3
                ratio_cells = (f"{rr:.2f}", f"{pr:.2f}",
                               f"≥ {RPS_GOAL:.2f}, ≤ {P99_GOAL:.2f}, 0 errors", verdict)

                def part(ok):
                    if errors:
                        return "FAIL"
                    if noisy:
                        return "inconclusive (noisy)"
                    return "pass" if ok else "FAIL"
                err_txt = f", {errors} errors" if errors else ""
                rows.append((f"GET /healthz c{conns} req/s", f"limits {rps:.0f} req/s{err_txt}",
                             f"nginx {nrps:.0f} req/s", f"{rr:.2f}", f"≥ {RPS_GOAL:.2f}",
                             part(rr >= RPS_GOAL)))
                rows.append((f"GET /healthz c{conns} p99", f"limits {fmt_lat(p99)}{err_txt}",
                             f"nginx {fmt_lat(np99)}", f"{pr:.2f}", f"≤ {P99_GOAL:.2f}",
                             part(pr <= P99_GOAL)))
            print(f"| healthz | {server} | {conns} | {rps:.0f} | {fmt_lat(p50)} | {fmt_lat(p99)} "
                  f"| {errors} | {' | '.join(ratio_cells)} | {' | '.join(cpu)} | {per_round} |")
    print()
    print(f"Figures are medians over {nrounds} round(s) (quiet runs only, where there are any); "
          "each round runs limits then nginx at each connection count; runs used: how many "
          "quiet runs the medians come from; req/s of every run lists all measured runs, * marking a noisy one (other work took more than the allowed share "
          "of a core). server CPU: CPU time of the server's processes as a share of "
          "one core; other load on server core: the rest of that core's busy time (other "
          "processes, softirq); wrk CPU: CPU time of wrk as a share of its core (near 100% means "
          "the load generator, not the server, is the limit).")
    if any_noisy_used:
        print("\n**Warning: some figures come only from noisy runs (marked * above); the machine "
              "was busy with other work. Treat them as unreliable.**")
    for key in order:
        for r in runs[key]:
            if r["error_lines"]:
                print(f"\n{key[1]} c{key[0]} round {r['round']}: " + "; ".join(r["error_lines"]))
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            for row in rows:
                f.write("\t".join(row) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
