"""The core of Longformer attention (``attention="global_local"``)."""

from __future__ import annotations

import jax.numpy as jnp

from effjax.attention import benchspec, global_local, global_local_attention, registry
from effjax.attention import masks as masks_lib
from effjax.layers.cores.base import AttentionCore
from effjax.layers.cores.local import BENCH_WINDOW, DEFAULT_WINDOW, window_pairs


class GlobalLocalCore(AttentionCore):
    """:func:`~effjax.attention.global_local_attention` in a layer.

    Options: ``window_size`` (default 256 each side, Longformer's 512-wide window),
    ``dilation`` (1), ``max_global_tokens`` (static bound on global tokens per row,
    needed when the global mask is traced; default: counted from a concrete mask),
    ``scale``, ``block_size``, ``global_projections`` (False; True gives global tokens
    their own query/key/value projections, ``query_global``/``key_global``/
    ``value_global``, as Longformer's checkpoints have; see ``global_qkv`` of
    :func:`~effjax.attention.global_local_attention`), ``implementation`` (``"xla"``
    or ``"pallas"``: splash attention, not causal; the function's).

    The global tokens are per-call data: the layer's ``global_mask`` bool ``[B, T]``
    argument. Without one no token is global (pure sliding window), as Longformer's
    masked-LM pretraining.
    """

    function = staticmethod(global_local_attention)
    takes_global_mask = True
    implementations = global_local.IMPLEMENTATIONS

    window_size: int | tuple[int, int] = DEFAULT_WINDOW
    dilation: int = 1
    max_global_tokens: int | None = None
    scale: float | None = None
    block_size: int | None = None
    global_projections: bool = False
    implementation: str | None = None

    layer_options = ("global_projections",)

    def check(self):
        masks_lib.normalize_window(self.window_size)

    def extra_projections(self):
        if not self.global_projections:
            return {}
        return {f"{like}_global": like for like in ("query", "key", "value")}

    def projection_arguments(self, projections):
        if not self.global_projections:
            return {}
        names = ("query_global", "key_global", "value_global")
        return {"global_qkv": tuple(projections[name] for name in names)}


#: Longformer puts global attention on a few task tokens ([CLS], question): the first ones.
BENCH_GLOBAL_TOKENS = 16


def _bench_options(rng, shape: benchspec.Shape):
    first = jnp.arange(shape.seq_len) < BENCH_GLOBAL_TOKENS
    return {
        "window_size": BENCH_WINDOW,
        "global_mask": jnp.broadcast_to(first, (shape.batch, shape.seq_len)),
        # The mask travels as a traced argument: its token count must be static.
        "max_global_tokens": BENCH_GLOBAL_TOKENS,
    }


def _bench_flops(shape: benchspec.Shape, options) -> float:
    g = min(BENCH_GLOBAL_TOKENS, shape.seq_len)
    # Every query sees its window plus the g global keys; the g global queries see all keys.
    return benchspec.pairs_flops(shape, window_pairs(shape) + g) + benchspec.dense_rows_flops(
        shape, g
    )


BENCH = benchspec.BenchSpec(
    _bench_options,
    _bench_flops,
    benchspec.fixed(window_size=list(BENCH_WINDOW), num_global_tokens=BENCH_GLOBAL_TOKENS),
    lambda backend, s, dtype: global_local.default_implementation(backend, dtypes=(dtype,)),
)

registry.attach("global_local", core=GlobalLocalCore, bench=BENCH)
