"""How :class:`~effjax.layers.MultiHeadAttention` feeds LSH attention its rotation key.

Training (``deterministic=False``) draws a fresh key per call from the ``"attention"``
PRNG stream, so the hash rotations change every step as in the Reformer; evaluation
uses the ``rng`` given in ``attention_options`` or, without one, a fixed key, so it is
repeatable.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from effjax.layers import MultiHeadAttention
  >>> layer = MultiHeadAttention(num_heads=2, attention="lsh", is_causal=True,
  ...     attention_options={"num_hashes": 2, "num_buckets": 4, "chunk_size": 8})
  >>> x = jnp.ones((1, 32, 16))
  >>> variables = layer.init(jax.random.key(0), x)
  >>> train_out = layer.apply(variables, x, deterministic=False,
  ...                         rngs={"attention": jax.random.key(1)})
  >>> train_out.shape
  (1, 32, 16)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from effjax.layers.variants import register_layer_hooks

EVAL_SEED = 0


def lsh_prepare(
    module, query, key, value, options: Mapping[str, Any], deterministic: bool
) -> dict[str, Any]:
    """``{"rng": key}``: ``make_rng("attention")`` in training, a fixed key in evaluation."""
    if not deterministic:
        return {"rng": module.make_rng("attention")}
    return {"rng": options.get("rng", jax.random.key(EVAL_SEED))}


register_layer_hooks("lsh", prepare=lsh_prepare)
