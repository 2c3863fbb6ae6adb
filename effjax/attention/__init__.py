"""Attention functions: the dense reference and efficient variants.

Every function takes ``query [B, T, N, H]``, ``key [B, S, K, H]``,
``value [B, S, K, Hv]`` and keyword-only options, and returns ``[B, T, N, Hv]``
in ``value.dtype`` (see ``jax.nn.dot_product_attention`` for the letters).
"""

from effjax.attention import masks
from effjax.attention.dense import dot_product_attention
from effjax.attention.kernel import (
    KernelState,
    kernel_state_init,
    linear_attention,
    linear_decode_step,
    linear_num_features,
    make_performer_features,
    performer_attention,
    performer_decode_step,
)
from effjax.attention.lowrank import linformer_attention
from effjax.attention.registry import AttentionFn, available, get, register, resolve

register("dense", dot_product_attention)
register("performer", performer_attention)
register("linear", linear_attention)
register("linformer", linformer_attention)

__all__ = [
    "AttentionFn",
    "KernelState",
    "available",
    "dot_product_attention",
    "get",
    "kernel_state_init",
    "linear_attention",
    "linear_decode_step",
    "linear_num_features",
    "linformer_attention",
    "make_performer_features",
    "masks",
    "performer_attention",
    "performer_decode_step",
    "register",
    "resolve",
]
