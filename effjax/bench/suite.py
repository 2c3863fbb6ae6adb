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


def implementation_of(name: str, seq_len: int) -> str:
    """The kernel that runs when the benchmark calls ``name`` at ``seq_len`` tokens:
    ``"chunked"`` for the chunked variant, dense's default for this backend and length
    (the benchmark gives no mask), and ``"xla"`` (plain XLA operations) for jax.nn and
    the others."""
    if name == "dense":
        from effjax.attention.dense import default_implementation

        backend = jax.default_backend()
        return default_implementation(
            backend, dense_mask=False, window=False, real=True, kv_len=seq_len
        )
    return "chunked" if name == "chunked" else "xla"


__all__ = ["BASELINE_SPEC", "BenchSpec", "Shape", "implementation_of", "spec_for"]
