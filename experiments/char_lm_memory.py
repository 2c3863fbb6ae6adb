"""Character-level language modelling with segment memory: bits per character vs memory.

    python experiments/char_lm_memory.py            # the full run (~40 min on 2 CPU cores)
    python experiments/char_lm_memory.py --quick    # a few steps of each, to try the script

The text is the English of Python's own documentation as the standard library ships it
(``pydoc_data.topics``: the language reference sections ``help()`` shows, about 465 kB
of prose and grammar), read as UTF-8 bytes: its first 90% trains, the last 10% is
held out. No download.

Every model is a small pre-LN decoder (effjax.models.DecoderLM) trained on the same
consecutive segments of ``T`` bytes (effjax.data.LanguageModelData: 16 rows read side
by side, the memory carried from one step to the next as ``effjax train`` does):

* ``no memory (learned positions)``: a GPT-2 style decoder, each segment on its own;
* ``Transformer-XL mem_len=M`` (Dai et al. 2019) for ``M = 0, T/2, T, 2T``: relative
  positions, each layer attends over ``[memory of M positions; segment]``;
* ``Compressive mem_len=T, compressed=T/2, rate 4`` (Rae et al. 2020): the positions
  the memory evicts are compressed 4 to 1 by a learned convolution (trained by the
  attention-reconstruction loss) into ``T/2`` more slots, so it reaches ``3T``
  positions back with ``1.5 T`` slots.

Each model is scored by bits per character on the whole held-out text, read in order
with the memory carried across segments (fresh at the start), at its training memory
and, for Transformer-XL, at longer evaluation memories (``eval_mem_len``, the same
parameters). Writes ``<out>.json`` (every number, learning curves, provenance),
``<out>.md`` (the table) and ``<out>.png`` (held-out bpc vs evaluation memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pydoc_data.topics  # noqa: E402

import jax  # noqa: E402

from effjax import provenance  # noqa: E402
from effjax.data import LanguageModelData  # noqa: E402
from effjax.models import DecoderConfig, DecoderLM  # noqa: E402
from effjax.train import OptimizerConfig, init_state, make_optimizer, make_train_step  # noqa: E402
from effjax.train.loop import evaluate, language_model_loss, make_eval_step  # noqa: E402

DEFAULT_OUT = ROOT / "experiments/results/char_lm_memory"


@dataclasses.dataclass(frozen=True)
class Setup:
    """Model, data and budget shared by every run."""

    segment_length: int = 32
    batch_size: int = 16
    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 384
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    num_steps: int = 2000
    log_every: int = 250
    held_out_fraction: float = 0.1


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained model: a name, its config changes, the evaluation memories it gets."""

    name: str
    changes: dict[str, Any]
    eval_mem_lens: tuple[int, ...] = ()


