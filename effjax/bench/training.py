"""Training-memory rows of ``effjax bench --layers``: the training step (forward +
backward) of a deep model (``BenchConfig.training_layers``, default 12 layers) under each
memory switch, beside the plain model of its family.

Rows (``kind="training"``, mode ``fwd_bwd``, one per length): ``encoder`` (no remat,
float32) against ``encoder_remat_full``, ``encoder_remat_dots``, ``encoder_bf16`` and
``encoder_moe8`` (every feed-forward a Switch layer of 8 experts, capacity factor 1.25);
``decoder`` against ``decoder_reversible`` (the reversible stack) and
``decoder_remat_full``. The compiled footprint (temporaries + arguments + outputs) is the
memory figure; times are compared within the family, in the same run.

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

#: variant -> config changes; ``<family>_<switch>`` is compared with ``<family>``.
VARIANTS: dict[str, dict[str, Any]] = {
    "encoder": {},
    "encoder_remat_full": {"remat": "full"},
    "encoder_remat_dots": {"remat": "dots"},
    "encoder_bf16": {"dtype": "bfloat16"},
    "encoder_moe8": {"num_experts": 8},
    "decoder": {},
    "decoder_reversible": {"reversible": True},
    "decoder_remat_full": {"remat": "full"},
}


def training_program(variant: str, shape: suite.Shape, num_layers: int) -> tuple[Callable, tuple]:
    """``(grads(params, ids), (params, ids))`` of a mean-square loss on the model's output."""
    from effjax.models import DecoderConfig, DecoderLM, Encoder, EncoderConfig

    family, changes = variant.split("_")[0], VARIANTS[variant]
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
            changes = VARIANTS[variant]
            program, args = training_program(variant, shape, config.training_layers)
            yield runner.make_record(
                kind="training",
                variant=variant,
                implementation=suite.implementation_of("dense", seq_len),
                options={"num_layers": config.training_layers, **changes},
                mode="fwd_bwd",
                shape=shape,
                dtype=changes.get("dtype", "float32"),
                result=runner.measure_program(config, program, args, seq_len),
                flops=None,
                env=env,
            )


def step_count(config: runner.BenchConfig) -> int:
    """Records :func:`training_records` yields."""
    return len(config.seq_lens) * len(VARIANTS) if config.training_layers else 0
