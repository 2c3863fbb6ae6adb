"""Training-memory rows of ``effjax bench --layers``: the training step (forward +
backward) of a deep model (``BenchConfig.training_layers``, default 12 layers) under each
memory switch, beside the plain model of its family.

Rows (``kind="training"``, mode ``fwd_bwd``, one per length): ``encoder`` (no remat,
float32) against ``encoder_remat_full``, ``encoder_remat_dots``, ``encoder_bf16``,
``encoder_moe8`` (every feed-forward a Switch layer of 8 experts, capacity factor 1.25),
``encoder_funnel`` (the same layers in three Funnel blocks, each pooling the sequence by
2: a classifier's encoder) and ``encoder_funnel_upsample`` (plus Funnel's 2-layer
upsampling decoder back to token level);
``decoder`` against ``decoder_reversible`` (the reversible stack) and
``decoder_remat_full``. The compiled footprint (temporaries + arguments + outputs) is the
memory figure; times are compared within the family, in the same run; ``flops`` is XLA's
count of the compiled step.

On XLA:CPU the compiler drops the optimisation barriers that keep ``jax.checkpoint``'s
recomputation apart, merges the recomputed forward with the original one, and the remat
rows compile to the plain model's footprint; GPU and TPU keep them (measured there, the
device peak shows the saving).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from effjax.bench import runner, suite

VOCAB = 1024


def funnel_blocks(num_layers: int) -> tuple[int, ...]:
    """The layers in (up to) three Funnel blocks, earlier blocks the larger: the paper's
    B4-4-4 at 12 layers (Dai et al. 2020)."""
    blocks = min(3, num_layers)
    return tuple(num_layers // blocks + (i < num_layers % blocks) for i in range(blocks))


#: variant -> config changes (or a function of the layer count giving them);
#: ``<family>_<switch>`` is compared with ``<family>``.
VARIANTS: dict[str, dict[str, Any] | Callable[[int], dict[str, Any]]] = {
    "encoder": {},
    "encoder_remat_full": {"remat": "full"},
    "encoder_remat_dots": {"remat": "dots"},
    "encoder_bf16": {"dtype": "bfloat16"},
    "encoder_moe8": {"num_experts": 8},
    "encoder_funnel": lambda n: {"block_sizes": funnel_blocks(n)},
    # Funnel's decoder: 2 more layers at full length (the paper's), token-level outputs.
    "encoder_funnel_upsample": lambda n: {"block_sizes": funnel_blocks(n), "upsample_layers": 2},
    "decoder": {},
    "decoder_reversible": {"reversible": True},
    "decoder_remat_full": {"remat": "full"},
}


def variant_changes(variant: str, num_layers: int) -> dict[str, Any]:
    """The config changes of ``variant`` for a model of ``num_layers`` layers."""
    changes = VARIANTS[variant]
    return changes(num_layers) if callable(changes) else changes


def training_program(variant: str, shape: suite.Shape, num_layers: int) -> tuple[Callable, tuple]:
    """``(grads(params, ids), (params, ids))`` of a mean-square loss on the model's output."""
    from effjax.models import DecoderConfig, DecoderLM, Encoder, EncoderConfig

    family, changes = variant.split("_")[0], variant_changes(variant, num_layers)
    hidden = shape.heads * shape.head_dim
    sizes = dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=shape.heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=shape.seq_len,
        hidden_dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    if family == "encoder":
        model = Encoder(EncoderConfig(**sizes, add_pooler=False, **changes))
    else:
        model = DecoderLM(DecoderConfig(**sizes, **changes))
    ids = jax.random.randint(jax.random.key(0), (shape.batch, shape.seq_len), 1, VOCAB)
    params = jax.jit(model.init)(jax.random.key(1), ids)["params"]

    def grads(params, ids):
        loss = lambda p: jnp.mean(model.apply({"params": p}, ids).astype(jnp.float32) ** 2)  # noqa: E731
        return jax.grad(loss)(params)

    return grads, (params, ids)


def training_records(
    config: runner.BenchConfig, env: dict[str, Any], variants: Iterable[str] = tuple(VARIANTS)
) -> Iterator[dict[str, Any]]:
    """One ``fwd_bwd`` record per (length, variant of :data:`VARIANTS`); none when
    ``config.training_layers`` is 0."""
    if not config.training_layers:
        return
    for seq_len in config.seq_lens:
        shape = suite.Shape(config.batch, seq_len, config.heads, config.head_dim)
        for variant in variants:
            changes = variant_changes(variant, config.training_layers)
            program, args = training_program(variant, shape, config.training_layers)
            result = runner.measure_program(config, program, args, seq_len)
            yield runner.make_record(
                kind="training",
                variant=variant,
                implementation=suite.implementation_of(
                    "dense", shape, changes.get("dtype", "float32")
                ),
                options={"num_layers": config.training_layers, **changes},
                mode="fwd_bwd",
                shape=shape,
                dtype=changes.get("dtype", "float32"),
                result=result,
                # XLA's count of the compiled step (a model's FLOPs have no closed form here).
                flops=(result.cost or {}).get("flops"),
                env=env,
            )


def step_count(config: runner.BenchConfig) -> int:
    """Records :func:`training_records` yields."""
    return len(config.seq_lens) * len(VARIANTS) if config.training_layers else 0
