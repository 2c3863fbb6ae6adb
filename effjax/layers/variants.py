"""How :class:`~effjax.layers.MultiHeadAttention` serves each attention variant.

The pure functions in :mod:`effjax.attention` hold no state. Some variants need
some in a layer: learned projections (Linformer), random features that are
redrawn (Performer), a fresh PRNG key per training step (LSH, BigBird), or a
decoding cache of their own (a rolling window, a recurrent state). A variant
registers two optional hooks here, under its registry name:

``prepare(module, query, key, value, options, deterministic) -> dict``
  Called inside the layer's compact ``__call__`` with the projected
  ``query [B, T, N, H]``, ``key [B, S, K, H]``, ``value [B, S, K, H]``. It may
  create variables with ``module.param`` / ``module.variable`` and draw keys with
  ``module.make_rng``; it returns keyword arguments added to the attention call.
  ``options`` is a fresh dict on every call: a hook removes (``pop``) the options
  that only the layer understands (``num_features``, ``max_len``, ...) so that
  the pure function never sees them.

``decode(module, query, key, value, options) -> [B, T, N, H]``
  One autoregressive step with ``T`` new tokens (``T = 1`` for token-by-token
  generation) against a cache kept in the ``"cache"`` collection. At init
  (``module.is_initializing()``) it receives the full-length input, allocates the
  cache for that length, and returns the full causal pass.

Variants without a ``decode`` hook raise a clear error when ``decode=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from effjax.attention import dot_product_attention

PrepareFn = Callable[..., dict[str, Any]]
DecodeFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class LayerHooks:
    prepare: PrepareFn | None = None
    decode: DecodeFn | None = None


_HOOKS: dict[str, LayerHooks] = {}


def register_layer_hooks(
    name: str, *, prepare: PrepareFn | None = None, decode: DecodeFn | None = None
) -> None:
    """Registers the layer hooks of the attention variant ``name`` (see module docstring)."""
    _HOOKS[name] = LayerHooks(prepare=prepare, decode=decode)


def hooks_for(attention: str | Callable) -> LayerHooks:
    """The hooks of a registered name; a plain function gets none."""
    if isinstance(attention, str):
        return _HOOKS.get(attention, LayerHooks())
    return LayerHooks()


def full_cache_decode(
    module, query: jax.Array, key: jax.Array, value: jax.Array, options: Mapping[str, Any]
) -> jax.Array:
    """Decoding against a cache of every past key and value (dense attention's cache).

    Cache variables (flax's names): ``cached_key``, ``cached_value`` [B, L, K, H]
    and ``cache_index`` (int32 scalar), with ``L`` the length seen at init.
    ``T`` new queries at positions ``i .. i+T-1`` see cached keys ``<= i + t``.
    """
    is_initialized = module.has_variable("cache", "cached_key")
    cached_key = module.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = module.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    cache_index = module.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
        return dot_product_attention(query, key, value, is_causal=True, **options)

    max_len = cached_key.value.shape[1]
    num_new = query.shape[1]
    index = cache_index.value
    start = (0, index, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
    cache_index.value = index + num_new
    # Query t (at position index + t) sees cached positions <= index + t: a causal mask against
    # the cache, bottom-right aligned at the end of the filled part.
    positions = jnp.arange(max_len)
    query_pos = index + jnp.arange(num_new)
    mask = positions[None, :] <= query_pos[:, None]
    return dot_product_attention(
        query, cached_key.value, cached_value.value, mask=mask[None, None], **options
    )


register_layer_hooks("dense", decode=full_cache_decode)
