#!/usr/bin/python3
"""Parse wrk outputs of the kvcache benchmark and summarise them.

  report.py row SCENARIO ROUND TARGET WRK_OUTPUT_FILE ROUNDS_CSV   append one round
  report.py summary ROUNDS_CSV SUMMARY_CSV                         print the table, write summary
  report.py evictions METRICS_BEFORE METRICS_AFTER ROUNDS_CSV SCENARIO
                                          evictions during the kvcache rounds vs puts answered
  report.py cluster ROUNDS_CSV CPU_CSV    the cluster scenario: through HAProxy to 2 nodes vs
                                          direct to one node, and CPU time per request of each
  report.py cpu SCENARIO ROUNDS_CSV CPU_CSV   server CPU time per request, kvcache vs nginx

Per scenario and target, the summary takes the MEDIAN over rounds of req/s, p50 and p99, and
the SUM of socket errors, unexpected statuses and 404 misses. Ratios are kvcache / nginx
(throughput: higher is better; latency: lower is better).
"""
import csv
import os
import re
import statistics
import sys

ROUND_FIELDS = ["scenario", "round", "target", "rps", "p50_us", "p75_us", "p90_us", "p99_us",
                "requests", "socket_errors", "err_connect", "err_read", "err_write", "err_timeout",
                "sent_get", "sent_put", "status_2xx", "status_404", "unexpected",
                "unexpected_by_status", "wrk_exit"]
SUMMARY_FIELDS = ["scenario", "rounds", "kv_rps", "nginx_rps", "ratio", "kv_p50_us", "nginx_p50_us",
                  "p50_ratio", "kv_p99_us", "nginx_p99_us", "p99_ratio", "kv_socket_errors",
                  "nginx_socket_errors", "kv_unexpected", "nginx_unexpected", "kv_404", "kv_requests"]
UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * UNIT[m.group(2)] if m else None


