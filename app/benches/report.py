#!/usr/bin/env python3
"""Prints `task bench`'s one table from what the benches wrote.

Usage: report.py RESULTS.jsonl CRITERION_DIR OUT.md

RESULTS.jsonl holds one JSON object per row (section, figure, pgwi, baseline, ratio, target, met, note),
written by app/benches/job.rs, app/benches/proxy.rs, core/benches/pool.rs and app/benches/run.sh. The cache-hit figure (d) is read from
criterion's estimates for the `token_cache` bench. The table is printed and written to OUT.md as Markdown.
"""

import json
import pathlib
import platform
import subprocess
import sys
import time

ORDER = "abcdefg"


def criterion_rows(criterion_dir):
    """Figure d: the medians criterion measured, pgwi's cache against the SDK's own."""
    found = {}
    for bench in pathlib.Path(criterion_dir).glob("*/*/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        if meta.get("group_id") != "token on a cache hit":
            continue
        estimates = json.loads((bench.parent / "estimates.json").read_text())
        found[meta["function_id"]] = estimates["median"]["point_estimate"]
    pgwi = found.get("pgwi CachedTokenSource")
    sdk = found.get("baseline: azure_identity's own cache")
    if pgwi is None or sdk is None:
        return [{"section": "d", "figure": "token on a cache hit (criterion)", "pgwi": "not measured",
                 "baseline": "-", "ratio": None, "target": "< 1 µs", "met": None,
                 "note": f"no criterion estimates under {criterion_dir}"}]
    return [{"section": "d", "figure": "token on a cache hit: CachedTokenSource vs azure_identity's own cache (criterion median)",
             "pgwi": f"{pgwi:.0f} ns", "baseline": f"{sdk:.0f} ns", "ratio": pgwi / sdk,
             "target": "< 1 µs", "met": pgwi < 1000.0}]


def machine():
    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""
    model = next((line.split(":", 1)[1].strip() for line in run("lscpu").splitlines()
                  if line.startswith("Model name")), platform.processor() or "unknown CPU")
    cores = run("nproc").strip() or "?"
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    return f"{cores} cores ({model}), {int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}"


def verdict(met):
    return {True: "met", False: "NOT met", None: ""}[met]


def main():
    results, criterion_dir, out = sys.argv[1:4]
    rows = [json.loads(line) for line in open(results) if line.strip()]
    rows += criterion_rows(criterion_dir)
    rows.sort(key=lambda r: ORDER.index(r["section"]))
    header = ["", "figure", "pgwi", "baseline", "ratio", "target", ""]
    table = [header]
    notes = []
    for row in rows:
        ratio = row.get("ratio")
        table.append([row["section"], row["figure"], row["pgwi"], row["baseline"],
                      "" if ratio is None else f"{ratio:.2f}", row["target"], verdict(row.get("met"))])
        if row.get("note"):
            notes.append(f"{row['section']}: {row['figure']}: {row['note']}")
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = []
    for n, r in enumerate(table):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    title = f"pgwi bench, {time.strftime('%Y-%m-%d %H:%M %Z')}, {machine()}"
    text = "\n".join([title, ""] + lines + [""] + [f"- {n}" for n in notes])
    print(text)
    pathlib.Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
