"""Flax linen modules built on effjax's attention functions."""

from effjax.layers.attention import MultiHeadAttention, as_flax_attention_fn
from effjax.layers.quantized import QuantizedArray, QuantizedDense
from effjax.layers.variants import LayerHooks, register_layer_hooks

__all__ = [
    "LayerHooks",
    "MultiHeadAttention",
    "QuantizedArray",
    "QuantizedDense",
    "as_flax_attention_fn",
    "register_layer_hooks",
]
