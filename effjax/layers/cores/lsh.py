"""The core of Reformer LSH attention (``attention="lsh"``)."""

from __future__ import annotations

import jax

from effjax.attention import benchspec, lsh_attention, registry
from effjax.layers.cores.base import AttentionCore, attention_rng


def default_num_buckets(length: int, chunk_size: int) -> int:
    """About two buckets per chunk of the sequence (Kitaev et al. 2020, sec. 3: the number
    of buckets is chosen so that a chunk holds about one bucket), even and at least 2."""
    num_chunks = -(-length // chunk_size)
    return max(2, num_chunks + num_chunks % 2)


class LSHCore(AttentionCore):
    """:func:`~effjax.attention.lsh_attention` in a layer.

    Options: ``num_hashes`` (2), ``chunk_size`` (64, the Reformer's), ``num_buckets``
    (default: about ``T / chunk_size``, rounded up to an even number >= 2),
    ``shared_qk`` (False; True = the layer has no key projection, keys are the
    queries), ``scale``, and ``rng``: the rotations' key. Without ``rng``, training
    draws new rotations per call from the ``"attention"`` stream and evaluation uses
    a fixed key per layer (see ``attention_rng``).
    """

    function = staticmethod(lsh_attention)
    layer_options = ("rng", "num_buckets")

    num_hashes: int = 2
    chunk_size: int = 64
    num_buckets: int | None = None
    shared_qk: bool = False
    scale: float | None = None
    rng: jax.Array | None = None

    @property
    def shares_qk(self) -> bool:
        return self.shared_qk

    def prepare(self, query, key, value, deterministic):
        buckets = self.num_buckets or default_num_buckets(key.shape[1], self.chunk_size)
        return {
            **self.function_options(),
            "num_buckets": buckets,
            "rng": attention_rng(self, deterministic, self.rng),
        }


BENCH_OPTIONS = {"num_hashes": 4, "num_buckets": 64, "chunk_size": 64}


def _bench_flops(shape: benchspec.Shape, options) -> float:
    # Each round scores a chunk and the chunk before it; hashing is one [H, buckets/2] matmul.
    h, buckets, c = (BENCH_OPTIONS[k] for k in ("num_hashes", "num_buckets", "chunk_size"))
    c = min(c, shape.seq_len)
    hashing = 2.0 * shape.batch * shape.heads * shape.seq_len * shape.head_dim * buckets / 2
    return h * (benchspec.pairs_flops(shape, 2 * c) + hashing)


BENCH = benchspec.BenchSpec(
    lambda rng, s: {**BENCH_OPTIONS, "rng": rng}, _bench_flops, benchspec.fixed(**BENCH_OPTIONS)
)

registry.attach("lsh", core=LSHCore, bench=BENCH)
