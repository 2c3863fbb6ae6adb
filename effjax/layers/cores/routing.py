"""The core of routing attention (``attention="routing"``, Roy et al. 2021).

Half the heads (``local_heads``) attend in a sliding window and the others through
:func:`~effjax.attention.routing_attention`, as in the Routing Transformer, so every
query has an output even when no centroid routes it. The k-means centroids
``[N_r, C, H]`` live in the non-trainable ``"routing_centroids"`` collection with
their running statistics (``sums``, ``counts``) and ``decay``. In training
(``deterministic=False``), when that collection is mutable, the forward pass adds
the unit queries and keys (real tokens only) to the statistics of their nearest
centroids; :meth:`RoutingCore.upkeep` then moves each centroid by the exponential
moving average ``mu <- normalize(decay mu + (1 - decay) mean)`` and clears the
statistics, once per training step. Gradients never reach the centroids.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from effjax.layers import MultiHeadAttention
  >>> layer = MultiHeadAttention(num_heads=4, attention="routing", is_causal=True)
  >>> x = jnp.ones((1, 16, 32))
  >>> variables = layer.init(jax.random.key(0), x)
  >>> variables["routing_centroids"]["core"]["centroids"].shape  # 2 routing heads, C = 4
  (2, 4, 8)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from effjax.attention import benchspec, local_attention, registry, routing
from effjax.attention.helpers import check_positive
from effjax.layers.cores.base import AttentionCore

ROUTING_CENTROIDS = "routing_centroids"


def default_num_clusters(length: int) -> int:
    """``ceil(sqrt(T))`` clusters of ``ceil(T / C)`` tokens: O(T sqrt(T)) (Roy et al. 2021)."""
    return max(1, math.ceil(math.sqrt(length)))


def _unit_normal(rng: jax.Array, shape) -> jax.Array:
    x = jax.random.normal(rng, shape)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class RoutingCore(AttentionCore):
    """:func:`~effjax.attention.routing_attention` mixed with local heads, in a layer.

    Options: ``num_clusters`` (C, default ``ceil(sqrt(T))`` of the init input),
    ``cluster_size`` (w, default ``ceil(T / C)``), ``decay`` (0.999, the centroids'
    moving average), ``local_heads`` (heads of sliding-window attention, default half
    the heads; the others route), ``local_window`` (128 keys on each side; causal: 128
    before), ``shared_qk`` (keys are the queries, the paper's language models),
    ``scale``.

    Decoding (:meth:`~effjax.layers.cores.AttentionCore.decode_by_full_pass`): a cache of
    the ``L`` (init length) keys and values, each row's real tokens from slot 0; every
    step reruns the causal pass over the cache and returns the new tokens' rows. Causal
    routing's row ``t`` (the ``w`` latest keys ``<= t`` of its cluster) and the causal
    window depend on positions ``<= t`` and ``w`` alone, so a decoded row equals row
    ``t`` of the full causal pass over ``L`` tokens, which has ``w = cluster_size``,
    default ``ceil(L / C)``: generation equals greedy re-forwarding at the cache's length
    (with ``cluster_size`` given, at any length), and a left-padded row equals the row
    alone. Not incremental: a step costs a full pass, O(L w H). The centroids stay as
    they are (no statistics are gathered). More than ``L`` tokens give NaN.
    """

    function = staticmethod(routing.routing_attention)
    step_collections = (ROUTING_CENTROIDS,)

    num_clusters: int | None = None
    cluster_size: int | None = None
    decay: float = 0.999
    local_heads: int | None = None
    local_window: int = 128
    shared_qk: bool = False
    scale: float | None = None

    def check(self):
        if self.num_clusters is not None:
            check_positive("num_clusters", self.num_clusters)
        if self.cluster_size is not None:
            check_positive("cluster_size", self.cluster_size)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay!r}")
        if self.local_heads is not None and (
            not isinstance(self.local_heads, int) or self.local_heads < 0
        ):
            raise ValueError(f"local_heads must be an int >= 0, got {self.local_heads!r}")

    @property
    def shares_qk(self) -> bool:
        return self.shared_qk

    def _split(self, num_heads: int) -> int:
        local = num_heads // 2 if self.local_heads is None else self.local_heads
        if local >= num_heads:
            raise ValueError(f"local_heads={local} leaves no routing head of num_heads={num_heads}")
        return local

    def _centroids(self, num_heads: int, head_dim: int, length: int) -> jax.Array:
        clusters = self.num_clusters or default_num_clusters(length)
        shape = (num_heads, clusters, head_dim)
        if not self.is_initializing() and not self.has_variable(ROUTING_CENTROIDS, "centroids"):
            raise ValueError(
                f"routing attention needs the {ROUTING_CENTROIDS!r} collection returned by "
                "init; pass all variables to apply, not only params"
            )
        centroids = self.variable(
            ROUTING_CENTROIDS, "centroids", lambda: _unit_normal(self.make_rng("params"), shape)
        )
        self.variable(ROUTING_CENTROIDS, "sums", jnp.zeros, shape, jnp.float32)
        self.variable(ROUTING_CENTROIDS, "counts", jnp.zeros, shape[:2], jnp.float32)
        self.variable(ROUTING_CENTROIDS, "decay", lambda: jnp.array(self.decay, jnp.float32))
        return centroids.value

    def _gather_statistics(self, centroids, query, key, padding_mask) -> None:
        """Adds this step's routed queries and keys to the running k-means statistics."""
        vectors = jnp.concatenate([query, key], axis=1)
        valid = None
        if padding_mask is not None:
            valid = jnp.concatenate([padding_mask, padding_mask], axis=1)
        sums, counts = routing.centroid_statistics(centroids, vectors, valid)
        self.put_variable(
            ROUTING_CENTROIDS, "sums", self.get_variable(ROUTING_CENTROIDS, "sums") + sums
        )
        self.put_variable(
            ROUTING_CENTROIDS, "counts", self.get_variable(ROUTING_CENTROIDS, "counts") + counts
        )

    def attend(
        self, query, key, value, kwargs, *, padding_mask, global_mask, is_causal, deterministic
    ):
        num_heads, head_dim = query.shape[2], query.shape[3]
        groups = num_heads // key.shape[2]
        # Each query head routes (and keeps a window) on its own: key/value heads per query head.
        key = jnp.repeat(key, groups, axis=2)
        value = jnp.repeat(value, groups, axis=2)
        local = self._split(num_heads)
        centroids = self._centroids(num_heads - local, head_dim, query.shape[1])
        routed = slice(local, num_heads)
        if not deterministic and self.is_mutable_collection(ROUTING_CENTROIDS):
            self._gather_statistics(centroids, query[:, :, routed], key[:, :, routed], padding_mask)
        common = {"padding_mask": padding_mask, "is_causal": is_causal, "scale": self.scale}
        out = routing.routing_attention(
            query[:, :, routed],
            key[:, :, routed],
            value[:, :, routed],
            centroids=centroids,
            cluster_size=self.cluster_size,
            **common,
        )
        if local == 0:
            return out
        window = (self.local_window, 0 if is_causal else self.local_window)
        near = local_attention(
            query[:, :, :local],
            key[:, :, :local],
            value[:, :, :local],
            window_size=window,
            **common,
        )
        return jnp.concatenate([near, out], axis=2)

    def decode_step(self, query, key, value, kwargs, *, padding_mask=None):
        return self.decode_by_full_pass(query, key, value, kwargs, padding_mask=padding_mask)

    @classmethod
    def upkeep(cls, collections, *, rng, step, num_steps):
        """Moves every layer's centroids by its gathered statistics, then clears them."""
        if ROUTING_CENTROIDS not in collections:
            return collections

        def update(node):
            if "centroids" not in node:
                return {name: update(child) for name, child in node.items()}
            centroids = routing.apply_centroid_statistics(
                node["centroids"], node["sums"], node["counts"], decay=node["decay"]
            )
            zeros = jax.tree.map(jnp.zeros_like, {"sums": node["sums"], "counts": node["counts"]})
            return {**node, "centroids": centroids, **zeros}

        return {**collections, ROUTING_CENTROIDS: update(collections[ROUTING_CENTROIDS])}


def _bench_options(rng, shape: benchspec.Shape):
    clusters = default_num_clusters(shape.seq_len)
    return {"centroids": _unit_normal(rng, (shape.heads, clusters, shape.head_dim))}


def _bench_flops(shape: benchspec.Shape, options) -> float:
    clusters = options["centroids"].shape[1]
    size = -(-shape.seq_len // clusters)
    routing_scores = 2 * 2.0 * shape.batch * shape.heads * shape.seq_len * clusters * shape.head_dim
    # Each of the C clusters scores w x w pairs: w pairs per routed query.
    return benchspec.pairs_flops(shape, size) + routing_scores


BENCH = benchspec.BenchSpec(
    _bench_options,
    _bench_flops,
    lambda s: {"num_clusters": default_num_clusters(s.seq_len)},
)

registry.attach("routing", core=RoutingCore, bench=BENCH)