def runs(t: int) -> list[Run]:
    """The models of the comparison at segment length ``t``."""
    xl = [
        Run(
            f"Transformer-XL mem_len={m}",
            {"mem_len": m, "positions": "relative"},
            (m, 2 * m, 4 * m) if m else (0,),
        )
        for m in (0, t // 2, t, 2 * t)
    ]
    compressive = Run(
        f"Compressive mem_len={t}, compressed={t // 2}, rate 4",
        {"mem_len": t, "compressed_mem_len": t // 2, "compression_rate": 4},
        (t,),
    )
    return [Run("no memory (learned positions)", {"positions": "learned"}), *xl, compressive]


def text_bytes() -> tuple[str, np.ndarray]:
    """The corpus (its description, its UTF-8 bytes) in a fixed order."""
    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[name] for name in sorted(topics))
    description = (
        f"pydoc_data.topics of Python {sys.version.split()[0]}: {len(topics)} sections of "
        f"the language reference, {len(text.encode())} UTF-8 bytes"
    )
    return description, np.frombuffer(text.encode(), np.uint8).astype(np.int32)


def model_config(setup: Setup, changes: dict[str, Any]) -> DecoderConfig:
    return DecoderConfig(
        vocab_size=256,
        hidden_size=setup.hidden_size,
        num_layers=setup.num_layers,
        num_heads=setup.num_heads,
        intermediate_size=setup.intermediate_size,
        max_position_embeddings=setup.segment_length,
        hidden_dropout_rate=0.0,
        **changes,
    )


def train_and_evaluate(setup: Setup, data: LanguageModelData, run: Run) -> dict[str, Any]:
    """Trains ``run``'s model and scores it on the held-out split at each evaluation memory."""
    cfg = model_config(setup, run.changes)
    model = DecoderLM(cfg)
    tx = make_optimizer(
        OptimizerConfig(
            learning_rate=setup.learning_rate, warmup_steps=setup.warmup_steps, decay="cosine"
        ),
        setup.num_steps,
    )
    state = init_state(model, tx, 0, data.train_batch(0))
    step = jax.jit(make_train_step(model, tx, 0, language_model_loss, num_steps=setup.num_steps))
    start, curve, window = time.time(), [], []
    for index in range(setup.num_steps):
        state, metrics = step(state, data.train_batch(index))
        window.append(float(metrics["bits_per_token"]))
        if (index + 1) % setup.log_every == 0 or index + 1 == setup.num_steps:
            record = {"step": index + 1, "train_bpc": float(np.mean(window))}
            if "compression/aux_loss" in metrics:
                record["compression_aux_loss"] = float(metrics["compression/aux_loss"])
            curve.append(record)
            window = []
            print(f"  {run.name}: step {index + 1} train bpc {record['train_bpc']:.3f}", flush=True)
    train_s = time.time() - start
    held_out = {}
    for mem_len in run.eval_mem_lens or (0,):
        eval_cfg = cfg.replace(mem_len=mem_len) if run.eval_mem_lens else cfg
        eval_step = make_eval_step(DecoderLM(eval_cfg), language_model_loss)
        metrics = evaluate(eval_step, state, data.eval_batches("validation"))
        held_out[str(mem_len)] = metrics["bits_per_token"]
        print(f"  {run.name}: eval memory {mem_len}: held-out bpc {held_out[str(mem_len)]:.4f}")
    return {
        "name": run.name,
        "config": {k: v for k, v in run.changes.items()},
        "train_mem_len": cfg.mem_len,
        "held_out_bpc": held_out,
        "final_train_bpc": curve[-1]["train_bpc"],
        "curve": curve,
        "train_seconds": round(train_s, 1),
        "parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
    }


def write_results(out: Path, result: dict[str, Any]) -> None:
    """``<out>.json``, ``<out>.md`` and ``<out>.png`` from ``result``."""
    provenance.write_json(out.with_suffix(".json"), result)
    provenance.write_text(out.with_suffix(".md"), report(result))
    plot(result, out.with_suffix(".png"))


def report(result: dict[str, Any]) -> str:
    setup, t = result["setup"], result["setup"]["segment_length"]
    memories = sorted({int(m) for r in result["runs"] for m in r["held_out_bpc"]})
    header = " | ".join(f"eval memory {m}" for m in memories)
    lines = [
        "# Character-level LM: bits per character vs memory length",
        "",
        f"Text: {result['text']}; the last {setup['held_out_fraction']:.0%} held out "
        f"({result['held_out_bytes']} bytes, read in order, {setup['batch_size']} rows).",
        f"Model: {setup['num_layers']} layers, width {setup['hidden_size']}, "
        f"{setup['num_heads']} heads, feed-forward {setup['intermediate_size']}; segments of "
        f"T = {t} bytes, batch {setup['batch_size']}, {setup['num_steps']} steps "
        f"(AdamW, lr {setup['learning_rate']}, cosine), the memory carried across steps.",
        "",
        "Held-out bits per character (lower is better); the bold cell of each row is its "
        "training memory (each Transformer-XL model is also evaluated with longer "
        "memories, same parameters).",
        "",
        f"| model | params | train bpc (last {setup['log_every']} steps) | {header} |",
        "|---" * (3 + len(memories)) + "|",
    ]
    for run in result["runs"]:
        cells = []
        for m in memories:
            value = run["held_out_bpc"].get(str(m))
            text = "" if value is None else f"{value:.3f}"
            cells.append(f"**{text}**" if value is not None and m == run["train_mem_len"] else text)
        lines.append(
            f"| {run['name']} | {run['parameters']} | {run['final_train_bpc']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    best = min(result["runs"], key=lambda r: min(r["held_out_bpc"].values()))
    baseline = result["runs"][0]
    lines += [
        "",
        f"Best held-out bpc: {min(best['held_out_bpc'].values()):.3f} ({best['name']}), "
        f"against {baseline['held_out_bpc']['0']:.3f} for {baseline['name']}.",
        "Training time per model: "
        + ", ".join(f"{r['name']} {r['train_seconds']:.0f} s" for r in result["runs"])
        + ".",
        "",
        *provenance.stamp_lines(result["provenance"]),
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in result["runs"]:
        points = sorted((int(m), v) for m, v in run["held_out_bpc"].items())
        xs, ys = zip(*points, strict=True)
        style = "o-" if len(points) > 1 else "s"
        ax.plot(xs, ys, style, label=run["name"])
    ax.set_xscale("symlog", linthresh=8)
    ax.set_xlabel("memory length at evaluation (positions per layer)")
    ax.set_ylabel("held-out bits per character")
    ax.set_title(f"Char LM on pydoc topics, segments of {result['setup']['segment_length']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(scratch, dpi=110)
    plt.close(fig)
    scratch.replace(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 steps per model (a try-out)")
    parser.add_argument("--out", type=Path, default=None, help="results path without suffix")
    args = parser.parse_args(argv)
    start = time.time()
    provenance.commit()  # the code this run imported
    setup = Setup(num_steps=20, log_every=10) if args.quick else Setup()
    quick_out = DEFAULT_OUT.with_name(DEFAULT_OUT.name + "_quick")
    out = args.out or (quick_out if args.quick else DEFAULT_OUT)
    description, stream = text_bytes()
    split = int(len(stream) * (1 - setup.held_out_fraction))
    data = LanguageModelData(
        {"train": stream[:split], "validation": stream[split:]},
        batch_size=setup.batch_size,
        segment_length=setup.segment_length,
    )
    result: dict[str, Any] = {
        "setup": dataclasses.asdict(setup),
        "text": description,
        "held_out_bytes": int(len(stream) - split),
        "runs": [],
    }
    for run in runs(setup.segment_length):
        print(f"{run.name}", flush=True)
        result["runs"].append(train_and_evaluate(setup, data, run))
    result["provenance"] = provenance.stamp(["experiments/char_lm_memory.py", *argv], start=start)
    write_results(out, result)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
