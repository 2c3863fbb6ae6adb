"""Attention functions: the dense reference and efficient variants.

Every function takes ``query [B, T, N, H]``, ``key [B, S, K, H]``,
``value [B, S, K, Hv]`` and keyword-only options, and returns ``[B, T, N, Hv]``
in ``value.dtype`` (see ``jax.nn.dot_product_attention`` for the letters).
"""

from effjax.attention import masks
from effjax.attention.dense import dot_product_attention
from effjax.attention.lsh import lsh_attention, lsh_buckets
from effjax.attention.registry import AttentionFn, available, get, register, resolve

register("dense", dot_product_attention)
register("lsh", lsh_attention)

__all__ = [
    "AttentionFn",
    "available",
    "dot_product_attention",
    "get",
    "lsh_attention",
    "lsh_buckets",
    "masks",
    "register",
    "resolve",
]
