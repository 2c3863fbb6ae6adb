"""Attention cores: one Flax module per attention variant (see :mod:`.base`).

Importing this package attaches each built-in core to its registry entry.
:func:`upkeep` runs every registered core's per-step upkeep; the train loop calls
it after each update, on the collections of :func:`step_collections` that its forward
pass wrote, without knowing which variants a model uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from effjax.attention import registry
from effjax.layers.cores.base import (
    AttentionCore,
    FunctionCore,
    PackedCache,
    attention_rng,
    build_core,
    evaluation_key,
)
from effjax.layers.cores.block_sparse import BlockSparseCore
from effjax.layers.cores.dense import DenseCore
from effjax.layers.cores.gaussian import GaussianCore
from effjax.layers.cores.global_local import GlobalLocalCore
from effjax.layers.cores.kernel import (
    RANDOM_FEATURES,
    LinearCore,
    PerformerCore,
    redraw_performer_features,
)
from effjax.layers.cores.linformer import LinformerCore, linformer_projection_init
from effjax.layers.cores.local import LocalCore
from effjax.layers.cores.lsh import LSHCore
from effjax.layers.cores.persistent_memory import PersistentMemoryCore
from effjax.layers.cores.relative import RelativePositionCore
from effjax.layers.cores.remap import remap_legacy_variables
from effjax.layers.cores.routing import ROUTING_CENTROIDS, RoutingCore
from effjax.layers.cores.sinkhorn import SinkhornCore
from effjax.layers.cores.synthesizer import SynthesizerCore


def _core_classes() -> list[type[AttentionCore]]:
    entries = (registry.variant(name).core for name in registry.available())
    return [cls for cls in dict.fromkeys(entries) if cls is not None]


def step_collections() -> tuple[str, ...]:
    """The collections registered cores write in a training forward pass
    (:attr:`~AttentionCore.step_collections`): a train step applies the model with them
    mutable, then runs :func:`upkeep` on the result.

    Example:
      >>> "routing_centroids" in step_collections()
      True
    """
    names = (name for cls in _core_classes() for name in cls.step_collections)
    return tuple(dict.fromkeys(names))


def upkeep(
    collections: Mapping[str, Any], *, rng: jax.Array, step, num_steps: int | None = None
) -> Mapping[str, Any]:
    """Every registered core's :meth:`~AttentionCore.upkeep` on the non-trainable
    ``collections`` after update ``step`` (1-based) of ``num_steps``; each core gets its
    own key ``fold_in(rng, i)``. Pure and jittable.

    Example:
      >>> # in a train step, after the update:
      >>> # collections = upkeep(collections, rng=key, step=state.step + 1, num_steps=n)
    """
    for i, cls in enumerate(_core_classes()):
        collections = cls.upkeep(
            collections, rng=jax.random.fold_in(rng, i), step=step, num_steps=num_steps
        )
    return collections


__all__ = [
    "RANDOM_FEATURES",
    "ROUTING_CENTROIDS",
    "AttentionCore",
    "BlockSparseCore",
    "DenseCore",
    "FunctionCore",
    "GaussianCore",
    "GlobalLocalCore",
    "LSHCore",
    "LinearCore",
    "LinformerCore",
    "LocalCore",
    "PackedCache",
    "PerformerCore",
    "PersistentMemoryCore",
    "RelativePositionCore",
    "RoutingCore",
    "SinkhornCore",
    "SynthesizerCore",
    "attention_rng",
    "build_core",
    "evaluation_key",
    "linformer_projection_init",
    "redraw_performer_features",
    "remap_legacy_variables",
    "step_collections",
    "upkeep",
]
