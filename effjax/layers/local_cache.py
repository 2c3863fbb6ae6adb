"""Decoding with a rolling key/value cache of the window, for ``attention="local"``.

A causal sliding window with ``left`` keys before the query (dilation ``d``) never looks
further back than ``left * d`` positions, so decoding only keeps the last ``L = left * d``
keys and values: O(window) memory per step however long the generation runs, where
dense attention's cache grows with the sequence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from effjax.attention import local_attention
from effjax.attention import masks as masks_lib
from effjax.layers.variants import register_layer_hooks


def rolling_window_decode(
    module, query: jax.Array, key: jax.Array, value: jax.Array, options: Mapping[str, Any]
) -> jax.Array:
    """One causal decoding step of local attention against a rolling window cache.

    Cache variables: ``cached_key``, ``cached_value`` ``[B, L, K, H]`` hold the keys and
    values of the ``L = left * dilation`` positions before the next token (oldest first,
    zeros before the sequence start), and ``cache_index`` (int32 scalar) counts the tokens
    seen. ``T`` new queries at positions ``i .. i+T-1`` attend to the ``L + T`` keys at
    positions ``i - L .. i+T-1`` with :func:`~effjax.attention.local_attention`
    (bottom-right aligned, so query ``t`` sits at ``i + t``), positions below 0 masked;
    the last ``L`` of those keys become the new cache.
    """
    left, _ = masks_lib.normalize_window(options["window_size"])
    history = left * options.get("dilation", 1)
    batch, _, kv_heads, head_dim = key.shape
    is_initialized = module.has_variable("cache", "cached_key")
    shape = (batch, history, kv_heads)
    cached_key = module.variable("cache", "cached_key", jnp.zeros, (*shape, head_dim), key.dtype)
    cached_value = module.variable(
        "cache", "cached_value", jnp.zeros, (*shape, value.shape[-1]), value.dtype
    )
    cache_index = module.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
        return local_attention(query, key, value, is_causal=True, **options)

    keys = jnp.concatenate([cached_key.value, key.astype(cached_key.value.dtype)], axis=1)
    values = jnp.concatenate([cached_value.value, value.astype(cached_value.value.dtype)], axis=1)
    index = cache_index.value
    positions = index - history + jnp.arange(keys.shape[1])
    started = jnp.broadcast_to((positions >= 0)[None], (batch, keys.shape[1]))
    out = local_attention(query, keys, values, is_causal=True, padding_mask=started, **options)
    cached_key.value = keys[:, keys.shape[1] - history :]
    cached_value.value = values[:, values.shape[1] - history :]
    cache_index.value = index + query.shape[1]
    return out


register_layer_hooks("local", decode=rolling_window_decode)
