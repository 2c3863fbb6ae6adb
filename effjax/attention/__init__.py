"""Attention functions: the dense reference and efficient variants.

Every function takes ``query [B, T, N, H]``, ``key [B, S, K, H]``,
``value [B, S, K, Hv]`` and keyword-only options, and returns ``[B, T, N, Hv]``
in ``value.dtype`` (see ``jax.nn.dot_product_attention`` for the letters).
Each is registered under a short name (``get("local")``) for configs.
"""

from effjax.attention import masks
from effjax.attention.block_sparse import block_sparse_attention, block_sparse_mask
from effjax.attention.chunked import chunked_attention
from effjax.attention.dense import dot_product_attention
from effjax.attention.gaussian import gaussian_attention
from effjax.attention.global_local import global_local_attention, global_local_mask
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
from effjax.attention.local import local_attention, local_mask
from effjax.attention.lowrank import linformer_attention
from effjax.attention.lsh import lsh_attention, lsh_buckets
from effjax.attention.pallas import pallas_attention
from effjax.attention.persistent_memory import persistent_memory_attention
from effjax.attention.registry import AttentionFn, available, get, register, resolve
from effjax.attention.relative import (
    relative_distances,
    relative_position_attention,
    relative_shift,
    sinusoids,
)
from effjax.attention.routing import (
    apply_centroid_statistics,
    centroid_statistics,
    routing_assignments,
    routing_attention,
    routing_clusters,
    update_centroids,
)
from effjax.attention.sinkhorn import (
    block_summaries,
    default_sort_logits,
    sinkhorn_attention,
    sinkhorn_normalize,
)
from effjax.attention.synthesizer import (
    dense_synthesizer_logits,
    factorized_dense_logits,
    factorized_random_logits,
    random_synthesizer_logits,
    synthesizer_attention,
)

register("dense", dot_product_attention)
register("chunked", chunked_attention)
register("local", local_attention)
register("global_local", global_local_attention)
register("block_sparse", block_sparse_attention)
register("lsh", lsh_attention)
register("performer", performer_attention)
register("linear", linear_attention)
register("linformer", linformer_attention)
register("routing", routing_attention)
register("sinkhorn", sinkhorn_attention)
register("synthesizer", synthesizer_attention)
register("persistent_memory", persistent_memory_attention)
register("gaussian", gaussian_attention)

__all__ = [
    "AttentionFn",
    "KernelState",
    "apply_centroid_statistics",
    "available",
    "block_sparse_attention",
    "block_sparse_mask",
    "block_summaries",
    "centroid_statistics",
    "chunked_attention",
    "default_sort_logits",
    "dense_synthesizer_logits",
    "dot_product_attention",
    "factorized_dense_logits",
    "factorized_random_logits",
    "gaussian_attention",
    "get",
    "global_local_attention",
    "global_local_mask",
    "kernel_state_init",
    "linear_attention",
    "linear_decode_step",
    "linear_num_features",
    "linformer_attention",
    "local_attention",
    "local_mask",
    "lsh_attention",
    "lsh_buckets",
    "make_performer_features",
    "masks",
    "pallas_attention",
    "performer_attention",
    "performer_decode_step",
    "persistent_memory_attention",
    "random_synthesizer_logits",
    "register",
    "relative_distances",
    "relative_position_attention",
    "relative_shift",
    "resolve",
    "routing_assignments",
    "routing_attention",
    "routing_clusters",
    "sinkhorn_attention",
    "sinkhorn_normalize",
    "sinusoids",
    "synthesizer_attention",
    "update_centroids",
]
