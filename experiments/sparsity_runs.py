"""Sparsity efficiency over repeated ``effjax bench`` runs, before and after a change.

    python experiments/sparsity_runs.py experiments/results/bench_cpu_sparsity_blockwise

The directory holds one ``effjax bench`` output per run, named ``<label>_<n>`` (e.g.
``before_1``, ``after_1``, ... measured alternately, so a load change on a shared machine
hits both labels alike). For every run and variant this computes the sparsity efficiency
``(jax.nn time / variant time) / (jax.nn FLOPs / variant FLOPs)`` from the run's own
records (ratios within one run), and writes ``summary.md``: each run's value, the median
and the spread (min-max) per label, and the median forward times. Only computed numbers
are written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

BASELINE = "jax"


def efficiencies(records: list[dict], seq_len: int) -> dict[str, float]:
    """Variant -> sparsity efficiency at ``seq_len`` (fwd) against the run's jax.nn record."""
    fwd = {r["variant"]: r for r in records if r["mode"] == "fwd" and r["seq_len"] == seq_len}
    base = fwd[BASELINE]
    return {
        v: (base["time_s"] / r["time_s"]) / (base["flops"] / r["flops"])
        for v, r in fwd.items()
        if v != BASELINE and r.get("flops")
    }


def _runs(root: Path) -> dict[str, list[tuple[str, list[dict]]]]:
    runs: dict[str, list[tuple[str, list[dict]]]] = {}
    for d in sorted(p for p in root.iterdir() if (p / "results.jsonl").exists()):
        label = d.name.rsplit("_", 1)[0]
        records = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
        runs.setdefault(label, []).append((d.name, records))
    return runs


def summary(root: Path, seq_len: int) -> str:
    runs = _runs(root)
    lines = [
        f"# Sparsity efficiency at T={seq_len}, fwd, over repeated runs",
        "",
        "(jax.nn time / variant time) / (jax.nn FLOPs / variant FLOPs), each from one run's "
        "own records; median and min-max over the runs of each label.",
        "",
    ]
    variants = sorted({v for rs in runs.values() for _, r in rs for v in efficiencies(r, seq_len)})
    header = "| label | variant | per run | median | min-max | median time ms |"
    lines += [header, "|---|---|---|---|---|---|"]
    for label, label_runs in runs.items():
        for v in variants:
            effs = [efficiencies(r, seq_len)[v] for _, r in label_runs]
            times = [
                next(x["time_s"] for x in r if x["variant"] == v and x["mode"] == "fwd")
                for _, r in label_runs
            ]
            lines.append(
                f"| {label} | {v} | {', '.join(f'{e:.2f}' for e in effs)} "
                f"| {statistics.median(effs):.2f} | {min(effs):.2f}-{max(effs):.2f} "
                f"| {statistics.median(times) * 1e3:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory of <label>_<n> bench outputs")
    parser.add_argument("--seq-len", type=int, default=4096)
    args = parser.parse_args()
    text = summary(args.root, args.seq_len)
    tmp = args.root / "summary.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, args.root / "summary.md")
    print(text)


if __name__ == "__main__":
    main()
