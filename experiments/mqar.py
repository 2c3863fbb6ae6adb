"""Multi-query associative recall (MQAR) for every attention variant (Arora et al. 2023).

    python experiments/mqar.py --quick          # one small cell per variant, < 5 min
    python experiments/mqar.py                  # the sweep: lengths x pairs x seeds

Zoology (Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Ré 2023, "Zoology:
Measuring and Improving Recall in Efficient Language Models", Sec. 3-4) shows that
multi-query associative recall separates attention from fixed-state recurrent and
linear models: attention solves MQAR at every size of its sweep, while models with a
fixed-size state degrade as the number of key-value pairs grows relative to their
width. Here every registered attention variant is trained at one model size (a
2-layer causal decoder, effjax.models.DecoderLM) on effjax.data.multi_query_recall
and scored by the accuracy of its answers at the query positions of held-out
sequences.

Every run is one JSON record (variant, options, seq_len, pairs, seed, steps,
accuracy, learning curve, train time) in ``<out>.json``, saved after each run; a
rerun skips the runs already there, so a sweep can be resumed or extended, and the
file lists every invocation that contributed. ``<out>.md`` (tables) and ``<out>.png``
(accuracy vs pairs, one panel per length, error bars over seeds) are rewritten from
the JSON after each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from effjax import provenance  # noqa: E402
from effjax.attention import available  # noqa: E402
from effjax.data import multi_query_recall  # noqa: E402
from effjax.models import DecoderConfig, DecoderLM  # noqa: E402
from effjax.train import OptimizerConfig, init_state, make_optimizer, make_train_step  # noqa: E402
from effjax.train.loop import forward  # noqa: E402

DEFAULT_OUT = ROOT / "experiments/results/mqar"
# Variants whose causal form keeps a state of fixed size, whatever the length: the kernel
# methods' recurrent state (features x head dim) and local attention's window of keys.
# Zoology's prediction concerns these: their recall degrades as pairs grow.
FIXED_STATE = ("linear", "performer", "local")
# The options of Setup that may differ between the cells of one results file (each run
# records its own); the model, data and evaluation may not.
TRAINING_KEYS = ("learning_rate", "warmup_steps", "max_steps")


@dataclasses.dataclass(frozen=True)
class Setup:
    """Model, optimizer and budget shared by every run of a sweep."""

    vocab_size: int = 128
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    batch_size: int = 64
    # At 3e-3 (the rate of the feasibility note) dense plateaued at the
    # in-context guess (0.29 at T=32, 4 pairs, through 3000 steps); at 1e-3 it binds keys
    # to values after ~600 steps and passes 0.99 by ~2400.
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    max_steps: int = 3000
    eval_every: int = 100
    eval_examples: int = 512
    target_accuracy: float = 0.99  # a run stops once held-out accuracy reaches this

    def __post_init__(self):
        if self.eval_examples % self.batch_size:
            raise ValueError(
                f"eval_examples={self.eval_examples} must be a multiple of "
                f"batch_size={self.batch_size} (evaluation runs in training-size batches)"
            )


def variant_options(name: str, seq_len: int, pairs: int) -> dict[str, Any]:
    """Each variant's options at length ``seq_len`` (costs well below dense's T^2).

    Blocks, chunks, clusters and windows are set well below ``seq_len``: with their
    defaults (64-128 tokens) Sinkhorn's single block, routing's local heads and BigBird's
    blocks would each cover the whole of a short sequence, i.e. be dense attention.
    Longformer's global tokens are task-specific (the question in QA, Beltagy et al.
    2020, Sec. 3.1); here they are the ``2 * pairs`` tokens of the key-value pairs,
    marked per batch (:func:`make_batch`'s ``global_attention_mask``).
    """
    return {
        "dense": {},
        "local": {"window_size": 16},
        "global_local": {"window_size": 16, "max_global_tokens": 2 * pairs},
        "block_sparse": {"block_size": 4, "num_random_blocks": 1, "num_global_blocks": 1},
        "lsh": {"num_hashes": 2, "num_buckets": max(2, seq_len // 8), "chunk_size": 8},
        "sinkhorn": {"block_size": 8},
        "routing": {"local_window": 8},
        "linear": {},
        "performer": {"num_features": 64, "redraw_interval": 100},
        "linformer": {"proj_dim": 16, "max_len": seq_len},
    }.get(name, {})


def model_for(setup: Setup, name: str, seq_len: int, pairs: int) -> DecoderLM:
    config = DecoderConfig(
        vocab_size=setup.vocab_size,
        hidden_size=setup.hidden_size,
        num_layers=setup.num_layers,
        num_heads=setup.num_heads,
        intermediate_size=2 * setup.hidden_size,
        max_position_embeddings=seq_len,
        hidden_dropout_rate=0.0,
        attention=name,
        attention_options=variant_options(name, seq_len, pairs),
    )
    return DecoderLM(config)


def recall_loss(logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Cross-entropy and accuracy of ``logits [B, T, V]`` at the query positions only."""
    weights = batch["loss_mask"].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    hits = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = (losses * weights).sum() / total
    return loss, {"loss": loss, "accuracy": (hits * weights).sum() / total}


def in_context_guess(batch: dict, pairs: int) -> float:
    """Accuracy of guessing, at each query, one of the ``pairs`` values in the context
    uniformly: the mean share of the pairs whose value is the answer. A model that has
    learned which tokens are values but not which key they belong to sits here."""
    inputs, mask = np.asarray(batch["inputs"]), np.asarray(batch["loss_mask"])
    values = inputs[:, 1 : 2 * pairs : 2]  # [N, P]
    rows, cols = np.nonzero(mask)
    answers = np.asarray(batch["targets"])[rows, cols]
    return float(np.mean((values[rows] == answers[:, None]).mean(axis=1)))


def make_batch(setup: Setup, seq_len: int, pairs: int, count: int, seed: int) -> dict:
    data = multi_query_recall(
        count, seq_len=seq_len, num_pairs=pairs, vocab_size=setup.vocab_size, seed=seed
    )
    data["padding_mask"] = np.ones_like(data["inputs"], dtype=bool)
    # The key-value pairs fill the first 2P positions: global_local's global tokens
    # (every other variant's decoder ignores the mask).
    data["global_attention_mask"] = np.zeros_like(data["padding_mask"])
    data["global_attention_mask"][:, : 2 * pairs] = True
    return {k: jnp.asarray(v) for k, v in data.items()}


def train_one(setup: Setup, name: str, seq_len: int, pairs: int, seed: int) -> dict:
    """Trains one model; returns its record (accuracy on held-out sequences, curve, times).

    Training batches are fresh draws (seeded by ``seed`` and the step); the held-out
    set is the same for every variant and seed of a cell.
    """
    model = model_for(setup, name, seq_len, pairs)
    optimizer = OptimizerConfig(
        learning_rate=setup.learning_rate, warmup_steps=setup.warmup_steps, decay="cosine"
    )
    tx = make_optimizer(optimizer, setup.max_steps)
    # Training draws use seeds seed * 10**6 + step (< 10**9 for seeds < 1000); the held-out
    # set's seed lies outside that range, so it is never a training batch.
    held_out = make_batch(
        setup, seq_len, pairs, setup.eval_examples, seed=10**9 + 1000 * seq_len + pairs
    )

    def batch_at(step: int) -> dict:
        return make_batch(setup, seq_len, pairs, setup.batch_size, seed=seed * 10**6 + step)

    state = init_state(model, tx, seed, batch_at(0))
    step_fn = jax.jit(make_train_step(model, tx, seed, recall_loss, num_steps=setup.max_steps))

    @jax.jit
    def hits_and_loss(state, batch):
        logits = forward(model, state.params, batch, train=False, rng=None,
                         collections=state.collections)  # fmt: skip
        return recall_loss(logits, batch)[1]

    def evaluate(state) -> dict[str, float]:
        # In batches of the training size: one compiled shape, a small working set.
        size = setup.batch_size
        parts = [
            hits_and_loss(state, {k: v[i : i + size] for k, v in held_out.items()})
            for i in range(0, setup.eval_examples, size)
        ]
        return {k: float(np.mean([part[k] for part in parts])) for k in parts[0]}

    start = time.perf_counter()
    state, _ = step_fn(state, batch_at(0))
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - start
    curve, step, train_seconds = [], 1, 0.0
    while True:
        # Steps run in blocks between evaluations; only the steps are timed.
        block_end = min(setup.max_steps, (step // setup.eval_every + 1) * setup.eval_every)
        tick = time.perf_counter()
        for i in range(step, block_end):
            state, _ = step_fn(state, batch_at(i))
        jax.block_until_ready(state)
        train_seconds += time.perf_counter() - tick
        timed_steps = block_end - 1
        step = block_end
        metrics = evaluate(state)
        curve.append([step, round(metrics["accuracy"], 4), round(metrics["loss"], 4)])
        print(f"  {name} T={seq_len} P={pairs} seed={seed} step {step}: {metrics}", flush=True)
        if step >= setup.max_steps or metrics["accuracy"] >= setup.target_accuracy:
            break
    return {
        "variant": name,
        "options": variant_options(name, seq_len, pairs),
        "seq_len": seq_len,
        "pairs": pairs,
        "seed": seed,
        "steps": step,
        "accuracy": metrics["accuracy"],
        "in_context_guess": in_context_guess(held_out, pairs),
        "loss": metrics["loss"],
        "curve": curve,
        "compile_seconds": round(compile_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": train_seconds / max(timed_steps, 1),
    }


def run_or_error(setup: Setup, name: str, seq_len: int, pairs: int, seed: int) -> dict:
    """One run's record; a variant that cannot run this task gets its error instead."""
    try:
        return train_one(setup, name, seq_len, pairs, seed)
    except (ValueError, NotImplementedError) as error:
        message = str(error).splitlines()[0]
        print(f"  {name} T={seq_len} P={pairs}: cannot run: {message}", flush=True)
        return {"variant": name, "seq_len": seq_len, "pairs": pairs, "seed": seed,
                "error": message}  # fmt: skip


# ---------------------------------------------------------------- reporting


def _cells(runs: list[dict]) -> dict[tuple[str, int, int], list[dict]]:
    cells: dict[tuple[str, int, int], list[dict]] = {}
    for run in runs:
        cells.setdefault((run["variant"], run["seq_len"], run["pairs"]), []).append(run)
    return cells


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def markdown(results: dict) -> str:
    setup, runs = results["setup"], with_run_setups(results)["runs"]
    cells = _cells(runs)
    # Every registered variant has a row, dense first; a variant of another checkout too.
    variants = list(dict.fromkeys([*_variant_order(available()), *(r["variant"] for r in runs)]))
    grid = sorted({(r["seq_len"], r["pairs"]) for r in runs})
    lines = [
        "# Multi-query associative recall (MQAR), every attention variant",
        "",
        "Task: effjax.data.multi_query_recall (Zoology's layout, Arora et al. 2023): "
        f"vocabulary {setup['vocab_size']} (half keys, half values), P key-value pairs then "
        "every key once more as a query; accuracy = next-token accuracy at the query "
        f"positions of {setup['eval_examples']} held-out sequences (the same for every "
        "variant and seed). Model: effjax.models.DecoderLM, "
        f"{setup['num_layers']} layers, width {setup['hidden_size']}, "
        f"{setup['num_heads']} heads. AdamW, warm-up steps then cosine over the run's step "
        f"budget (learning rate, warm-up and budget below), batch {setup['batch_size']} of "
        f"fresh sequences; a run stops at the first evaluation (every "
        f"{setup['eval_every']} steps) with accuracy >= {setup['target_accuracy']}.",
        "",
        *schedule_lines(runs),
        "",
        "## Accuracy (mean ± sample s.d. over seeds; n = seeds)",
        "",
        "| variant | " + " | ".join(f"T={t}, P={p}" for t, p in grid) + " |",
        "|---|" + "---|" * len(grid),
    ]
    for name in variants:
        row = []
        for t, p in grid:
            group = cells.get((name, t, p), [])
            ok = [r["accuracy"] for r in group if "error" not in r]
            if not group:
                row.append("not run")
            elif not ok:
                row.append("n/a")
            else:
                mean, sd = _mean_sd(ok)
                row.append(f"{mean:.3f} ± {sd:.3f} (n={len(ok)})")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    guesses = {(t, p): r["in_context_guess"] for r in runs if "in_context_guess" in r
               for t, p in [(r["seq_len"], r["pairs"])]}  # fmt: skip
    if guesses:
        lines.append(
            "| (guess among the in-context values) | "
            + " | ".join(f"{guesses[c]:.3f}" if c in guesses else "" for c in grid)
            + " |"
        )
    errors = {r["variant"]: r["error"] for r in runs if "error" in r}
    for name, message in errors.items():
        lines += ["", f"n/a: `{name}` did not run here: {message}"]
    if any((name, t, p) not in cells for name in variants for t, p in grid):
        lines += [
            "",
            "not run: the sweep stopped before this variant's run of the cell (time budget; "
            "each invocation's variants and seeds are in its command below).",
        ]
    lines += ["", *option_lines(runs)]
    lines += [
        "",
        "## Training cost, measured in the same runs",
        "",
        "Median seconds per training step (compilation excluded), median steps run (a run "
        "stops early once it reaches the target) and median seconds of training per run, "
        "per variant and length. The CPU was shared with other jobs whose load varied "
        "during the sweep: ratios between variants are rough.",
        "",
    ]
    lengths = sorted({t for t, _ in grid})
    lines += [
        "| variant | " + " | ".join(f"T={t}: s/step, steps, train s" for t in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for name in variants:
        row = []
        for t in lengths:
            done = [r for r in runs if r["variant"] == name and r["seq_len"] == t]
            done = [r for r in done if "error" not in r]
            if not done:
                row.append("n/a" if (name, t) in {(r["variant"], r["seq_len"]) for r in runs}
                           else "not run")  # fmt: skip
                continue
            per_step = float(np.median([r["seconds_per_step"] for r in done]))
            steps = int(np.median([r["steps"] for r in done]))
            seconds = float(np.median([r["train_seconds"] for r in done]))
            row.append(f"{per_step:.3f}, {steps}, {seconds:.0f}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", *findings(cells, grid, setup), *reach_lines(runs, setup)]
    lines += ["", "## Provenance", ""]
    for info in results["invocations"]:
        lines += [*provenance.stamp_lines(info), ""]
    if len(results["invocations"]) > 1:
        lines.append(
            f"The runs were made by the {len(results['invocations'])} invocations above "
            "(each run's record is in the JSON) and merged into one file."
        )
    for step in results.get("merges", []):
        files = ", ".join(f"`{name}`" for name in step["files"])
        lines += ["", f"Merged from {files} by `{step['command']}`."]
        if step.get("note"):
            lines += ["", step["note"]]
    return "\n".join(lines).rstrip() + "\n"


def schedule_lines(runs: list[dict]) -> list[str]:
    """The training options (:data:`TRAINING_KEYS`) each cell ran with; the variants are
    named where they differ within a cell."""
    per_cell: dict[tuple[int, int], dict[str, list[str]]] = {}
    for run in runs:
        if "error" in run:
            continue
        setup = run["setup"]
        text = (
            f"learning rate {setup['learning_rate']:g}, {setup['warmup_steps']} warm-up "
            f"steps, at most {setup['max_steps']} steps"
        )
        cell = per_cell.setdefault((run["seq_len"], run["pairs"]), {})
        cell.setdefault(text, []).append(run["variant"])
    lines = ["Training options per cell:", ""]
    for (t, p), texts in sorted(per_cell.items()):
        parts = [
            text if len(texts) == 1 else f"{text} ({', '.join(dict.fromkeys(names))})"
            for text, names in texts.items()
        ]
        lines.append(f"- T={t}, P={p}: " + "; ".join(parts))
    return lines


def option_lines(runs: list[dict]) -> list[str]:
    """Each variant's options as run (per cell where they depend on it)."""
    lines = [
        "Options (the rest are each variant's defaults; `global_local`'s global tokens are "
        "the 2P positions of the key-value pairs, passed as the decoder's "
        "global_attention_mask):",
        "",
    ]
    for name in dict.fromkeys(r["variant"] for r in runs):
        seen = dict.fromkeys(
            json.dumps(r["options"]) for r in runs if r["variant"] == name and "options" in r
        )
        if seen and seen != {"{}": None}:
            lines.append(f"- {name}: " + "; ".join(f"`{text}`" for text in seen))
    return lines


def findings(cells: dict, grid: list, setup: dict) -> list[str]:
    """The comparison with Zoology's finding, computed from the runs."""
    target = setup["target_accuracy"]

    def mean(name, t, p):
        ok = [r["accuracy"] for r in cells.get((name, t, p), []) if "error" not in r]
        return float(np.mean(ok)) if ok else math.nan

    dense = [(t, p, mean("dense", t, p)) for t, p in grid if not math.isnan(mean("dense", t, p))]
    solved = [f"T={t}, P={p}" for t, p, a in dense if a >= target]
    lines = [
        "## Findings (computed from the runs above)",
        "",
        f"- Dense attention reaches >= {target} (mean over seeds) in {len(solved)} of "
        f"{len(dense)} cells" + (f" ({', '.join(solved)})." if solved else "."),
    ]
    names = sorted({name for name, _, _ in cells} - {"dense"})
    for name in names:
        gaps = [mean("dense", t, p) - mean(name, t, p) for t, p in grid]
        gaps = [g for g in gaps if not math.isnan(g)]
        if gaps:
            lines.append(
                f"- {name}: dense minus {name}, {100 * max(gaps):+.1f} points at most, "
                f"{100 * float(np.mean(gaps)):+.1f} on average over {len(gaps)} cells."
            )
    lines += guess_lines(cells, grid)

    def drop(name, t) -> tuple[int, int, float] | None:
        """(fewest pairs, most pairs, accuracy lost between them) at length ``t``, over the
        cells where both ``name`` and dense ran (so that the two drops span the same pairs)."""
        pairs = sorted(
            p
            for tt, p in grid
            if tt == t and not math.isnan(mean(name, t, p) + mean("dense", t, p))
        )
        if len(pairs) < 2:
            return None
        return pairs[0], pairs[-1], mean(name, t, pairs[0]) - mean(name, t, pairs[-1])

    lines += [
        "",
        "Zoology (Arora et al. 2023, Fig. 2 and Sec. 4): attention solves MQAR at every "
        "model width and number of pairs of its sweep, while fixed-state (recurrent, "
        "linear-attention) models lose accuracy as the pairs grow relative to the width. "
        "Here, at width " + str(setup["hidden_size"]) + ":",
        "",
    ]
    if dense:
        agree = len(solved) == len(dense)
        lines.append(
            f"- Attention at every cell: dense is >= {target} in {len(solved)} of "
            f"{len(dense)} cells, lowest {min(a for _, _, a in dense):.3f}: "
            + ("agrees." if agree else "does not agree within this training budget.")
        )
    lengths = sorted({t for t, _ in grid})
    for name in [n for n in FIXED_STATE if n in names]:
        for t in lengths:
            if (ours := drop(name, t)) is None:
                continue
            low, high, lost = ours
            base = mean("dense", t, low) - mean("dense", t, high)
            # A variant that keeps its accuracy does not degrade, even where dense gains.
            verdict = "degrades more than dense" if lost > max(base, 0) + 0.02 else "does not"
            lines.append(
                f"- {name} (fixed state), T={t}: loses {100 * lost:.1f} points from P={low} "
                f"to P={high}, dense {100 * base:.1f}: {verdict}."
            )
    behind = behind_dense(cells, grid, [n for n in FIXED_STATE if n in names])
    return [*lines, "", *behind] if behind else lines


def guess_lines(cells: dict, grid: list, margin: float = 0.1) -> list[str]:
    """The cells where a variant ends below the in-context guess plus ``margin``: it
    learned at most which tokens are values, not which key each belongs to."""
    lines = []
    for t, p in grid:
        guesses = [r["in_context_guess"] for (_, tt, pp), g in cells.items() if (tt, pp) == (t, p)
                   for r in g if "in_context_guess" in r]  # fmt: skip
        if not guesses:
            continue
        near = sorted(
            name
            for (name, tt, pp), group in cells.items()
            if (tt, pp) == (t, p)
            and (ok := [r["accuracy"] for r in group if "error" not in r])
            and float(np.mean(ok)) < guesses[0] + margin
        )
        if near:
            lines.append(
                f"- T={t}, P={p}: {', '.join(near)} end below the in-context guess "
                f"({guesses[0]:.3f}) plus {100 * margin:.0f} points: no key-value binding "
                "learned."
            )
    return lines


def reach_lines(runs: list[dict], setup: dict) -> list[str]:
    """Windowed variants whose window, stacked over the layers, spans the sequence: every
    key is reachable from every later query in ``num_layers`` hops, so the window does
    not cut the task."""
    lines = []
    windows = {
        (r["variant"], r["seq_len"], r["options"]["window_size"])
        for r in runs
        if "window_size" in r.get("options", {})
    }
    for name, t, window in sorted(windows):
        reach = setup["num_layers"] * window
        if reach >= t - 1:
            lines.append(
                f"- {name} at T={t}: window {window} x {setup['num_layers']} layers = "
                f"{reach} positions back >= T - 1 = {t - 1}: it can relay every key to every "
                "later query."
            )
    return lines


def behind_dense(cells: dict, grid: list, names: list[str]) -> list[str]:
    """Per variant, the cells where it falls behind dense: a gap over 2 points and over
    twice the two seed spreads (sample s.d., 0 for one seed) added."""
    lines = []
    for name in names:
        behind, level = [], []
        for t, p in grid:
            ours, base = (
                [r["accuracy"] for r in cells.get((v, t, p), []) if "error" not in r]
                for v in (name, "dense")
            )
            if not ours or not base:
                continue
            (mean, sd), (dense_mean, dense_sd) = _mean_sd(ours), _mean_sd(base)
            text = f"T={t}, P={p} ({mean:.3f} ± {sd:.3f} vs {dense_mean:.3f} ± {dense_sd:.3f})"
            gap = dense_mean - mean
            (behind if gap > 0.02 and gap > 2 * (sd + dense_sd) else level).append(text)
        if behind or level:
            lines.append(
                f"- {name} falls behind dense at "
                + ("; ".join(behind) if behind else "no cell")
                + (f"; level with it (within the rule) at {'; '.join(level)}." if level else ".")
            )
    if lines:
        lines.insert(0, "Where the fixed-state variants fall behind dense attention "
                     "(gap > 2 points and > twice the two s.d. added):")  # fmt: skip
        lines.insert(1, "")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if "error" not in r]
    cells = _cells(runs)
    lengths = sorted({r["seq_len"] for r in runs})
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    fig, axes = plt.subplots(
        2, len(lengths), figsize=(4.5 * len(lengths), 7), squeeze=False, sharey="row"
    )
    # tab10 would repeat colours among the 14 variants.
    colors = {name: plt.cm.tab20(i % 20) for i, name in enumerate(variants)}
    for col, t in enumerate(lengths):
        ax = axes[0][col]
        for name in variants:
            pairs = sorted({p for (v, tt, p) in cells if v == name and tt == t})
            stats = [_mean_sd([r["accuracy"] for r in cells[(name, t, p)]]) for p in pairs]
            ax.errorbar(pairs, [m for m, _ in stats], yerr=[s for _, s in stats],
                        marker="o", capsize=3, label=name, color=colors[name])  # fmt: skip
        guesses = sorted({(r["pairs"], r["in_context_guess"]) for r in runs if r["seq_len"] == t})
        ax.plot(*zip(*guesses, strict=True), "k--", label="in-context guess")
        ax.set(title=f"T = {t}", xlabel="key-value pairs", xscale="log", ylim=(-0.02, 1.02))
        ax.set_xticks(sorted({r["pairs"] for r in runs}), minor=False)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        # The most pairs among the cells with the most variants run (a cut-short sweep
        # may have run only dense at the largest).
        counts = {p: sum(tt == t and pp == p for _, tt, pp in cells)
                  for _, tt, p in cells if tt == t}  # fmt: skip
        shown = max((n, p) for p, n in counts.items())[1]
        curves = axes[1][col]
        for name in variants:
            for run in cells.get((name, t, shown), [])[:1]:
                steps, accs = zip(*[(c[0], c[1]) for c in run["curve"]], strict=True)
                curves.plot(steps, accs, marker=".", label=name, color=colors[name])
        curves.set(title=f"learning curves, T = {t}, P = {shown} (first seed)",
                   xlabel="step", ylim=(-0.02, 1.02))  # fmt: skip
    axes[0][0].set_ylabel("held-out accuracy (mean ± s.d. over seeds)")
    axes[1][0].set_ylabel("held-out accuracy")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(scratch, dpi=110)
    plt.close(fig)
    scratch.replace(path)


def save(results: dict, out: Path) -> None:
    provenance.write_json(out.with_suffix(".json"), results)
    provenance.write_text(out.with_suffix(".md"), markdown(results))
    if any("error" not in r for r in results["runs"]):
        plot(results, out.with_suffix(".png"))


def with_run_setups(results: dict) -> dict:
    """``results`` with each run's setup in the run (``run["setup"]``): a file written
    before runs carried their own has one setup for all of its runs."""
    for run in results["runs"]:
        run.setdefault("setup", results["setup"])
    return results


def merge(results: dict, other: dict, path: Path) -> None:
    """Adds ``other``'s runs (those not yet in ``results``) and invocations. Each run keeps
    the training options it ran with (:data:`TRAINING_KEYS`, listed per cell in the
    report); the rest of the setup (model, data, evaluation) must be the same, or the
    numbers would not be comparable."""
    ours, theirs = (
        {k: v for k, v in setup.items() if k not in TRAINING_KEYS}
        for setup in (results["setup"], other["setup"])
    )
    if ours != theirs:
        raise SystemExit(f"{path} was made with another model or evaluation than {ours}")
    done = {_run_key(r) for r in with_run_setups(results)["runs"]}
    results["runs"] += [r for r in with_run_setups(other)["runs"] if _run_key(r) not in done]
    results["invocations"] = provenance.merge_invocations(
        results["invocations"], other["invocations"]
    )


def _variant_order(names) -> list[str]:
    """Dense first (every cell's reference), then by name."""
    return sorted(names, key=lambda name: (name != "dense", name))


def _run_key(run: dict) -> tuple[str, int, int, int]:
    return run["variant"], run["seq_len"], run["pairs"], run["seed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="T=32, 2 pairs, 1 seed, 100 steps: <out>_quick.*"
    )
    parser.add_argument("--variants", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--pairs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seeds", type=int, default=2, help="how many seeds per cell")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--max-steps", type=int, default=Setup.max_steps)
    parser.add_argument("--vocab-size", type=int, default=Setup.vocab_size)
    parser.add_argument("--learning-rate", type=float, default=Setup.learning_rate)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="path without suffix")
    parser.add_argument("--report-only", action="store_true", help="rewrite .md/.png from .json")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="add the runs and invocations of these JSON files (parallel invocations)",
    )
    parser.add_argument("--note", default="", help="how the merged invocations were run")
    args = parser.parse_args()
    start = time.time()
    setup = Setup(
        max_steps=args.max_steps, vocab_size=args.vocab_size, learning_rate=args.learning_rate
    )
    lengths, pairs, out = args.lengths, args.pairs, args.out
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.quick:
        # 300 steps of batch 64 at T=64 took 67 s of CPU per variant; 14 variants x 100
        # steps of batch 32 at T=32 (an eighth of the tokens) fit 5 minutes with compilation.
        setup = dataclasses.replace(
            setup, max_steps=100, batch_size=32, eval_every=50, eval_examples=256
        )
        lengths, pairs, seeds = [32], [2], range(1)
        out = out.with_name(out.name + "_quick")
    json_path = out.with_suffix(".json")
    results = {"setup": dataclasses.asdict(setup), "invocations": [], "runs": []}
    if json_path.exists():
        saved = json.loads(json_path.read_text())
        if saved["setup"] != results["setup"] and not args.report_only:
            raise SystemExit(f"{json_path} was made with another setup; use --out")
        results = with_run_setups(saved)
    for path in args.merge:
        merge(results, json.loads(path.read_text()), path)
    if args.merge:
        results.setdefault("merges", []).append(
            {"command": provenance.stamp(sys.argv, start=start)["command"],
             "files": [str(path) for path in args.merge], "note": args.note}
        )  # fmt: skip
    if args.report_only:
        save(results, out)
        return
    done = {_run_key(r) for r in results["runs"]}
    results["invocations"].append(provenance.stamp(sys.argv, start=start))
    # Dense first: every cell's reference, and the run a cut-short sweep must have.
    variants = args.variants or _variant_order(available())
    for t in lengths:
        for p in pairs:
            if t < 4 * p:
                continue  # no room for the queries (multi_query_recall needs T >= 4P)
            for seed in seeds:
                for name in variants:
                    if (name, t, p, seed) in done:
                        continue
                    run = run_or_error(setup, name, t, p, seed)
                    results["runs"].append({**run, "setup": dataclasses.asdict(setup)})
                    results["invocations"][-1] = provenance.stamp(sys.argv, start=start)
                    save(results, out)
    results["invocations"][-1] = provenance.stamp(sys.argv, start=start)
    save(results, out)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
