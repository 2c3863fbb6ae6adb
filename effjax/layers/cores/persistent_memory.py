"""The core of persistent-memory attention (``attention="persistent_memory"``).

Sukhbaatar et al. 2019: ``num_slots`` learned key/value vectors per key/value head
(params ``memory_key [K, M, H]``, ``memory_value [K, M, H]``) are attended beside the
sequence, always visible. (The paper then drops the feed-forward sub-layer, which is a
model option, not the attention core's.)
"""

from __future__ import annotations

import jax
from flax import linen as nn

from effjax.attention import benchspec, persistent_memory, registry
from effjax.attention.helpers import check_positive
from effjax.layers.cores.dense import DenseCore, bench_implementation


class PersistentMemoryCore(DenseCore):
    """:func:`~effjax.attention.persistent_memory_attention` in a layer.

    Options: ``num_slots`` (M = 32 persistent vectors per head), ``scale``,
    ``implementation`` (dense attention's). The memory is initialised N(0, 1) for keys
    (they meet queries through the logit scale) and N(0, 1/M) for values, as the
    paper's all-attention layer. Decoding keeps dense attention's key/value cache
    (:class:`DenseCore`); the memory slots stay visible to every new query.
    """

    function = staticmethod(persistent_memory.persistent_memory_attention)
    layer_options = ("num_slots",)

    num_slots: int = 32

    def check(self):
        check_positive("num_slots", self.num_slots)

    def prepare(self, query, key, value, deterministic):
        kv_heads = key.shape[2]
        memory_key = self.param(
            "memory_key",
            nn.initializers.normal(1.0),
            (kv_heads, self.num_slots, key.shape[3]),
        )
        memory_value = self.param(
            "memory_value",
            nn.initializers.normal(self.num_slots**-0.5),
            (kv_heads, self.num_slots, value.shape[3]),
        )
        return {**self.function_options(), "memory_key": memory_key, "memory_value": memory_value}


BENCH_SLOTS = 32


def _bench_options(rng, shape: benchspec.Shape):
    kk, kv = jax.random.split(rng)
    memory = (shape.num_kv_heads, BENCH_SLOTS, shape.head_dim)
    return {
        "memory_key": jax.random.normal(kk, memory),
        "memory_value": jax.random.normal(kv, memory),
    }


BENCH = benchspec.BenchSpec(
    _bench_options,
    lambda s, o: benchspec.pairs_flops(s, s.seq_len + BENCH_SLOTS),
    benchspec.fixed(num_slots=BENCH_SLOTS),
    # Dense attention over the memory slots and the sequence: dense's choice.
    lambda backend, s, dtype: bench_implementation(backend, s, dtype, BENCH_SLOTS),
)

registry.attach("persistent_memory", core=PersistentMemoryCore, bench=BENCH)
