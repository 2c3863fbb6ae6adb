"""results.md and the log-log plots of a benchmark run, and the checks of effjax's claims."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BASELINE = "jax"
_BASELINE_NAMES = {
    "attention": "jax.nn",
    "layer": "the layer on jax.nn",
    "model": "the Hugging Face PyTorch model faced",
    "training": "the plain model of its family",
}


@dataclasses.dataclass(frozen=True)
class SpeedClaim:
    """``variant`` forward at ``seq_len`` at least ``min_speedup`` x faster than the baseline."""

    variant: str
    min_speedup: float
    seq_len: int = 4096


SPEED_CLAIMS = (
    SpeedClaim("chunked", 1.0),
    SpeedClaim("local", 5.0),
    SpeedClaim("global_local", 4.0),
    SpeedClaim("block_sparse", 3.0),
    SpeedClaim("lsh", 2.0),
    SpeedClaim("performer", 4.0),
    SpeedClaim("linear", 5.0),
    SpeedClaim("linformer", 4.0),
)
MEMORY_GROWTH = (4096, 16384, 4.6)
"""Compiled memory of a sub-quadratic variant grows at most 4.6x from T=4096 to T=16384."""
LONG_MEMORY_GROWTH = (4096, 32768, 9.2)
"""... and at most 9.2x (linearly, with 15% slack) to T=32768, where it was measured."""


def _index(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str, int], dict]:
    return {(r["kind"], r["variant"], r["mode"], r["seq_len"]): r for r in records}


def _fmt_time(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return r["status"].upper()
    return f"{r['time_s'] * 1e3:.3g}"


def _fmt_mb(r: dict | None) -> str:
    if r is None or r.get("peak_bytes") is None:
        return ""
    return f"{r['peak_bytes'] / 2**20:.4g}"


def _fmt_spread(r: dict | None) -> str:
    """`` [q1-q3]`` ms of a record that kept its samples (peer models), else nothing."""
    if r is None or r["status"] != "ok" or r.get("time_s_q1") is None:
        return ""
    return f" [{r['time_s_q1'] * 1e3:.3g}-{r['time_s_q3'] * 1e3:.3g}]"


@dataclasses.dataclass(frozen=True)
class PeerClaim:
    """effjax's model ``pair`` at ``seq_len`` at least ``min_speedup`` x faster than the
    Hugging Face PyTorch model it faces (same sizes, same run)."""

    pair: str
    min_speedup: float
    seq_len: int = 4096


PEER_CLAIMS = (
    PeerClaim("bigbird_block_sparse", 2.0),
    PeerClaim("bigbird_original_full", 1.0),
    PeerClaim("longformer_window512", 1.0),
    PeerClaim("longformer_window4", 1.0),
    PeerClaim("reformer_lsh", 1.0),
    PeerClaim("reformer_full", 1.0),
)
MIN_CLAIM_PAIRS = 5
"""Interleaved repetitions a peer claim needs before it is called either way."""


@dataclasses.dataclass(frozen=True)
class RatioSpread:
    """Speed-ups ``peer time / effjax time`` of the interleaved repetitions (sample ``i``
    of one against sample ``i`` of the other): median, quartiles and count."""

    median: float
    q1: float
    q3: float
    count: int


def paired_ratios(peer: dict, mine: dict) -> RatioSpread | None:
    """The spread of ``peer``'s times over ``mine``'s, pair by pair (None unless both are
    "ok"); records without samples count as one pair of their medians."""
    import numpy as np

    if peer["status"] != "ok" or mine["status"] != "ok":
        return None
    a, b = peer.get("times_s") or [peer["time_s"]], mine.get("times_s") or [mine["time_s"]]
    ratios = np.asarray(a[: len(b)]) / np.asarray(b[: len(a)])
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return RatioSpread(float(median), float(q1), float(q3), len(ratios))


def claim_verdict(spread: RatioSpread, at_least: float) -> str:
    """ "yes" when the lower quartile of the paired speed-ups reaches ``at_least``, "NO"
    when the upper quartile stays below it, else "within spread"; "too few repetitions"
    below :data:`MIN_CLAIM_PAIRS` pairs (one sample proves nothing on a shared machine).

    Example:
      >>> claim_verdict(RatioSpread(median=2.1, q1=1.9, q3=2.3, count=7), 2.0)
      'within spread'
    """
    if spread.count < MIN_CLAIM_PAIRS:
        return "too few repetitions"
    if spread.q1 >= at_least:
        return "yes"
    return "NO" if spread.q3 < at_least else "within spread"


def baseline_of(kind: str, variant: str) -> str | None:
    """What a record's speed-up is taken against: jax.nn for attention and layers; for peer
    models, the Hugging Face model that the effjax one faces."""
    if kind == "training":  # "<family>_<switch>" against "<family>"
        family = variant.split("_")[0]
        return family if family != variant else None
    if kind != "model":
        return BASELINE if variant != BASELINE else None
    return "hf_" + variant.removeprefix("effjax_") if variant.startswith("effjax_") else None


def speedup(records: dict, variant: str, mode: str, seq_len: int, kind="attention"):
    baseline = baseline_of(kind, variant)
    base = records.get((kind, baseline, mode, seq_len))
    mine = records.get((kind, variant, mode, seq_len))
    if not base or not mine or base["status"] != "ok" or mine["status"] != "ok":
        return None
    return base["time_s"] / mine["time_s"]


def flop_rate_fraction(record: dict, peak_flops: float | None) -> float | None:
    if not peak_flops or record["status"] != "ok" or not record.get("flops"):
        return None
    return record["flops"] / record["time_s"] / peak_flops


def _table(records: list[dict], kind: str, mode: str, peak_flops: float | None) -> list[str]:
    rows = [r for r in records if r["kind"] == kind and r["mode"] == mode]
    if not rows:
        return []
    index = _index(rows)
    lens = sorted({r["seq_len"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    head = "| variant | " + " | ".join(f"T={t}" for t in lens) + " |"
    lines = [
        f"### {kind}, {mode}: time ms (speed-up vs {_BASELINE_NAMES[kind]}) / compiled MB"
        + (" / % of matmul peak" if kind == "attention" else "")
        + (" / GFLOP (XLA's count)" if kind == "training" else ""),
        "",
        head,
        "|---" * (len(lens) + 1) + "|",
    ]
    for v in variants:
        cells = []
        for t in lens:
            r = index.get((kind, v, mode, t))
            s = speedup(index, v, mode, t, kind)
            frac = flop_rate_fraction(r, peak_flops) if r else None
            cell = _fmt_time(r) + _fmt_spread(r)
            if s is not None:
                cell += f" ({s:.2g}x)"
            cell += f" / {_fmt_mb(r)}"
            if frac is not None:
                cell += f" / {100 * frac:.2g}%"
            if kind == "training" and r and r.get("flops"):
                cell += f" / {r['flops'] / 1e9:.3g}"
            cells.append(cell)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def claim_lines(records: list[dict]) -> list[str]:
    """Each speed and memory claim of the issues, checked against this run."""
    index = _index(records)
    lines = ["## Claims checked in this run", "", "| claim | measured | holds |", "|---|---|---|"]
    for c in SPEED_CLAIMS:
        s = speedup(index, c.variant, "fwd", c.seq_len)
        if s is None:
            continue
        lines.append(
            f"| {c.variant} fwd at T={c.seq_len} >= {c.min_speedup:g}x faster than jax.nn "
            f"| {s:.2f}x | {'yes' if s >= c.min_speedup else 'NO'} |"
        )
    for c in PEER_CLAIMS:
        peer = index.get(("model", f"hf_{c.pair}", "fwd", c.seq_len))
        mine = index.get(("model", f"effjax_{c.pair}", "fwd", c.seq_len))
        spread = paired_ratios(peer, mine) if peer and mine else None
        if spread is None:
            continue
        lines.append(
            f"| effjax {c.pair} model at T={c.seq_len} >= {c.min_speedup:g}x faster than "
            f"Hugging Face's (PyTorch) | {spread.median:.2f}x (quartiles {spread.q1:.2f}-"
            f"{spread.q3:.2f}, {spread.count} pairs) | {claim_verdict(spread, c.min_speedup)} |"
        )
    for lo, hi, limit in (MEMORY_GROWTH, LONG_MEMORY_GROWTH):
        for variant in dict.fromkeys(r["variant"] for r in records if r["kind"] == "attention"):
            for mode in ("fwd", "fwd_bwd"):
                a = index.get(("attention", variant, mode, lo))
                b = index.get(("attention", variant, mode, hi))
                if not a or not b or not a.get("peak_bytes") or not b.get("peak_bytes"):
                    continue
                growth = b["peak_bytes"] / a["peak_bytes"]
                # The [T, S] logits of XLA's dense attention; chunked dense is linear.
                quadratic = variant in (BASELINE, "dense") and a.get("implementation") == "xla"
                expected = "(quadratic)" if quadratic else "<="
                holds = "-" if quadratic else ("yes" if growth <= limit else "NO")
                lines.append(
                    f"| {variant} {mode} compiled memory T={lo}->{hi} {expected} {limit:g}x "
                    f"| {growth:.2f}x | {holds} |"
                )
    if len(lines) == 4:  # the header only: nothing this run measured is claimed
        lines[2:] = [_no_claims_note(records)]
    eff = sparsity_efficiency(index, 4096)
    if eff:
        lines += [
            "",
            "Sparsity efficiency at T=4096, fwd, against the baseline "
            "jax.nn.dot_product_attention (full attention in XLA): (jax.nn time / variant "
            "time) / (jax.nn FLOPs / variant FLOPs); 1 = the variant turns every FLOP saved "
            "into time saved.",
            "",
        ]
        lines += [f"- {v}: {e:.2f}" for v, e in eff.items()]
    return [*lines, ""]


def _claimed_lengths() -> list[int]:
    lengths = {c.seq_len for c in SPEED_CLAIMS} | {c.seq_len for c in PEER_CLAIMS}
    return sorted(lengths | set(MEMORY_GROWTH[:2]))


def _no_claims_note(records: list[dict]) -> str:
    measured = ", ".join(str(t) for t in sorted({r["seq_len"] for r in records}))
    speed = sorted({c.seq_len for c in SPEED_CLAIMS})
    lo, hi, _ = MEMORY_GROWTH
    return (
        f"No claim was checked in this run: the speed claims are at T={', '.join(map(str, speed))} "
        f"and the memory claims compare T={lo} with T={hi}, but this run measured T={measured}"
        " (`effjax bench --quick` measures short lengths only; run `effjax bench`, or pass "
        f"`--seq-lens` with {', '.join(map(str, _claimed_lengths()))}, to check them)."
    )


def _options_text(options: dict[str, Any]) -> str:
    if not options:
        return "defaults"
    return ", ".join(f"{k}={_plain(v)}" for k, v in options.items())


def _plain(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "(" + ", ".join(map(str, value)) + ")"
    return str(value)


def options_lines(records: list[dict]) -> list[str]:
    """A table of every variant measured, with the options it ran with."""
    lines = ["## Variants and their options", "", "| kind | variant | options |", "|---|---|---|"]
    seen = {}
    for r in records:
        seen.setdefault((r["kind"], r["variant"]), r.get("options") or {})
    for (kind, variant), options in seen.items():
        text = _options_text(options)
        if kind == "attention" and variant == BASELINE:
            text = "jax.nn.dot_product_attention, the baseline of every speed-up"
        lines.append(f"| {kind} | {variant} | {text} |")
    return [*lines, ""]


def sparsity_efficiency(index: dict, seq_len: int) -> dict[str, float]:
    base = index.get(("attention", BASELINE, "fwd", seq_len))
    out = {}
    if not base or base["status"] != "ok":
        return out
    for (kind, variant, mode, t), r in index.items():
        if kind != "attention" or mode != "fwd" or t != seq_len or variant == BASELINE:
            continue
        if r["status"] == "ok" and r.get("flops"):
            out[variant] = (base["time_s"] / r["time_s"]) / (base["flops"] / r["flops"])
    return out


def profile_lines(index: dict, peak_flops: float | None, seq_len: int = 4096) -> list[str]:
    """Where the time of each variant goes at ``seq_len`` (fwd), from XLA's cost analysis.

    A variant turns its FLOP savings into time only if it (a) executes few FLOPs beyond
    its useful ones (block padding, masked band corners, gathered duplicates) and (b)
    runs them as fast as jax.nn runs its own (few bytes moved per FLOP, few exps).
    """
    base = index.get(("attention", BASELINE, "fwd", seq_len))
    if not base or base["status"] != "ok" or not base.get("xla_cost"):
        return []
    rows = []
    for (kind, variant, mode, t), r in index.items():
        if (kind, mode, t) != ("attention", "fwd", seq_len) or r["status"] != "ok":
            continue
        cost, useful = r.get("xla_cost"), r.get("flops")
        if not useful:
            continue
        if not cost or not cost["flops"]:
            continue
        at_least = ">=" if cost.get("loops") else ""  # a loop body is counted once
        rate = f"{100 * cost['flops'] / r['time_s'] / peak_flops:.3g}%" if peak_flops else "-"
        cells = (
            variant,
            f"{at_least}{cost['flops'] / useful:.2f}",
            at_least + rate,
            f"{cost['bytes'] / cost['flops']:.3g}",
            f"{at_least}{cost['transcendentals'] / useful * 1e3:.3g}",
            f"{r['time_s'] / base['time_s'] * base['flops'] / useful:.2f}",
        )
        rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        f"## Where the time goes (T={seq_len}, fwd; XLA's cost analysis of each program)",
        "",
        "executed/useful: FLOPs the compiled program executes per useful FLOP (waste from "
        "block padding, masked entries, duplicated gathers); executed rate: those FLOPs per "
        "second against the measured matmul peak; bytes/FLOP: bytes its operations read and "
        "write per executed FLOP (gathers, masks and softmax passes move data without "
        "FLOPs); exp/kFLOP: transcendentals per 1000 useful FLOPs; time/useful FLOP vs "
        "jax.nn: 1 / sparsity efficiency. `>=`: the program loops (chunked tiles, LSH "
        "rounds, random-block sampling) and XLA counts a loop body once: a lower bound.",
        "",
        "| variant | executed/useful | executed rate | bytes/FLOP | exp/kFLOP "
        "| time per useful FLOP vs jax.nn |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def write_markdown(
    records: list[dict],
    path: Path,
    *,
    env: dict[str, Any],
    peak_flops: float | None,
    command: str,
) -> None:
    lines = [
        "# effjax bench results",
        "",
        f"Command: `{command}`",
        "",
        f"Backend {env['backend']}, device {env['device_kind']} x{env['device_count']}, "
        f"jax {env['jax_version']}; {_shapes(records)}"
        + (f"; measured matmul peak {peak_flops / 1e9:.1f} GFLOP/s" if peak_flops else "")
        + ".",
        "",
        "Times are medians; speed-ups are ratios to jax.nn.dot_product_attention measured in "
        "the same run; memory is XLA's compiled memory analysis (temporaries + arguments + "
        "outputs). OOM: over the run's memory limit (not run; its compiled footprint is shown).",
        "",
    ]
    if any(r["kind"] == "model" for r in records):
        lines += [
            "Peer models: PyTorch and effjax each ran in their own worker process, timed "
            "alternately (one call of each in turn), so load on a shared machine hits both "
            "alike; [q1-q3] are the quartiles of a cell's samples, and a peer claim holds "
            "only when the lower quartile of the pairwise speed-ups reaches it.",
            "",
        ]
    lines += claim_lines(records)
    lines += profile_lines(_index(records), peak_flops)
    lines += options_lines(records)
    for kind in dict.fromkeys(r["kind"] for r in records):
        for mode in ("fwd", "fwd_bwd"):
            lines += _table(records, kind, mode, peak_flops)
    _atomic_write(path, "\n".join(lines))


def _shapes(records: list[dict]) -> str:
    shapes = sorted({(r["batch"], r["heads"], r["head_dim"], r["dtype"]) for r in records})
    return "; ".join(f"B={b}, N={n}, H={h}, {dtype}" for b, n, h, dtype in shapes)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
