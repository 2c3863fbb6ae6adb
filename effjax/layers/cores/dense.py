"""The core of dense attention (``attention="dense"``): a full key/value decoding cache."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from effjax.attention import benchspec, dense, dot_product_attention, registry
from effjax.layers.cores.base import AttentionCore


class DenseCore(AttentionCore):
    """:func:`~effjax.attention.dot_product_attention` in a layer.

    Options: ``scale`` (default ``1/sqrt(H)``), ``implementation`` (the function's:
    ``"xla"``, ``"chunked"``, ``"pallas"``, ``"cudnn"``; None picks by backend).
    Decoding always runs ``"xla"`` (the cache is a dense mask).

    Decoding cache (flax's names): ``cached_key``, ``cached_value`` ``[B, L, K, H]``
    with ``L`` the init input's length, and ``cached_mask`` bool ``[B, L]``, True at the
    written slots of real tokens; ``T`` new queries at positions ``i .. i+T-1`` see the
    real cached keys ``<= i + t`` (padded prompt slots never). More than ``L`` tokens
    give NaN.
    """

    function = staticmethod(dot_product_attention)
    implementations = dense.IMPLEMENTATIONS

    scale: float | None = None
    implementation: str | None = None

    def decode_step(self, query, key, value, kwargs, *, padding_mask=None):
        # The cache is a dense mask: the function's default path (no implementation).
        kwargs = {k: v for k, v in kwargs.items() if k != "implementation"}
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cached_mask = self.variable("cache", "cached_mask", jnp.zeros, key.shape[:2], bool)
        position = self.advance_cache(query.shape[1])
        # Through type(self).function: a subclass may wrap dense attention (it must accept
        # dot_product_attention's ``mask``).
        attend = type(self).function
        if position is None:
            return attend(query, key, value, is_causal=True, padding_mask=padding_mask, **kwargs)
        index, full = position
        start = (0, index, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
        real = jnp.ones(key.shape[:2], bool) if padding_mask is None else padding_mask
        cached_mask.value = jax.lax.dynamic_update_slice(cached_mask.value, real, (0, index))
        # Query t (at position index + t) sees the real cached positions <= index + t.
        query_pos = index + jnp.arange(query.shape[1])
        causal = jnp.arange(cached_key.value.shape[1])[None, :] <= query_pos[:, None]
        mask = causal[None, None] & cached_mask.value[:, None, None, :]
        options = self.cached_options(kwargs, query, index, cached_key.value.shape[1])
        out = attend(query, cached_key.value, cached_value.value, mask=mask, **options)
        return self.poison_if_full(out, full)

    def cached_options(
        self, kwargs: dict[str, Any], query: jax.Array, index: jax.Array, cache_length: int
    ) -> dict[str, Any]:
        """The function's keyword arguments for the ``T`` queries of ``query [B, T, N, H]``
        at cache positions ``index .. index + T - 1`` against all ``cache_length`` cached
        keys (``kwargs`` were prepared for the ``T`` new keys alone). Default: ``kwargs``;
        a subclass whose arguments depend on positions overrides it."""
        return kwargs


def bench_implementation(backend: str, shape: benchspec.Shape, dtype: str, slots: int = 0) -> str:
    """Dense attention's ``implementation=None`` choice for the benchmark's call: no mask,
    ``T`` queries against ``T + slots`` keys (persistent memory's ``slots``)."""
    return dense.default_implementation(
        backend, kv_len=shape.seq_len + slots, q_len=shape.seq_len, dtypes=(dtype,),
        head_dim=shape.head_dim,
    )  # fmt: skip


#: Every query scores every key.
BENCH = benchspec.BenchSpec(
    flops=lambda s, o: benchspec.pairs_flops(s, s.seq_len), implementation=bench_implementation
)

registry.attach("dense", core=DenseCore, bench=BENCH)
# The exact memory-efficient kernel computes the same attention: same useful FLOPs.
registry.attach("chunked", bench=dataclasses.replace(BENCH, implementation=lambda *args: "chunked"))
