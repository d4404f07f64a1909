#!/usr/bin/env python3
"""Draws `task bench`'s growth and job pictures (PNG) from what the benches wrote.

Usage: plot.py RESULTS.jsonl OUT_DIR

Reads the numbers core/benches/pool.rs and app/benches/job.rs add to their rows in RESULTS.jsonl (see
report.py) and writes, next to the table:
- growth-connections.png: figure f, 1 to 200 concurrent new connections through one pool: the batch's wall
  time per connection and the p50 connect latency, workload identity against both baselines (a static
  password on a scram role, and the token role's own check with one long-lived token);
- growth-workers.png: figure f, 1 to 64 workers running `SELECT 1` while tokens and connections rotate:
  queries/s in total and per worker, the same three modes;
- job-wall.png: figure a, every paired run's wall time: `pgwi run` against `psql -f job.sql` and the
  original demo's Python job.
A picture whose rows are missing (a bench that did not run) is skipped with a line saying so. Needs
matplotlib (Debian's python3-matplotlib; app/benches/run.sh installs it).
"""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)

MODES = [
    ("pgwi", "pgwi: workload identity (token role)", "tab:blue", "o"),
    ("scram", "static password, scram role", "tab:orange", "s"),
    ("same_check", "static token, token role (same server check)", "tab:green", "^"),
]


def growth_connections(rows, out):
    rows = sorted((r for r in rows if r.get("section") == "f" and "ms_per_connection" in r), key=lambda r: r["n"])
    if not rows:
        return None
    n = [r["n"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, label, colour, marker in MODES:
        left.plot(n, [r["ms_per_connection"][key] for r in rows], marker=marker, color=colour, label=label)
        right.plot(n, [r["p50_ms"][key] for r in rows], marker=marker, color=colour, label=label)
    left.set_title("batch wall time per connection")
    left.set_ylabel("ms per connection")
    right.set_title("p50 connect latency")
    right.set_ylabel("ms")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(n, [str(x) for x in n])
        ax.set_xlabel("concurrent new connections (one pool)")
        ax.grid(True, alpha=0.3)
    left.set_ylim(bottom=0)
    right.set_yscale("log")
    left.legend(fontsize="small")
    fig.suptitle("Figure f: new connections, pgwi against both baselines")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def growth_workers(rows, out):
    rows = sorted((r for r in rows if r.get("section") == "f" and "queries_per_s" in r), key=lambda r: r["workers"])
    if not rows:
        return None
    w = [r["workers"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, label, colour, marker in MODES:
        qps = [r["queries_per_s"][key] for r in rows]
        left.plot(w, qps, marker=marker, color=colour, label=label)
        right.plot(w, [q / x for q, x in zip(qps, w)], marker=marker, color=colour, label=label)
    left.set_title("queries/s, all workers")
    left.set_ylabel("queries/s")
    right.set_title("queries/s per worker")
    right.set_ylabel("queries/s per worker")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(w, [str(x) for x in w])
        ax.set_xlabel("workers (SELECT 1; tokens live 10 s, connections 2 s)")
        ax.grid(True, alpha=0.3)
    left.set_ylim(bottom=0)
    left.legend(fontsize="small")
    fig.suptitle("Figure f: queries/s while rotating, pgwi against both baselines")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def job_wall(rows, out):
    rows = [r for r in rows if r.get("section") == "a" and "walls_ms" in r]
    if not rows:
        return None
    series = [("pgwi run", rows[0]["walls_ms"]["pgwi"])]
    for r in rows:
        name = r["walls_ms"]["baseline_name"]
        short = "psql -f job.sql" if name.startswith("psql") else "Python job (psycopg2)"
        series.append((short, r["walls_ms"]["baseline"]))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    labels = [name for name, _ in series]
    # The benches' median (the lower middle value), not numpy's mean of the two middle values.
    medians = [sorted(walls)[(len(walls) - 1) // 2] for _, walls in series]
    ax.boxplot([walls for _, walls in series], vert=False, widths=0.5, showfliers=False, usermedians=medians)
    for i, ((_, walls), median) in enumerate(zip(series, medians), start=1):
        ax.scatter(walls, [i] * len(walls), s=12, alpha=0.6, color="tab:blue", zorder=3)
        ax.annotate(f"median {median:.1f} ms", (median, i + 0.3), ha="center", fontsize="small")
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.set_xlabel(f"wall time per run, ms (TCP + TLS, {len(series[0][1])} paired runs)")
    ax.set_xlim(left=0)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Figure a: the job's wall time, pgwi run against psql and the Python job")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main():
    results, out_dir = sys.argv[1:3]
    rows = [json.loads(line) for line in open(results) if line.strip()]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for draw, name in [(growth_connections, "growth-connections.png"), (growth_workers, "growth-workers.png"),
                       (job_wall, "job-wall.png")]:
        written = draw(rows, out_dir / name)
        print(f"plot.py: wrote {written}" if written else f"plot.py: {name} skipped: its bench's rows are not in {results}")


if __name__ == "__main__":
    main()
