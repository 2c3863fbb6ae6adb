"""Flax linen modules built on effjax's attention functions."""

# Importing these registers each variant's layer hooks (keys, features, decoding caches).
from effjax.layers import block_sparse_rng, kernel_state, linformer, local_cache, lsh_hooks  # noqa: F401
from effjax.layers.attention import MultiHeadAttention, as_flax_attention_fn
from effjax.layers.feedforward import FeedForward
from effjax.layers.gbst import GBST
from effjax.layers.kernel_state import RANDOM_FEATURES, redraw_performer_features
from effjax.layers.linformer import linformer_projection_init
from effjax.layers.moe import MOE_LOSSES, SwitchFeedForward, expert_capacity, moe_aux_losses
from effjax.layers.quantized import QuantizedArray, QuantizedDense
from effjax.layers.reversible import ReversibleStack
from effjax.layers.variants import LayerHooks, register_layer_hooks

__all__ = [
    "GBST",
    "MOE_LOSSES",
    "RANDOM_FEATURES",
    "FeedForward",
    "LayerHooks",
    "MultiHeadAttention",
    "QuantizedArray",
    "QuantizedDense",
    "ReversibleStack",
    "SwitchFeedForward",
    "as_flax_attention_fn",
    "expert_capacity",
    "linformer_projection_init",
    "moe_aux_losses",
    "redraw_performer_features",
    "register_layer_hooks",
]
