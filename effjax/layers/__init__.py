"""Flax linen modules built on effjax's attention functions."""

from effjax.layers import lsh_hooks as _lsh_hooks  # noqa: F401  (registers "lsh" hooks)
from effjax.layers.attention import MultiHeadAttention, as_flax_attention_fn
from effjax.layers.feedforward import FeedForward
from effjax.layers.reversible import ReversibleStack
from effjax.layers.variants import LayerHooks, register_layer_hooks

__all__ = [
    "FeedForward",
    "LayerHooks",
    "MultiHeadAttention",
    "ReversibleStack",
    "as_flax_attention_fn",
    "register_layer_hooks",
]
