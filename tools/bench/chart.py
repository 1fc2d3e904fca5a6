#!/usr/bin/python3
"""Render kvcache vs nginx throughput and p99 latency per scenario from run.sh's summary.csv.

  /usr/bin/python3 tools/bench/chart.py RESULTS/summary.csv [OUT.png]   (default: beside the CSV)
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join(os.path.dirname(src) or ".", "chart.png")
    rows = list(csv.DictReader(open(src)))
    if not rows:
        sys.exit("no rows in " + src)
    names = [r["scenario"] for r in rows]
    x = range(len(rows))
    w = 0.38
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.5 * len(rows)), 8))
    for ax, kk, nk, title, scale, unit in (
        (ax1, "kv_rps", "nginx_rps", "Throughput (higher is better)", 1e-3, "k req/s"),
        (ax2, "kv_p99_us", "nginx_p99_us", "p99 latency (lower is better; log scale)", 1e-3, "ms"),
    ):
        kv = [f(r[kk]) * scale for r in rows]
        ng = [f(r[nk]) * scale for r in rows]
        ax.bar([i - w / 2 for i in x], kv, w, label="kvcache", color="#1f77b4")
        ax.bar([i + w / 2 for i in x], ng, w, label="nginx fixed body", color="#aaaaaa")
        for i, (a, b) in enumerate(zip(kv, ng)):
            if b:
                ax.annotate(f"{a / b:.2f}x", (i - w / 2, a), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names)
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if ax is ax2:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, max(kv + ng + [1e-9]) * 1.15)
    rounds = rows[0].get("rounds", "?")
    fig.suptitle(f"kvcache vs nginx (same wrk script, median of {rounds} round(s); labels: kvcache/nginx)")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
