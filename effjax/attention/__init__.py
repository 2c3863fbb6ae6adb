"""Attention functions: the dense reference and efficient variants.

Every function takes ``query [B, T, N, H]``, ``key [B, S, K, H]``,
``value [B, S, K, Hv]`` and keyword-only options, and returns ``[B, T, N, Hv]``
in ``value.dtype`` (see ``jax.nn.dot_product_attention`` for the letters).
"""

from effjax.attention import masks
from effjax.attention.block_sparse import block_sparse_attention, block_sparse_mask
from effjax.attention.dense import dot_product_attention
from effjax.attention.global_local import global_local_attention, global_local_mask
from effjax.attention.local import local_attention, local_mask
from effjax.attention.registry import AttentionFn, available, get, register, resolve

register("dense", dot_product_attention)
register("local", local_attention)
register("global_local", global_local_attention)
register("block_sparse", block_sparse_attention)

__all__ = [
    "AttentionFn",
    "available",
    "block_sparse_attention",
    "block_sparse_mask",
    "dot_product_attention",
    "get",
    "global_local_attention",
    "global_local_mask",
    "local_attention",
    "local_mask",
    "masks",
    "register",
    "resolve",
]
