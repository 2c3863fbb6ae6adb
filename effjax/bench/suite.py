"""What the benchmark runs for each attention variant: the spec registered beside it.

Each variant's :class:`~effjax.attention.benchspec.BenchSpec` (options for a size,
useful FLOPs, a JSON summary) lives beside its core and is found through the
registry, so a new variant is benchmarked without an edit here. The one spec kept
here is the baseline's, ``jax.nn.dot_product_attention``.
"""

from __future__ import annotations

import jax

import effjax.layers  # noqa: F401  (attaches each built-in variant's core and bench spec)
from effjax.attention import benchspec, registry
from effjax.attention.benchspec import BenchSpec, Shape

BASELINE_SPEC = BenchSpec(flops=lambda s, o: benchspec.pairs_flops(s, s.seq_len))


def spec_for(name: str) -> BenchSpec:
    """The benchmark spec of ``name`` ("jax" = the baseline); a variant registered without
    one runs with no options and unknown useful FLOPs."""
    if name == "jax":
        return BASELINE_SPEC
    return registry.variant(name).bench or BenchSpec()


def implementation_of(
    name: str, shape: Shape, dtype: str = "float32", backend: str | None = None
) -> str:
    """The kernel that runs when the benchmark calls ``name`` (with
    ``implementation=None``) at ``shape`` and ``dtype`` on ``backend`` (default: this
    process's): the variant's spec answers from its family's selector, ``"xla"`` for
    jax.nn (whose own ``None`` is XLA) and for variants with one path.

    Example:
      >>> implementation_of("dense", Shape(1, 4096, 8, 64), backend="cpu")
      'chunked'
      >>> implementation_of("local", Shape(1, 4096, 8, 64), "bfloat16", backend="tpu")
      'pallas'
    """
    backend = jax.default_backend() if backend is None else backend
    return spec_for(name).implementation(backend, shape, dtype)


__all__ = ["BASELINE_SPEC", "BenchSpec", "Shape", "implementation_of", "spec_for"]