def parse(path):
    txt = open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""
    row = {k: "" for k in ROUND_FIELDS}
    m = re.search(r"Requests/sec:\s+([\d.]+)", txt)
    row["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", txt, re.M)
        row[f"p{pct}_us"] = to_us(m.group(1)) if m else ""
    m = re.search(r"(\d+) requests in", txt)
    row["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"^BENCH (.*)$", txt, re.M)
    kv = dict(x.split("=", 1) for x in m.group(1).split()) if m else {}
    for k in ("sent_get", "sent_put", "status_2xx", "status_404", "unexpected", "unexpected_by_status"):
        row[k] = kv.get(k, "")
    for src, dst in (("socket_errors", "socket_errors"), ("connect", "err_connect"),
                     ("read", "err_read"), ("write", "err_write"), ("timeout", "err_timeout")):
        row[dst] = kv.get(src, "")
    if not m:  # no BENCH line (wrk crashed/killed): fall back to wrk's own socket error line
        m2 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", txt)
        errs = [int(x) for x in m2.groups()] if m2 else [0, 0, 0, 0]
        row.update(err_connect=errs[0], err_read=errs[1], err_write=errs[2], err_timeout=errs[3],
                   socket_errors=sum(errs))
    return row


def cmd_row(scenario, rnd, target, wrk_out, rounds_csv, wrk_exit="0"):
    row = parse(wrk_out)
    row.update(scenario=scenario, round=rnd, target=target, wrk_exit=wrk_exit)
    new = not os.path.exists(rounds_csv) or os.path.getsize(rounds_csv) == 0
    with open(rounds_csv, "a", newline="") as f:
        w = csv.DictWriter(f, ROUND_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
    print(f"  {target:7s} round {rnd}: {row['rps']:>10.0f} req/s  p50 {fmt_us(row['p50_us'])}  "
          f"p99 {fmt_us(row['p99_us'])}  sockerr {row['socket_errors'] or 0}  "
          f"unexpected {row['unexpected'] or 0} ({row['unexpected_by_status'] or '-'})  404 {row['status_404'] or 0}"
          + ("" if str(wrk_exit) == "0" else f"  WRK EXIT {wrk_exit}"))


def fmt_us(v):
    if v in ("", None):
        return "-"
    v = float(v)
    return f"{v / 1000:.2f}ms" if v >= 1000 else f"{v:.0f}us"


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b else None


def cmd_summary(rounds_csv, summary_csv):
    rows = list(csv.DictReader(open(rounds_csv)))
    order = []
    for r in rows:
        if r["scenario"] not in order:
            order.append(r["scenario"])
    out = []
    for sc in order:
        g = {t: [r for r in rows if r["scenario"] == sc and r["target"] == t] for t in ("kvcache", "nginx")}
        med = {t: {k: median([num(r[k]) for r in g[t]]) for k in ("rps", "p50_us", "p99_us")} for t in g}
        tot = {t: {k: int(sum(num(r[k]) or 0 for r in g[t])) for k in
                   ("socket_errors", "unexpected", "status_404", "requests")} for t in g}
        out.append({
            "scenario": sc, "rounds": len(g["kvcache"]),
            "kv_rps": med["kvcache"]["rps"], "nginx_rps": med["nginx"]["rps"],
            "ratio": ratio(med["kvcache"]["rps"], med["nginx"]["rps"]),
            "kv_p50_us": med["kvcache"]["p50_us"], "nginx_p50_us": med["nginx"]["p50_us"],
            "p50_ratio": ratio(med["kvcache"]["p50_us"], med["nginx"]["p50_us"]),
            "kv_p99_us": med["kvcache"]["p99_us"], "nginx_p99_us": med["nginx"]["p99_us"],
            "p99_ratio": ratio(med["kvcache"]["p99_us"], med["nginx"]["p99_us"]),
            "kv_socket_errors": tot["kvcache"]["socket_errors"],
            "nginx_socket_errors": tot["nginx"]["socket_errors"],
            "kv_unexpected": tot["kvcache"]["unexpected"], "nginx_unexpected": tot["nginx"]["unexpected"],
            "kv_404": tot["kvcache"]["status_404"], "kv_requests": tot["kvcache"]["requests"],
        })
    with open(summary_csv, "w", newline="") as f:
        w = csv.DictWriter(f, SUMMARY_FIELDS)
        w.writeheader()
        for r in out:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v))
                        for k, v in r.items()})

    def f0(v):
        return "-" if v is None else f"{v:,.0f}"

    def f2(v):
        return "-" if v is None else f"{v:.2f}x"
    hdr = ["scenario", "kvcache req/s", "nginx req/s", "ratio", "p50 ratio", "p99 ratio",
           "kv p50/p99", "socket err kv/ngx", "unexpected kv/ngx", "kv 404s"]
    lines = [hdr]
    for r in out:
        lines.append([r["scenario"], f0(r["kv_rps"]), f0(r["nginx_rps"]), f2(r["ratio"]),
                      f2(r["p50_ratio"]), f2(r["p99_ratio"]),
                      f"{fmt_us(r['kv_p50_us'])}/{fmt_us(r['kv_p99_us'])}",
                      f"{r['kv_socket_errors']}/{r['nginx_socket_errors']}",
                      f"{r['kv_unexpected']}/{r['nginx_unexpected']}", str(r["kv_404"])])
    widths = [max(len(l[i]) for l in lines) for i in range(len(hdr))]
    for n, l in enumerate(lines):
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(l, widths))) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def metric(path, name):
    try:
        for line in open(path):
            if line.startswith(name + " "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def cmd_evictions(before, after, rounds_csv, scenario):
    e0, e1 = metric(before, "kvcache_evictions_total"), metric(after, "kvcache_evictions_total")
    rows = [r for r in csv.DictReader(open(rounds_csv)) if r["scenario"] == scenario and r["target"] == "kvcache"]
    puts = sum(int(num(r["status_2xx"]) or 0) for r in rows)  # put-only scenario: every 2xx is a put
    if e0 is None or e1 is None:
        print("evictions: kvcache_evictions_total not found in /metrics")
        return
    d = e1 - e0
    print(f"evictions during the rounds: {d:.0f} for {puts} successful puts "
          f"({d / puts if puts else 0:.3f} evictions/put; ~1 expected with unique keys at the limit)")


def cpu_per_request(rounds_csv, cpu_csv, scenario):
    """(rows, us_per_request): us_per_request(target, group) is the median over
    rounds of a process group's CPU microseconds per request while wrk ran against target."""
    rows = [r for r in csv.DictReader(open(rounds_csv)) if r["scenario"] == scenario]
    requests = {(r["round"], r["target"]): num(r["requests"]) for r in rows}
    ticks = {}
    for line in open(cpu_csv) if os.path.exists(cpu_csv) else []:
        sc, rnd, target, group, n = line.strip().split(",")
        if sc == scenario:
            ticks[(rnd, target, group)] = int(n)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")

    def us_per_request(target, group):
        return median([ticks[(rnd, t, g)] * tick_us / requests[(rnd, t)]
                       for (rnd, t, g) in ticks if t == target and g == group and requests.get((rnd, t))])
    return rows, us_per_request


def fmt_cpu(v):
    return "-" if v is None else f"{v:.1f} us"


def cmd_cpu(scenario, rounds_csv, cpu_csv):
    _, us_per_request = cpu_per_request(rounds_csv, cpu_csv, scenario)
    k, n = us_per_request("kvcache", "kvcache"), us_per_request("nginx", "nginx")
    r = ratio(k, n)
    print(f"{scenario}: server CPU per request: kvcache {fmt_cpu(k)}, nginx {fmt_cpu(n)}"
          f" ({'-' if r is None else f'{r:.2f}x'})")


def cmd_cluster(rounds_csv, cpu_csv):
    rows, us_per_request = cpu_per_request(rounds_csv, cpu_csv, "cluster")

    med = {t: {k: median([num(r[k]) for r in rows if r["target"] == t]) for k in ("rps", "p50_us", "p99_us")}
           for t in ("cluster", "kvcache", "nginx")}
    errors = sum(int(num(r["socket_errors"]) or 0) + int(num(r["unexpected"]) or 0)
                 for r in rows if r["target"] == "cluster")

    def f2(v):
        return "-" if v is None else f"{v:.2f}x"

    f1 = fmt_cpu
    c, k = med["cluster"], med["kvcache"]
    print(f"cluster: through HAProxy to 2 nodes {c['rps'] or 0:,.0f} req/s vs direct to 1 node "
          f"{k['rps'] or 0:,.0f} req/s = {f2(ratio(c['rps'], k['rps']))} (nginx {med['nginx']['rps'] or 0:,.0f}); "
          f"p50 {fmt_us(c['p50_us'])} vs {fmt_us(k['p50_us'])} ({f2(ratio(c['p50_us'], k['p50_us']))}), "
          f"p99 {fmt_us(c['p99_us'])} vs {fmt_us(k['p99_us'])} ({f2(ratio(c['p99_us'], k['p99_us']))}); "
          f"socket errors + unexpected statuses through HAProxy: {errors}")
    print(f"cluster: CPU per request: HAProxy {f1(us_per_request('cluster', 'haproxy'))}, "
          f"its 2 nodes {f1(us_per_request('cluster', 'nodes'))} (together), "
          f"direct node {f1(us_per_request('kvcache', 'kvcache'))}, nginx {f1(us_per_request('nginx', 'nginx'))}")


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["row"] and len(a) in (6, 7):
        cmd_row(*a[1:])
    elif a[:1] == ["summary"] and len(a) == 3:
        cmd_summary(*a[1:])
    elif a[:1] == ["evictions"] and len(a) == 5:
        cmd_evictions(*a[1:])
    elif a[:1] == ["cluster"] and len(a) == 3:
        cmd_cluster(*a[1:])
    elif a[:1] == ["cpu"] and len(a) == 4:
        cmd_cpu(*a[1:])
    else:
        sys.exit(__doc__)
