"""Sparsity efficiency of two versions of effjax's code, timed in one process.

    python experiments/sparsity_ab.py BEFORE_TREE AFTER_TREE OUT_DIR [--rounds 9]

Each tree is a checkout of effjax (e.g. ``git worktree add --detach B main``). Both are
imported into one process and their ``local_attention`` and ``global_local_attention``
(the benchmark's options: window (128, 128), 16 global tokens; B=1, T=4096, N=8, H=64,
float32, forward) are timed in alternating rounds with ``jax.nn.dot_product_attention``,
so a load change on a shared machine hits both versions alike. Per round: the sparsity
efficiency ``(jax.nn time / variant time) / (jax.nn FLOPs / variant FLOPs)`` of each
version against that round's jax.nn sample, and the after/before time ratio. Writes
``OUT_DIR/ab.json`` (every sample) and ``OUT_DIR/summary.md`` (medians, min-max, XLA's
cost analysis of each compiled program, provenance). Only computed numbers are written.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

B, T, N, H = 1, 4096, 8, 64
WINDOW, GLOBAL_TOKENS = (128, 128), 16
FLOPS = {
    "jax": 4.0 * B * N * T * T * H,
    "local": 4.0 * B * N * T * (sum(WINDOW) + 1) * H,
    "global_local": 4.0 * B * N * T * (sum(WINDOW) + 1 + GLOBAL_TOKENS) * H
    + 4.0 * B * N * GLOBAL_TOKENS * T * H,
}
VARIANTS = ("local", "global_local")


def _load(tree: str):
    """``effjax.attention`` imported from ``tree`` (a fresh import: earlier ones dropped)."""
    for name in [m for m in sys.modules if m == "effjax" or m.startswith("effjax.")]:
        del sys.modules[name]
    sys.path.insert(0, tree)
    try:
        import effjax.attention as attention
    finally:
        sys.path.remove(tree)
    assert attention.__file__.startswith(str(Path(tree).resolve())), attention.__file__
    return attention


def _programs(attention):
    """``program(q, k, v, global_mask)`` per variant; the mask travels as an argument (traced,
    as in ``effjax bench``)."""
    local = functools.partial(attention.local_attention, window_size=WINDOW)
    return {
        "local": jax.jit(lambda q, k, v, g: local(q, k, v)),
        "global_local": jax.jit(
            lambda q, k, v, g: attention.global_local_attention(
                q, k, v, window_size=WINDOW, global_mask=g, max_global_tokens=GLOBAL_TOKENS
            )
        ),
    }


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def _commit(tree: str) -> str:
    out = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)  # fmt: skip
    status = subprocess.run(["git", "-C", tree, "status", "--porcelain", "effjax"],
                            capture_output=True, text=True)  # fmt: skip
    dirty = " + uncommitted changes" if status.stdout.strip() else ""
    return (out.stdout.strip() or "not a git checkout") + dirty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="effjax checkout of the code before the change")
    parser.add_argument("after", help="effjax checkout of the code after the change")
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    start = time.time()
    from effjax import provenance  # this checkout's helpers, before the two are loaded

    q, k, v = (
        jax.random.normal(key, (B, T, N, H)) for key in jax.random.split(jax.random.key(T), 3)
    )
    global_mask = jnp.broadcast_to(jnp.arange(T) < GLOBAL_TOKENS, (B, T))
    programs = {"jax": jax.jit(lambda q, k, v, g: jax.nn.dot_product_attention(q, k, v))}
    for label, tree in (("before", args.before), ("after", args.after)):
        for variant, program in _programs(_load(tree)).items():
            programs[f"{variant}_{label}"] = program
    costs, outputs = {}, {}
    for name, program in programs.items():
        compiled = program.lower(q, k, v, global_mask).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        costs[name] = {
            "gflop": cost.get("flops", 0) / 1e9,
            "gb": cost.get("bytes accessed", 0) / 1e9,
        }
        outputs[name] = jax.block_until_ready(program(q, k, v, global_mask))
    times: dict[str, list[float]] = {name: [] for name in programs}
    loads = []
    for r in range(args.rounds):
        for name in list(programs) if r % 2 == 0 else list(reversed(programs)):
            t0 = time.perf_counter()
            jax.block_until_ready(programs[name](q, k, v, global_mask))
            times[name].append(time.perf_counter() - t0)
        loads.append(os.getloadavg()[0])

    result = {"rounds": args.rounds, "times_s": times, "load_1min": loads, "costs": costs}
    lines = [
        f"# local / global_local, before vs after, T={T} fwd, one process, {args.rounds} rounds",
        "",
        f"Before: `{args.before}` at {_commit(args.before)}; after: `{args.after}` at "
        f"{_commit(args.after)}. Load average (1 min) over the rounds: "
        f"{min(loads):.1f}-{max(loads):.1f}; jax.nn median "
        f"{statistics.median(times['jax']) * 1e3:.0f} ms.",
        "",
        "| variant | efficiency before | efficiency after | after / before time | "
        "median ms before -> after | GFLOP executed | GB moved | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        effs = {}
        for label in ("before", "after"):
            effs[label] = [
                (tj / tv) / (FLOPS["jax"] / FLOPS[variant])
                for tj, tv in zip(times["jax"], times[f"{variant}_{label}"], strict=True)
            ]
            result[f"{variant}_{label}_efficiency"] = effs[label]
        ratio = [
            a / b
            for a, b in zip(times[f"{variant}_after"], times[f"{variant}_before"], strict=True)
        ]
        result[f"{variant}_after_over_before"] = ratio
        before, after = costs[f"{variant}_before"], costs[f"{variant}_after"]
        diff = float(jnp.max(jnp.abs(outputs[f"{variant}_after"] - outputs[f"{variant}_before"])))
        ms = [statistics.median(times[f"{variant}_{x}"]) * 1e3 for x in ("before", "after")]
        lines.append(
            f"| {variant} | {_spread(effs['before'])} | {_spread(effs['after'])} "
            f"| {_spread(ratio)} | {ms[0]:.0f} -> {ms[1]:.0f} "
            f"| {before['gflop']:.2f} -> {after['gflop']:.2f} "
            f"| {before['gb']:.2f} -> {after['gb']:.2f} | {diff:.1e} |"
        )
    lines += [
        "",
        "Efficiency: (jax.nn time / variant time) / (jax.nn FLOPs / variant FLOPs) per round, "
        "median (min-max); GFLOP/GB: XLA's cost analysis of the compiled programs.",
        "",
        *provenance.stamp_lines(provenance.stamp(sys.argv, start=start)),
    ]
    provenance.write_json(args.out / "ab.json", result)
    provenance.write_text(args.out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
