"""What the benchmark runs for each attention variant: its options and its useful FLOPs.

Useful FLOPs count the multiply-adds (2 FLOPs each) a variant must do for its
attention pattern, forward only: ``QK^T`` and ``PV`` over the pairs it scores,
plus any feature maps or projections. Padding, masking waste and recomputation
are not useful work, so ``achieved FLOP rate / matmul peak`` shows the distance
to the hardware limit. A forward+backward pass counts 3x the forward FLOPs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Shape:
    """The benchmarked problem: ``query [B, T, N, H]``, ``key/value [B, T, K, H]``."""

    batch: int
    seq_len: int
    heads: int
    head_dim: int
    kv_heads: int | None = None

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads or self.heads


OptionsFn = Callable[[jax.Array, Shape], dict[str, Any]]
FlopsFn = Callable[[Shape, dict[str, Any]], float | None]


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """How to benchmark one registered variant.

    Attributes:
      options: builds the variant's keyword options for a shape from a PRNG key.
      flops: useful forward FLOPs for that shape and those options.
      summary: the options as they go into the JSON record (no arrays).
    """

    options: OptionsFn
    flops: FlopsFn
    summary: Callable[[Shape], dict[str, Any]]


def _pairs_flops(shape: Shape, pairs_per_query: float) -> float:
    """QK^T and PV over ``pairs_per_query`` keys per query: 2 matmuls x 2 FLOPs per MAC."""
    return 4.0 * shape.batch * shape.heads * shape.seq_len * pairs_per_query * shape.head_dim


def _no_options(rng, shape):
    return {}


def _fixed(**summary):
    return lambda shape: dict(summary)


LOCAL_WINDOW = (128, 128)
NUM_GLOBAL_TOKENS = 16
BLOCK_SPARSE = {"block_size": 64, "num_random_blocks": 3, "num_global_blocks": 2}
LSH = {"num_hashes": 4, "num_buckets": 64, "chunk_size": 64}
PERFORMER_FEATURES = 256
LINFORMER_K = 256


def _window_pairs(shape: Shape) -> float:
    return min(shape.seq_len, sum(LOCAL_WINDOW) + 1)


def _global_mask(shape: Shape) -> jax.Array:
    # Longformer puts global attention on a few task tokens ([CLS], question): the first ones.
    return jnp.broadcast_to(
        jnp.arange(shape.seq_len) < NUM_GLOBAL_TOKENS, (shape.batch, shape.seq_len)
    )


def _global_local_flops(shape: Shape, options) -> float:
    g = min(NUM_GLOBAL_TOKENS, shape.seq_len)
    # Every query sees its window plus the g global keys; the g global queries see all keys.
    global_rows = 4.0 * shape.batch * shape.heads * g * shape.seq_len * shape.head_dim
    return _pairs_flops(shape, _window_pairs(shape) + g) + global_rows


def _block_sparse_flops(shape: Shape, options) -> float:
    b = BLOCK_SPARSE["block_size"]
    num_blocks = -(-shape.seq_len // b)
    keys_per_block = min(
        num_blocks, 3 + BLOCK_SPARSE["num_global_blocks"] + BLOCK_SPARSE["num_random_blocks"]
    )
    global_rows = min(num_blocks, BLOCK_SPARSE["num_global_blocks"]) * b
    sparse = _pairs_flops(shape, keys_per_block * b)
    dense_rows = 4.0 * shape.batch * shape.heads * global_rows * shape.seq_len * shape.head_dim
    return sparse + dense_rows


def _lsh_flops(shape: Shape, options) -> float:
    # Each round scores a chunk and the chunk before it; hashing is one [H, buckets/2] matmul.
    c = min(LSH["chunk_size"], shape.seq_len)
    hashing = (
        2.0 * shape.batch * shape.heads * shape.seq_len * shape.head_dim * LSH["num_buckets"] / 2
    )
    return LSH["num_hashes"] * (_pairs_flops(shape, 2 * c) + hashing)


def _kernel_flops(shape: Shape, num_features: int, feature_cost: float) -> float:
    """phi(Q), phi(K) feature maps, then phi(K)^T V and phi(Q) (phi(K)^T V) plus the normaliser."""
    tokens = shape.batch * shape.heads * shape.seq_len
    return tokens * (2 * feature_cost + 4.0 * num_features * shape.head_dim + 4.0 * num_features)


def _performer_options(rng, shape):
    from effjax.attention import make_performer_features

    return {"features": make_performer_features(rng, PERFORMER_FEATURES, shape.head_dim)}


def _linformer_options(rng, shape):
    kk, kv = jax.random.split(rng)
    scale = shape.seq_len**-0.5
    proj_shape = (min(LINFORMER_K, shape.seq_len), shape.seq_len)
    return {
        "proj_k": jax.random.normal(kk, proj_shape) * scale,
        "proj_v": jax.random.normal(kv, proj_shape) * scale,
    }


def _linformer_flops(shape: Shape, options) -> float:
    k = min(LINFORMER_K, shape.seq_len)
    projections = 2 * 2.0 * shape.batch * shape.num_kv_heads * k * shape.seq_len * shape.head_dim
    return projections + _pairs_flops(shape, k)


SPECS: dict[str, VariantSpec] = {
    "jax": VariantSpec(_no_options, lambda s, o: _pairs_flops(s, s.seq_len), _fixed()),
    "dense": VariantSpec(_no_options, lambda s, o: _pairs_flops(s, s.seq_len), _fixed()),
    "chunked": VariantSpec(_no_options, lambda s, o: _pairs_flops(s, s.seq_len), _fixed()),
    "local": VariantSpec(
        lambda rng, s: {"window_size": LOCAL_WINDOW},
        lambda s, o: _pairs_flops(s, _window_pairs(s)),
        _fixed(window_size=list(LOCAL_WINDOW)),
    ),
    "global_local": VariantSpec(
        lambda rng, s: {
            "window_size": LOCAL_WINDOW,
            "global_mask": _global_mask(s),
            # The mask travels as a traced argument: its token count must be static.
            "max_global_tokens": NUM_GLOBAL_TOKENS,
        },
        _global_local_flops,
        _fixed(window_size=list(LOCAL_WINDOW), num_global_tokens=NUM_GLOBAL_TOKENS),
    ),
    "block_sparse": VariantSpec(
        lambda rng, s: {**BLOCK_SPARSE, "rng": rng}, _block_sparse_flops, _fixed(**BLOCK_SPARSE)
    ),
    "lsh": VariantSpec(lambda rng, s: {**LSH, "rng": rng}, _lsh_flops, _fixed(**LSH)),
    "performer": VariantSpec(
        _performer_options,
        # exp feature map: a [H, F] projection (2 H F FLOPs per token) for queries and keys.
        lambda s, o: _kernel_flops(s, PERFORMER_FEATURES, 2.0 * s.head_dim * PERFORMER_FEATURES),
        _fixed(num_features=PERFORMER_FEATURES, kernel="softmax"),
    ),
    "linear": VariantSpec(
        _no_options,
        lambda s, o: _kernel_flops(s, s.head_dim, 2.0 * s.head_dim),
        _fixed(feature_map="elu"),
    ),
    "linformer": VariantSpec(_linformer_options, _linformer_flops, _fixed(k=LINFORMER_K)),
}


def implementation_of(name: str) -> str:
    """The kernel that runs when the benchmark calls ``name``: ``"chunked"`` for the
    chunked variant, ``"xla"`` (plain XLA operations) for jax.nn and the others."""
    return "chunked" if name == "chunked" else "xla"


def spec_for(name: str) -> VariantSpec:
    """The benchmark spec of ``name``; a user-registered variant runs with no options and
    unknown useful FLOPs."""
    return SPECS.get(name, VariantSpec(_no_options, lambda s, o: None, _fixed()))
