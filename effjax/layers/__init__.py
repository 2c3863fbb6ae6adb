"""Flax linen modules built on effjax's attention functions."""

from effjax.layers import block_sparse_rng, local_cache  # noqa: F401  (register hooks)
from effjax.layers.attention import MultiHeadAttention, as_flax_attention_fn
from effjax.layers.variants import LayerHooks, register_layer_hooks

__all__ = [
    "LayerHooks",
    "MultiHeadAttention",
    "as_flax_attention_fn",
    "register_layer_hooks",
]
