"""The core of Synthesizer attention (``attention="synthesizer"``, Tay et al. 2021).

The core owns the synthesizer's parameters for a maximum length ``L`` (``max_len``,
default the init input's length) and ``N`` heads, ``H`` head size, ``F`` hidden units:

====================== ============================================= ====================
``kind``               params (in ``params/core``)                   count
====================== ============================================= ====================
``"dense"``            ``w1 [N,H,F]``, ``b1``, ``w2 [N,F,L]``, ``b2``  N(HF + F + FL + L)
``"factorized_dense"`` ``w1``, ``b1``, ``wa [N,F,a]``, ``ba``,        N(HF + F + F(a+b) + a + b),
                       ``wb [N,F,b]``, ``bb``                         a b >= L
``"random"``           ``table [N,L,L]``                              N L^2
``"factorized_random"`` ``r1, r2 [N,L,k]``                            2 N L k
====================== ============================================= ====================

``trainable=False`` keeps a random table in the non-trainable ``"synthesizer"``
collection instead (the paper's fixed random synthesizer). ``mixture`` adds the
dot-product logits with a learned weight (param ``alpha``, initialised to 1).
The dense kinds read each token from its query projection; the random kinds without
``mixture`` read no query or key, so the layer builds no query/key projections.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from effjax.attention import benchspec, registry
from effjax.attention import synthesizer as synth
from effjax.attention.helpers import check_positive
from effjax.layers.cores.base import AttentionCore

KINDS = ("dense", "factorized_dense", "random", "factorized_random")
SYNTHESIZER = "synthesizer"


class SynthesizerCore(AttentionCore):
    """:func:`~effjax.attention.synthesizer_attention` with its parameters.

    Options: ``kind`` ("dense"), ``max_len`` (default the init length), ``hidden``
    (F, default the head size), ``rank`` (k = 8, factorized random), ``trainable``
    (True; False: a fixed random table), ``mixture`` (False; True: plus learned-weight
    dot-product logits), ``scale``.

    Decoding: a cache of the ``L`` (init length, at most ``max_len``) keys and values,
    each row's real tokens from slot 0 (:meth:`~effjax.layers.cores.AttentionCore.pack_cache`).
    A new token at slot ``p`` of its row takes its logits row from its own query (dense
    kinds) or from row ``p`` of the table (random kinds), over the columns ``0 .. p`` of
    the row's cached keys, plus the dot products with them (``mixture``): exactly row
    ``p`` of the full causal pass, which depends on tokens ``<= p`` alone. So generation
    equals greedy re-forwarding and a left-padded row equals the row alone; a step costs
    O(L) per head, as dense attention's cache. More than ``L`` tokens give NaN.
    """

    function = staticmethod(synth.synthesizer_attention)

    kind: str = "dense"
    max_len: int | None = None
    hidden: int | None = None
    rank: int = 8
    trainable: bool = True
    mixture: bool = False
    scale: float | None = None

    def check(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        check_positive("rank", self.rank)
        for name in ("max_len", "hidden"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if not self.trainable and self.kind not in ("random", "factorized_random"):
            raise ValueError(f"trainable=False is for the random kinds, got kind={self.kind!r}")

    @property
    def uses_query_key(self) -> bool:
        # The random kinds without the dot-product mixture read neither (only shapes).
        return self.mixture or self.kind not in ("random", "factorized_random")

    def _table(self, name: str, shape) -> jax.Array:
        init = nn.initializers.normal(1.0)
        if self.trainable:
            return self.param(name, init, shape)
        return self.variable(SYNTHESIZER, name, lambda: init(self.make_rng("params"), shape)).value

    def _logits(self, query: jax.Array, kv_len: int, positions: jax.Array | None = None):
        """Synthetic logits of ``query``'s tokens over ``kv_len`` keys; the random kinds
        take their rows at ``positions`` (int ``[B, T]``) when given (decoding)."""
        heads, head_dim = query.shape[2:]
        max_len = self.max_len or kv_len
        hidden = self.hidden or head_dim
        dense = nn.initializers.lecun_normal(batch_axis=(0,))
        zeros = nn.initializers.zeros
        q_len = query.shape[1]
        if self.kind == "random":
            table = self._table("table", (heads, max_len, max_len))
            return synth.random_synthesizer_logits(
                table, q_len=q_len, kv_len=kv_len, positions=positions
            )
        if self.kind == "factorized_random":
            r1 = self._table("r1", (heads, max_len, self.rank))
            r2 = self._table("r2", (heads, max_len, self.rank))
            return synth.factorized_random_logits(
                r1, r2, q_len=q_len, kv_len=kv_len, positions=positions
            )
        w1 = self.param("w1", dense, (heads, head_dim, hidden))
        b1 = self.param("b1", zeros, (heads, hidden))
        if self.kind == "dense":
            w2 = self.param("w2", dense, (heads, hidden, max_len))
            b2 = self.param("b2", zeros, (heads, max_len))
            return synth.dense_synthesizer_logits(query, w1, b1, w2, b2, kv_len=kv_len)
        a = math.ceil(math.sqrt(max_len))
        b = math.ceil(max_len / a)
        wa, ba = self.param("wa", dense, (heads, hidden, a)), self.param("ba", zeros, (heads, a))
        wb, bb = self.param("wb", dense, (heads, hidden, b)), self.param("bb", zeros, (heads, b))
        return synth.factorized_dense_logits(query, w1, b1, wa, ba, wb, bb, kv_len=kv_len)

    def prepare(self, query, key, value, deterministic):
        # The synthetic logits depend on the keys' length: made by attend / decode_step.
        options = {"scale": self.scale} if self.scale is not None else {}
        alpha = 0.0
        if self.mixture:
            alpha = jnp.abs(self.param("alpha", nn.initializers.ones, ()))
        return {**options, "dot_product_weight": alpha}

    def attend(
        self, query, key, value, kwargs, *, padding_mask, global_mask, is_causal, deterministic
    ):
        kwargs = {**kwargs, "synthetic_logits": self._logits(query, key.shape[1])}
        return super().attend(
            query,
            key,
            value,
            kwargs,
            padding_mask=padding_mask,
            global_mask=global_mask,
            is_causal=is_causal,
            deterministic=deterministic,
        )

    def decode_step(self, query, key, value, kwargs, *, padding_mask=None):
        cache = self.pack_cache(key, value, padding_mask)
        if cache is None:
            return self.attend_causally(query, key, value, kwargs, padding_mask)
        length = cache.valid.shape[1]
        # Query t (slot p_t of its row) sees the row's written slots <= p_t.
        seen = jnp.arange(length)[None, None, :] <= cache.positions[:, :, None]
        out = synth.synthesizer_attention(
            query,
            cache.key,
            cache.value,
            synthetic_logits=self._logits(query, length, cache.positions),
            mask=(seen & cache.valid[:, None, :])[:, None],
            **kwargs,
        )
        return self.poison_if_full(out, cache.full)


def _bench_options(rng, shape: benchspec.Shape):
    return {
        "synthetic_logits": jax.random.normal(rng, (1, shape.heads, shape.seq_len, shape.seq_len))
    }


BENCH = benchspec.BenchSpec(
    _bench_options,
    # Softmax(B) V: only the PV product over every key (no QK^T).
    lambda s, o: benchspec.pairs_flops(s, s.seq_len) / 2,
    benchspec.fixed(kind="random"),
)

registry.attach("synthesizer", core=SynthesizerCore, bench=BENCH)
