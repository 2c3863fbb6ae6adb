"""The core of BigBird block-sparse attention (``attention="block_sparse"``)."""

from __future__ import annotations

import jax

from effjax.attention import benchspec, block_sparse, block_sparse_attention, registry
from effjax.layers.cores.base import AttentionCore, attention_rng


class BlockSparseCore(AttentionCore):
    """:func:`~effjax.attention.block_sparse_attention` in a layer.

    Options (BigBird ITC's defaults, Zaheer et al. 2020): ``block_size`` (64),
    ``num_random_blocks`` (3), ``num_global_blocks`` (2), ``per_head`` (False),
    ``scale``, and ``rng``: the random blocks' key. Without ``rng``, training
    (``deterministic=False``) draws a new pattern per call from the ``"attention"``
    stream and evaluation uses a fixed pattern per layer (see ``attention_rng``).

    ``implementation`` (``"xla"`` or ``"pallas"``, the function's): splash attention's
    masks are static, so with ``"pallas"`` the pattern is drawn once, at trace time, from
    ``rng`` or else the layer's evaluation key: one fixed pattern per layer, in training
    as in evaluation (BigBird's random blocks stop changing from step to step).
    """

    function = staticmethod(block_sparse_attention)
    layer_options = ("rng",)
    implementations = block_sparse.IMPLEMENTATIONS

    block_size: int = 64
    num_random_blocks: int = 3
    num_global_blocks: int = 2
    per_head: bool = False
    scale: float | None = None
    rng: jax.Array | None = None
    implementation: str | None = None

    def prepare(self, query, key, value, deterministic):
        if self.implementation == "pallas":
            # A concrete key (not traced under jit): the static per-layer pattern.
            with jax.ensure_compile_time_eval():
                rng = attention_rng(self, True, self.rng)
        else:
            rng = attention_rng(self, deterministic, self.rng)
        return {**self.function_options(), "rng": rng}


BENCH_OPTIONS = {"block_size": 64, "num_random_blocks": 3, "num_global_blocks": 2}


def _bench_flops(shape: benchspec.Shape, options) -> float:
    b, g, r = (BENCH_OPTIONS[k] for k in ("block_size", "num_global_blocks", "num_random_blocks"))
    num_blocks = -(-shape.seq_len // b)
    # A block row scores 3 window + g global + r random key blocks; global rows see all.
    sparse = benchspec.pairs_flops(shape, min(num_blocks, 3 + g + r) * b)
    return sparse + benchspec.dense_rows_flops(shape, min(num_blocks, g) * b)


BENCH = benchspec.BenchSpec(
    lambda rng, s: {**BENCH_OPTIONS, "rng": rng},
    _bench_flops,
    benchspec.fixed(**BENCH_OPTIONS),
    # The key travels as a traced argument of the timed program: the XLA path everywhere.
    lambda backend, s, dtype: block_sparse.default_implementation(
        backend, dtypes=(dtype,), static_rng=False
    ),
)

registry.attach("block_sparse", core=BlockSparseCore, bench=BENCH)
