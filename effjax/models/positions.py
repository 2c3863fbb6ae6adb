"""Longer inputs for a pretrained encoder: extend its learned position table by copying.

Longformer (Beltagy et al. 2020, §5) warm-starts 4,096 positions from RoBERTa's 512
by copying the learned table repeatedly, instead of initialising the new rows at
random; the copy keeps the local structure attention learned (neighbouring positions
stay similar) everywhere except at the seams.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import jax.numpy as jnp
from flax.core import FrozenDict

from effjax.attention.relative import sinusoids

ConfigT = TypeVar("ConfigT")


def _embedding_scopes(tree: Mapping[str, Any], path=()):
    """Paths of every parameter dict that holds a ``position_embeddings`` table."""
    if "position_embeddings" in tree and "embedding" in tree["position_embeddings"]:
        yield path
    for key, value in tree.items():
        if isinstance(value, Mapping) and key != "position_embeddings":
            yield from _embedding_scopes(value, (*path, key))


def extend_position_embeddings(
    variables: Mapping[str, Any], config: ConfigT, new_max_len: int
) -> tuple[dict, ConfigT]:
    """Tiles the learned position table so inputs up to ``new_max_len`` tokens fit.

    The table ``[offset + L, D]`` (``L = config.max_length`` learned positions after the
    ``position_offset`` reserved rows, 2 for RoBERTa) becomes ``[offset + new_max_len, D]``
    with row ``offset + p = old[offset + p % L]``. Positions below ``L`` are unchanged, so
    inputs that fit the old table give the same outputs.

    Args:
      variables: ``{"params": ...}`` of an Encoder (or a model wrapping one).
      config: the model's :class:`EncoderConfig` (or DecoderConfig).
      new_max_len: the longest input, in tokens; at least ``config.max_length``.

    Returns:
      ``(variables, config)`` with the longer table and ``max_position_embeddings``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.models import Encoder, EncoderConfig
      >>> cfg = EncoderConfig(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2,
      ...                     intermediate_size=16, max_position_embeddings=4)
      >>> v = Encoder(cfg).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))
      >>> v2, cfg2 = extend_position_embeddings(v, cfg, 10)
      >>> cfg2.max_position_embeddings, v2["params"]["embeddings"]["position_embeddings"][
      ...     "embedding"].shape
      (10, (10, 8))
    """
    old_len = config.max_length
    if new_max_len < old_len:
        raise ValueError(f"new_max_len={new_max_len} is shorter than the current {old_len}")
    offset = getattr(config, "position_offset", 0)
    tree = FrozenDict(variables).unfreeze()
    scopes = list(_embedding_scopes(tree.get("params", {}), ("params",)))
    if not scopes:
        raise ValueError("variables hold no params/.../position_embeddings/embedding table")
    for scope in scopes:
        holder = tree
        for key in scope:
            holder = holder[key]
        table = holder["position_embeddings"]["embedding"]
        if table.shape[0] != config.max_position_embeddings:
            raise ValueError(
                f"position table at {'/'.join(scope)} has {table.shape[0]} rows, config says "
                f"max_position_embeddings={config.max_position_embeddings}"
            )
        learned = table[offset:]
        copies = -(-new_max_len // old_len)
        tiled = jnp.tile(learned, (copies, 1))[:new_max_len]
        holder["position_embeddings"]["embedding"] = jnp.concatenate([table[:offset], tiled])
    new_config = config.replace(max_position_embeddings=offset + new_max_len)
    return tree, new_config


def sinusoidal_positions(length: int, dim: int) -> jnp.ndarray:
    """Fixed position encodings of Vaswani et al. (2017), float32 ``[length, dim]``:
    ``sin(p / 10000^(2i/dim))`` in the first half of the features, ``cos`` in the second.

    Example:
      >>> sinusoidal_positions(16, 8).shape
      (16, 8)
    """
    return sinusoids(jnp.arange(length), dim)
