"""The core of sliding-window attention (``attention="local"``): a rolling window cache.

A causal window with ``left`` keys before the query (dilation ``d``) never looks
further back than ``left * d`` positions, so decoding keeps only the last
``L = left * d`` keys and values: O(window) memory per step, where dense
attention's cache grows with the sequence.
"""

from __future__ import annotations

import jax.numpy as jnp

from effjax.attention import benchspec, local, local_attention, registry
from effjax.attention import masks as masks_lib
from effjax.layers.cores.base import AttentionCore

#: Longformer-base's window, 512 tokens wide (Beltagy et al. 2020): 256 on each side.
DEFAULT_WINDOW = 256


class LocalCore(AttentionCore):
    """:func:`~effjax.attention.local_attention` in a layer.

    Options: ``window_size`` (``w`` or ``(left, right)``, default 256 = Longformer's
    512-wide window), ``dilation`` (1), ``scale``, ``block_size`` and
    ``implementation`` (``"xla"`` or ``"pallas"``; the function's).

    Decoding cache: ``cached_key``, ``cached_value`` ``[B, L, K, H]`` hold the keys and
    values of the ``L = left * dilation`` positions before the next token (oldest
    first), and ``cached_mask`` bool ``[B, L]`` which of them are real (False before
    the start and at padded prompt tokens). ``T`` new queries attend to the ``L + T``
    keys at positions ``i - L .. i+T-1`` (the unreal ones masked); the last ``L`` become
    the new cache. More tokens than the init length give NaN (see ``advance_cache``).
    With left-padded prompts every slot between a row's first real token and its next
    token is real, so the window covers the same real tokens as for the row alone.
    """

    function = staticmethod(local_attention)
    implementations = local.IMPLEMENTATIONS

    window_size: int | tuple[int, int] = DEFAULT_WINDOW
    dilation: int = 1
    scale: float | None = None
    block_size: int | None = None
    implementation: str | None = None

    def check(self):
        masks_lib.normalize_window(self.window_size)

    def decode_step(self, query, key, value, kwargs, *, padding_mask=None):
        left, _ = masks_lib.normalize_window(self.window_size)
        history = left * self.dilation
        batch, _, kv_heads, head_dim = key.shape
        shape = (batch, history, kv_heads)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, (*shape, head_dim), key.dtype)
        cached_value = self.variable(
            "cache", "cached_value", jnp.zeros, (*shape, value.shape[-1]), value.dtype
        )
        cached_mask = self.variable("cache", "cached_mask", jnp.zeros, (batch, history), bool)
        position = self.advance_cache(query.shape[1])
        if position is None:
            return local_attention(
                query, key, value, is_causal=True, padding_mask=padding_mask, **kwargs
            )
        _, full = position
        real = jnp.ones(key.shape[:2], bool) if padding_mask is None else padding_mask
        keys = jnp.concatenate([cached_key.value, key.astype(cached_key.value.dtype)], axis=1)
        values = jnp.concatenate(
            [cached_value.value, value.astype(cached_value.value.dtype)], axis=1
        )
        valid = jnp.concatenate([cached_mask.value, real], axis=1)
        out = local_attention(query, keys, values, is_causal=True, padding_mask=valid, **kwargs)
        cached_key.value = keys[:, keys.shape[1] - history :]
        cached_value.value = values[:, values.shape[1] - history :]
        cached_mask.value = valid[:, valid.shape[1] - history :]
        return self.poison_if_full(out, full)


BENCH_WINDOW = (128, 128)


def window_pairs(shape: benchspec.Shape) -> int:
    """Keys a query scores in the benchmark's window."""
    return min(shape.seq_len, sum(BENCH_WINDOW) + 1)


BENCH = benchspec.BenchSpec(
    options=lambda rng, s: {"window_size": BENCH_WINDOW},
    flops=lambda s, o: benchspec.pairs_flops(s, window_pairs(s)),
    summary=benchspec.fixed(window_size=list(BENCH_WINDOW)),
    implementation=lambda backend, s, dtype: local.default_implementation(backend, dtypes=(dtype,)),
)

registry.attach("local", core=LocalCore, bench=BENCH)
