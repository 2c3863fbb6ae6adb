"""Flax linen modules built on effjax's attention functions."""

from effjax.layers.attention import MultiHeadAttention
from effjax.layers.cores import (
    RANDOM_FEATURES,
    ROUTING_CENTROIDS,
    AttentionCore,
    BlockSparseCore,
    DenseCore,
    FunctionCore,
    GaussianCore,
    GlobalLocalCore,
    LinearCore,
    LinformerCore,
    LocalCore,
    LSHCore,
    PerformerCore,
    PersistentMemoryCore,
    RelativePositionCore,
    RoutingCore,
    SinkhornCore,
    SynthesizerCore,
    attention_rng,
    linformer_projection_init,
    redraw_performer_features,
    remap_legacy_variables,
    upkeep,
)
from effjax.layers.feedforward import FeedForward
from effjax.layers.flax_adapter import as_flax_attention_fn
from effjax.layers.gbst import GBST
from effjax.layers.moe import MOE_LOSSES, SwitchFeedForward, expert_capacity, moe_aux_losses
from effjax.layers.quantized import QuantizedArray, QuantizedDense, QuantizedEmbed
from effjax.layers.reversible import ReversibleStack

__all__ = [
    "GBST",
    "MOE_LOSSES",
    "RANDOM_FEATURES",
    "ROUTING_CENTROIDS",
    "AttentionCore",
    "BlockSparseCore",
    "DenseCore",
    "FeedForward",
    "FunctionCore",
    "GaussianCore",
    "GlobalLocalCore",
    "LSHCore",
    "LinearCore",
    "LinformerCore",
    "LocalCore",
    "MultiHeadAttention",
    "PerformerCore",
    "PersistentMemoryCore",
    "QuantizedArray",
    "QuantizedDense",
    "QuantizedEmbed",
    "RelativePositionCore",
    "ReversibleStack",
    "RoutingCore",
    "SinkhornCore",
    "SwitchFeedForward",
    "SynthesizerCore",
    "as_flax_attention_fn",
    "attention_rng",
    "expert_capacity",
    "linformer_projection_init",
    "moe_aux_losses",
    "redraw_performer_features",
    "remap_legacy_variables",
    "upkeep",
]
