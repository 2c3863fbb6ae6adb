"""What ``effjax bench`` runs for a variant: its options at a size, and its useful FLOPs.

A variant registers a :class:`BenchSpec` beside its function and core
(``registry.register(..., bench=spec)`` or ``registry.attach(name, bench=spec)``), so
the benchmark and its report pick it up with no edit under ``effjax/bench/``.

Useful FLOPs count the multiply-adds (2 FLOPs each) a variant must do for its
attention pattern, forward only: ``QK^T`` and ``PV`` over the pairs it scores, plus
any feature maps or projections. Padding, masking waste and recomputation are not
useful work, so ``achieved FLOP rate / matmul peak`` shows the distance to the
hardware limit. A forward+backward pass counts 3x the forward FLOPs.

Example:
  >>> spec = BenchSpec(flops=lambda s, o: pairs_flops(s, s.seq_len))
  >>> spec.flops(Shape(batch=1, seq_len=8, heads=2, head_dim=4), {})
  2048.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax


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


def no_options(rng: jax.Array, shape: Shape) -> dict[str, Any]:
    return {}


def no_summary(shape: Shape) -> dict[str, Any]:
    return {}


def xla_only(backend: str, shape: Shape, dtype: str) -> str:
    return "xla"


def fixed(**summary) -> Callable[[Shape], dict[str, Any]]:
    """A summary that is the same at every size."""
    return lambda shape: dict(summary)


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """How to benchmark one variant.

    Attributes:
      options: ``(rng, shape) -> keyword options`` of the pure function at that size
        (arrays allowed: Performer features, Linformer projections, a global mask).
      flops: ``(shape, options) -> useful forward FLOPs`` (None: unknown).
      summary: ``shape -> options`` as they go into the JSON record (no arrays).
      implementation: ``(backend, shape, dtype) -> the path`` the benchmark's call runs
        (its ``implementation=None`` choice, from the variant's selector), recorded
        beside each measurement; default ``"xla"``.
    """

    options: Callable[[jax.Array, Shape], dict[str, Any]] = no_options
    flops: Callable[[Shape, dict[str, Any]], float | None] = lambda shape, options: None
    summary: Callable[[Shape], dict[str, Any]] = no_summary
    implementation: Callable[[str, Shape, str], str] = xla_only


def pairs_flops(shape: Shape, pairs_per_query: float) -> float:
    """QK^T and PV over ``pairs_per_query`` keys per query: 2 matmuls x 2 FLOPs per MAC."""
    return 4.0 * shape.batch * shape.heads * shape.seq_len * pairs_per_query * shape.head_dim


def dense_rows_flops(shape: Shape, rows: int) -> float:
    """``rows`` queries that see every key (global tokens)."""
    return 4.0 * shape.batch * shape.heads * rows * shape.seq_len * shape.head_dim


def kernel_flops(shape: Shape, num_features: int, feature_cost: float) -> float:
    """phi(Q), phi(K) feature maps, then phi(K)^T V and phi(Q) (phi(K)^T V) plus the normaliser."""
    tokens = shape.batch * shape.heads * shape.seq_len
    return tokens * (2 * feature_cost + 4.0 * num_features * shape.head_dim + 4.0 * num_features)
