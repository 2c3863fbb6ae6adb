"""The core of Sparse Sinkhorn attention (``attention="sinkhorn"``, Tay et al. 2020).

The core owns the paper's meta sorting network: block summaries (the mean key of each
block; causal: the mean key of all earlier blocks) go through a two-layer network
``relu(s W1) W2`` per key/value head (params ``sort_w1 [K, H, F]``, ``sort_w2 [K, F, n_max]``)
whose ``n`` outputs score the blocks a block is sorted with. ``n_max`` comes from
``max_len`` (default: the init input's length). With ``gumbel_noise``, training adds
Gumbel noise to the scores (Gumbel-Sinkhorn) from the ``"attention"`` rng stream.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from effjax.attention import benchspec, registry, sinkhorn
from effjax.attention.helpers import check_positive
from effjax.layers.cores.base import AttentionCore, attention_rng


class SinkhornCore(AttentionCore):
    """:func:`~effjax.attention.sinkhorn_attention` with a learned sorting network.

    Options: ``block_size`` (64), ``temperature`` (0.75), ``iterations`` (5 Sinkhorn
    rounds), ``sortcut_blocks`` (None; k = SortCut, not causal), ``max_len`` (default
    the init length), ``sort_hidden`` (F, default the head size), ``gumbel_noise``
    (False), ``scale``.

    Decoding (:meth:`~effjax.layers.cores.AttentionCore.decode_by_full_pass`): a cache of
    the ``L`` (init length) keys and values, each row's real tokens from slot 0; every
    step reruns the causal pass over the cache and returns the new tokens' rows. Causal
    row ``t`` depends on positions ``<= t`` alone (causal Sinkhorn balancing, see
    :func:`~effjax.attention.sinkhorn_attention`), so each decoded row equals the full
    causal pass's (over the prefix or any longer sequence), generation equals greedy
    re-forwarding, and a left-padded row equals the row alone. Not incremental: a step
    costs a full pass, O(L b + n L H) for ``n = L / b`` blocks. More than ``L`` tokens
    give NaN.
    """

    function = staticmethod(sinkhorn.sinkhorn_attention)
    layer_options = ("max_len", "sort_hidden", "gumbel_noise")

    block_size: int = 64
    temperature: float = 0.75
    iterations: int = 5
    sortcut_blocks: int | None = None
    max_len: int | None = None
    sort_hidden: int | None = None
    gumbel_noise: bool = False
    scale: float | None = None

    def check(self):
        check_positive("block_size", self.block_size)
        check_positive("iterations", self.iterations)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        for name in ("sortcut_blocks", "max_len", "sort_hidden"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))

    def _sort_logits(self, key, padding_mask, is_causal) -> jax.Array:
        """The sorting network's scores ``[B, K, n, n]`` (row i: the blocks i may take)."""
        length, kv_heads, head_dim = key.shape[1:]
        blocks = -(-length // self.block_size)
        max_blocks = -(-(self.max_len or length) // self.block_size)
        if blocks > max_blocks:
            raise ValueError(
                f"sinkhorn input length {length} exceeds max_len={self.max_len} "
                f"({max_blocks} blocks of {self.block_size})"
            )
        hidden = self.sort_hidden or head_dim
        w1 = self.param("sort_w1", nn.initializers.lecun_normal(), (kv_heads, head_dim, hidden))
        w2 = self.param("sort_w2", nn.initializers.lecun_normal(), (kv_heads, hidden, max_blocks))
        summaries = sinkhorn.block_summaries(
            key, block_size=self.block_size, padding_mask=padding_mask, shift=is_causal
        )
        hidden_units = jax.nn.relu(jnp.einsum("bknh,khf->bknf", summaries, w1))
        return jnp.einsum("bknf,kfm->bknm", hidden_units, w2)[..., :blocks]

    def attend(
        self, query, key, value, kwargs, *, padding_mask, global_mask, is_causal, deterministic
    ):
        rng = None
        if self.gumbel_noise and not deterministic:
            rng = attention_rng(self, deterministic)
        return sinkhorn.sinkhorn_attention(
            query,
            key,
            value,
            sort_logits=self._sort_logits(key, padding_mask, is_causal),
            rng=rng,
            padding_mask=padding_mask,
            is_causal=is_causal,
            **self.function_options(),
        )

    def decode_step(self, query, key, value, kwargs, *, padding_mask=None):
        return self.decode_by_full_pass(query, key, value, kwargs, padding_mask=padding_mask)


def _bench_flops(shape: benchspec.Shape, options) -> float:
    b = min(options["block_size"], shape.seq_len)
    blocks = -(-shape.seq_len // b)
    # Own block + sorted block per query, and the soft sort of keys and values.
    sort = 2 * 2.0 * shape.batch * shape.num_kv_heads * blocks * shape.seq_len * shape.head_dim
    return benchspec.pairs_flops(shape, 2 * b) + sort


BENCH = benchspec.BenchSpec(
    lambda rng, s: {"block_size": 64},
    _bench_flops,
    benchspec.fixed(block_size=64, temperature=0.75, iterations=5),
)

registry.attach("sinkhorn", core=SinkhornCore, bench=BENCH)
