"""The ``rng`` of BigBird block-sparse attention inside a layer (``attention="block_sparse"``).

Training draws a new random-block pattern at every call from the ``"attention"`` PRNG
stream (``rngs={"attention": key}``), as BigBird does; evaluation
(``deterministic=True``) uses a fixed pattern per layer, so outputs are repeatable.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import jax

from effjax.layers.variants import register_layer_hooks


def evaluation_key(module) -> jax.Array:
    """``fold_in(key(0), crc32(layer path))``: fixed, and different for each layer of a model."""
    path = "/".join(str(name) for name in module.path)
    return jax.random.fold_in(jax.random.key(0), zlib.crc32(path.encode()))


def block_sparse_prepare(
    module,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    options: Mapping[str, Any],
    deterministic: bool,
) -> dict[str, Any]:
    """Adds ``rng``: from ``module.make_rng("attention")`` when training, else fixed.

    An ``rng`` given in ``attention_options`` is kept as it is.
    """
    if "rng" in options:
        return {}
    if deterministic:
        return {"rng": evaluation_key(module)}
    return {"rng": module.make_rng("attention")}


register_layer_hooks("block_sparse", prepare=block_sparse_prepare)
