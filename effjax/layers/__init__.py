"""Flax linen modules built on effjax's attention functions."""

from effjax.layers import kernel_state, linformer
from effjax.layers.attention import MultiHeadAttention, as_flax_attention_fn
from effjax.layers.kernel_state import RANDOM_FEATURES, redraw_performer_features
from effjax.layers.linformer import linformer_projection_init
from effjax.layers.variants import LayerHooks, register_layer_hooks

__all__ = [
    "RANDOM_FEATURES",
    "LayerHooks",
    "MultiHeadAttention",
    "as_flax_attention_fn",
    "kernel_state",
    "linformer",
    "linformer_projection_init",
    "redraw_performer_features",
    "register_layer_hooks",
]
