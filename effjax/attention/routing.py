r"""Routing attention (Roy, Saffar, Vaswani & Grangier, 2021, "Efficient Content-Based
Sparse Attention with Routing Transformers").

Queries and keys are routed to ``C`` centroids learned by online (spherical) k-means.
Each centroid takes its ``w`` nearest queries and its ``w`` nearest keys (balanced
clusters, ``w = ceil(T / C)`` by default, by unit-vector dot product), and the queries
of a cluster attend to the keys of that cluster. With ``C = sqrt(T)`` this costs
O(T sqrt(T)) time and memory instead of O(T^2).

A query chosen by several centroids combines its clusters by their log-sum-exps, each
logit first lowered by ``log`` of the number of its clusters that also hold that key, so
the result is exactly dense attention under the *cluster mask* ``M[t, s] = 1`` iff some
centroid chose both ``t`` and ``s`` (see :func:`routing_clusters`). A query that no
centroid chose gets zeros (the paper mixes in local-attention heads; the layer does too).

Causal mode cannot take a top-w over all positions (a later token could then change
which earlier tokens share a cluster). Each token goes to its nearest centroid instead,
and query ``t`` attends to the ``w`` most recent keys ``s <= t`` of its own cluster: a
per-cluster sliding window, decided by the prefix alone, O(T w H) time and memory.

The centroids are not trained by gradients: :func:`update_centroids` moves them by an
exponential moving average of the vectors assigned to them (the paper's Sec. 4.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention import _blockwise, _common

_BITS = 32  # cluster-membership bits per uint32 word


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def _check_centroids(centroids, num_heads: int, head_dim: int) -> jax.Array:
    """``[C, H]`` (shared by all heads) or ``[N, C, H]`` -> float32 ``[N, C, H]``."""
    shape = tuple(jnp.shape(centroids))
    ok = (len(shape) == 2 or (len(shape) == 3 and shape[0] == num_heads)) and shape[-1] == head_dim
    if not ok or shape[-2] == 0:
        raise ValueError(
            f"centroids must have shape [C, H] or [N, C, H] with N = {num_heads}, "
            f"H = {head_dim}, C > 0, got {shape}"
        )
    centroids = jnp.asarray(centroids, jnp.float32)
    return jnp.broadcast_to(centroids, (num_heads, *shape[-2:]))


def _per_query_head(query, key, value=None):
    """Checks shapes and repeats key/value heads to the N query heads (each query head
    routes with its own centroids, so its keys are sorted for it alone)."""
    dims = _common.check_qkv(query, key, key if value is None else value)
    repeat = lambda x: None if x is None else jnp.repeat(x, dims.groups, axis=2)  # noqa: E731
    return dims, repeat(key), repeat(value)


def _top_members(x: jax.Array, centroids: jax.Array, size: int, valid: jax.Array | None):
    """The ``size`` tokens of ``x [B, L, N, H]`` nearest to each centroid: int32
    ``[B, N, C, size]``. Invalid tokens rank last, whatever their contents."""
    scores = jnp.einsum("blnh,nch->bncl", _unit(jax.lax.stop_gradient(x)), centroids)
    if valid is not None:
        scores = jnp.where(valid[:, None, None, :], scores, -2.0)  # unit dot products >= -1
    return jax.lax.top_k(scores, size)[1].astype(jnp.int32)


def _resolve_cluster_size(cluster_size: int | None, length: int, num_clusters: int) -> int:
    if cluster_size is None:
        return -(-length // num_clusters)
    return min(_common.check_positive("cluster_size", cluster_size), length)


def routing_clusters(
    query: jax.Array,
    key: jax.Array,
    *,
    centroids: jax.Array,
    cluster_size: int | None = None,
    padding_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The tokens each centroid routes: its ``w`` nearest queries and keys.

    Nearness is the dot product of unit vectors (spherical k-means). Padded positions
    (``padding_mask`` False) rank last for both queries and keys. Query head ``n`` uses
    centroids ``n`` and the keys of its key/value head.

    Args:
      query: ``[B, T, N, H]``; key: ``[B, T, K, H]`` (self-attention).
      centroids: ``[C, H]`` or ``[N, C, H]``.
      cluster_size: w, default ``ceil(T / C)`` (clipped to T).
      padding_mask: bool ``[B, T]``.

    Returns:
      ``(query_index, key_index)``, int32 ``[B, N, C, w]`` each: the positions in cluster c.

    Example:
      >>> import jax
      >>> x = jax.random.normal(jax.random.key(0), (1, 16, 2, 8))
      >>> mu = jax.random.normal(jax.random.key(1), (4, 8))
      >>> qi, ki = routing_clusters(x, x, centroids=mu)
      >>> qi.shape
      (1, 2, 4, 4)
    """
    dims, key, _ = _per_query_head(query, key)
    _common.check_self_attention("routing_clusters", query, key, dims)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    centroids = _check_centroids(centroids, dims.num_heads, dims.head_dim)
    size = _resolve_cluster_size(cluster_size, dims.kv_len, centroids.shape[1])
    return (
        _top_members(query, centroids, size, padding_mask),
        _top_members(key, centroids, size, padding_mask),
    )


def _membership_bits(index: jax.Array, length: int) -> jax.Array:
    """Cluster membership packed in bits: ``index [B, N, C, w]`` -> uint32 ``[B, N, L, W]``,
    bit ``c % 32`` of word ``c // 32`` set when position l is in cluster c."""
    b, n, c, _ = index.shape
    words = -(-c // _BITS)
    member = jnp.zeros((b, n, words * _BITS, length), jnp.uint32)
    bi, ni, ci = np.ix_(np.arange(b), np.arange(n), np.arange(c))
    member = member.at[bi[..., None], ni[..., None], ci[..., None], index].set(1)
    member = member.reshape(b, n, words, _BITS, length)
    shifts = jnp.arange(_BITS, dtype=jnp.uint32)[None, None, None, :, None]
    return jnp.sum(member << shifts, axis=3, dtype=jnp.uint32).transpose(0, 1, 3, 2)


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x [B, N, L, ...]`` at ``index [B, N, C, w]`` -> ``[B, N, C, w, ...]``."""
    b, n, c, w = index.shape
    flat = index.reshape(b, n, c * w)
    flat = flat.reshape(b, n, c * w, *([1] * (x.ndim - 3)))
    return jnp.take_along_axis(x, flat, axis=2).reshape(b, n, c, w, *x.shape[3:])


def routing_assignments(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Nearest centroid of every vector (unit-vector dot product): ``x [B, L, N, H]``,
    centroids ``[C, H]`` or ``[N, C, H]`` -> int32 ``[B, N, L]``. The causal routing."""
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must have rank 4 [B, L, N, H], got shape {jnp.shape(x)}")
    mu = _check_centroids(centroids, x.shape[2], x.shape[3])
    scores = jnp.einsum("blnh,nch->bncl", _unit(jax.lax.stop_gradient(x)), mu)
    return jnp.argmax(scores, axis=2).astype(jnp.int32)


def _causal_routing(query, key, value, centroids, window, padding_mask, scale):
    """Query t attends to the ``window`` latest keys s <= t of its own cluster.

    Keys sorted by (cluster, position) put those keys just before the query's insertion
    point (its cluster, its position), so each query gathers one contiguous run of
    ``window`` sorted keys. ``query [B,T,N,H]``, ``key/value [B,T,N,*]`` (heads repeated).
    """
    b, length, n, _ = query.shape
    num_clusters = centroids.shape[1]
    q_cluster = routing_assignments(query, centroids)
    k_cluster = routing_assignments(key, centroids)
    if padding_mask is not None:  # padded keys: a cluster of their own, seen by no query
        k_cluster = jnp.where(padding_mask[:, None], k_cluster, num_clusters)
    positions = jnp.arange(length, dtype=jnp.int32)[None, None]
    k_code = k_cluster * length + positions
    order = jnp.argsort(k_code, axis=-1).astype(jnp.int32)
    sorted_code = jnp.take_along_axis(k_code, order, axis=-1)
    q_code = q_cluster * length + positions
    search = jax.vmap(jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right")))
    end = search(sorted_code, q_code)  # [B, N, T]: sorted keys before it are < or = code
    slots = end[..., None] - window + jnp.arange(window, dtype=jnp.int32)[None, None, None]
    in_range = slots >= 0
    slots = jnp.maximum(slots, 0)
    key_pos = jnp.take_along_axis(order, slots.reshape(b, n, -1), axis=-1).reshape(slots.shape)
    same = jnp.take_along_axis(k_cluster, key_pos.reshape(b, n, -1), axis=-1).reshape(slots.shape)
    mask = in_range & (same == q_cluster[..., None])

    def rows(x):  # [B, T, N, D] at key_pos -> [B, N, T, w, D]
        x = x.transpose(0, 2, 1, 3)
        flat = key_pos.reshape(b, n, -1, 1)
        return jnp.take_along_axis(x, flat, axis=2).reshape(*key_pos.shape, x.shape[-1])

    q = query.transpose(0, 2, 1, 3).astype(jnp.float32)
    logits = jnp.einsum("bnth,bntjh->bntj", q, rows(key).astype(jnp.float32)) * scale
    weights, _ = _blockwise.softmax_with_lse(logits, mask)
    out = jnp.einsum("bntj,bntjh->bnth", weights, rows(value).astype(jnp.float32))
    return out.transpose(0, 2, 1, 3)


def routing_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    centroids: jax.Array,
    cluster_size: int | None = None,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    r"""Routing attention (Roy et al. 2021): attention inside balanced k-means clusters.

    With ``Q_c, K_c`` the ``w`` queries and keys centroid ``c`` routes
    (:func:`routing_clusters`), query ``t`` computes

    .. math::

      \mathrm{out}_t = \sum_{s \in \cup_{c: t \in Q_c} K_c} \mathrm{softmax}_s(s\,q_t k_s^T)\, v_s

    (restricted to real keys): exactly
    :func:`~effjax.attention.dot_product_attention` with the cluster mask
    ``M[t, s] = OR_c [t in Q_c and s in K_c]``. Time and memory O(T w H + T C), i.e.
    O(T sqrt(T)) for ``C = sqrt(T)`` and ``w = T / C``; never a ``[T, T]`` array.

    Causal mode routes each token to its nearest centroid (:func:`routing_assignments`)
    and query ``t`` attends to the ``w`` most recent keys ``s <= t`` of its own cluster:
    exactly dense attention under that mask, decided by positions ``<= t`` alone (no
    causal leak), O(T w H) time and memory.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, T, K, H]``, K divides N (self-attention: S = T). Pass the query as the
        key for the paper's shared-QK language models.
      value: ``[B, T, K, Hv]``.
      centroids: ``[C, H]`` or ``[N, C, H]``, the k-means centroids (see
        :func:`update_centroids`); no gradient flows into them.
      cluster_size: w, tokens per cluster (causal: keys per query); default ``ceil(T / C)``.
      padding_mask: bool ``[B, T]``, True = a real token; padded keys are never attended
        and padded positions are routed last.
      is_causal: query t sees keys s <= t only.
      scale: logit scale, default ``1 / sqrt(H)``.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype`` (float32 logits and softmax). Queries in no
      cluster, or whose clusters hold no visible key, return zeros.

    Raises:
      ValueError: bad shapes, T != S, centroids of the wrong shape, cluster_size <= 0.

    Example:
      >>> import jax
      >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 64, 2, 8))
      >>> mu = jax.random.normal(jax.random.key(1), (2, 8, 8))  # N=2 heads, C=8
      >>> routing_attention(q, k, v, centroids=mu, is_causal=True).shape
      (1, 64, 2, 8)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims, key_n, value_n = _per_query_head(query, key, value)
    _common.check_self_attention("routing_attention", query, key, dims)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    if dims.empty:
        return _common.zeros_output(dims, value)
    if is_causal:
        mu = _check_centroids(centroids, dims.num_heads, dims.head_dim)
        window = _resolve_cluster_size(cluster_size, dims.q_len, mu.shape[1])
        scale = _common.resolve_scale(scale, dims.head_dim)
        out = _causal_routing(query, key_n, value_n, mu, window, padding_mask, scale)
        return out.astype(value.dtype)
    q_idx, k_idx = routing_clusters(
        query, key, centroids=centroids, cluster_size=cluster_size, padding_mask=padding_mask
    )
    length = dims.q_len
    q = _gather(query.transpose(0, 2, 1, 3), q_idx).astype(jnp.float32)  # [B,N,C,w,H]
    k = _gather(key_n.transpose(0, 2, 1, 3), k_idx).astype(jnp.float32)
    v = _gather(value_n.transpose(0, 2, 1, 3), k_idx).astype(jnp.float32)

    # A key shared by several of the query's clusters would be counted once per cluster
    # when the clusters are merged; lowering its logit by log(count) counts it once.
    q_bits = _gather(_membership_bits(q_idx, length), q_idx)  # [B,N,C,w,W]
    k_bits = _gather(_membership_bits(k_idx, length), k_idx)
    shared = q_bits[:, :, :, :, None, :] & k_bits[:, :, :, None, :, :]
    count = jnp.sum(jax.lax.population_count(shared), axis=-1).astype(jnp.float32)

    logits = jnp.einsum("bncih,bncjh->bncij", q, k) * _common.resolve_scale(scale, dims.head_dim)
    logits = logits - jnp.log(jnp.maximum(count, 1.0))
    mask = jnp.ones(logits.shape, bool)
    if padding_mask is not None:
        key_real = _gather(
            jnp.broadcast_to(padding_mask[:, None], (dims.batch, dims.num_heads, length)), k_idx
        )
        mask = mask & key_real[:, :, :, None, :]
    weights, lse = _blockwise.softmax_with_lse(logits, mask)
    out = jnp.einsum("bncij,bncjh->bncih", weights, v)

    # Merge each query's clusters: out_t = sum_c exp(lse_c - L_t) out_c, L_t = logsumexp_c.
    b, n, c, w = q_idx.shape
    pos = q_idx.reshape(b, n, c * w)
    lse = lse.reshape(b, n, c * w)
    out = out.reshape(b, n, c * w, -1)
    bi, ni = np.ix_(np.arange(b), np.arange(n))
    bi, ni = bi[..., None], ni[..., None]
    row_max = jnp.full((b, n, length), _common.MASK_VALUE, jnp.float32).at[bi, ni, pos].max(lse)
    weight = jnp.exp(lse - jax.lax.stop_gradient(row_max)[bi, ni, pos])
    total = jnp.zeros((b, n, length), jnp.float32).at[bi, ni, pos].add(weight)
    merged = jnp.zeros((b, n, length, out.shape[-1]), jnp.float32)
    merged = merged.at[bi, ni, pos].add(weight[..., None] * out)
    has = total > 0
    merged = merged / jnp.where(has, total, 1.0)[..., None]
    return merged.transpose(0, 2, 1, 3).astype(value.dtype)


def centroid_statistics(
    centroids: jax.Array, vectors: jax.Array, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Sums and counts of the unit vectors nearest to each centroid (one k-means E-step).

    Args:
      centroids: ``[C, H]`` (shared by all heads) or ``[N, C, H]``.
      vectors: ``[B, L, N, H]``.
      valid: optional bool ``[B, L]``; invalid vectors are not counted.

    Returns:
      float32 ``sums`` shaped like ``centroids`` and ``counts`` ``[C]`` or ``[N, C]``.
    """
    if jnp.ndim(vectors) != 4:
        raise ValueError(f"vectors must have rank 4 [B, L, N, H], got shape {jnp.shape(vectors)}")
    batch, length, num_heads, head_dim = vectors.shape
    mu = _check_centroids(centroids, num_heads, head_dim)
    x = _unit(jax.lax.stop_gradient(vectors))
    nearest = jnp.argmax(jnp.einsum("blnh,nch->blnc", x, mu), axis=-1)
    assign = jax.nn.one_hot(nearest, mu.shape[1], dtype=jnp.float32)  # [B, L, N, C]
    if valid is not None:
        valid = _common.check_token_mask("valid", valid, batch, length, "L")
        assign = assign * valid[:, :, None, None].astype(jnp.float32)
    sums = jnp.einsum("blnc,blnh->nch", assign, x)
    counts = jnp.sum(assign, axis=(0, 1))
    if jnp.ndim(centroids) == 2:
        return sums.sum(0), counts.sum(0)
    return sums, counts


def apply_centroid_statistics(
    centroids: jax.Array, sums: jax.Array, counts: jax.Array, *, decay: float | jax.Array
) -> jax.Array:
    """One online spherical k-means M-step: ``mu_c <- normalize(decay mu_c + (1 - decay) m_c)``
    with ``m_c = sums_c / counts_c``; a centroid with no count keeps its value."""
    mu = jnp.asarray(centroids, jnp.float32)
    counts = counts[..., None]
    moved = decay * mu + (1.0 - decay) * sums / jnp.maximum(counts, 1.0)
    return jnp.where(counts > 0, _unit(moved), mu).astype(jnp.asarray(centroids).dtype)


def update_centroids(
    centroids: jax.Array,
    vectors: jax.Array,
    *,
    decay: float = 0.999,
    valid: jax.Array | None = None,
) -> jax.Array:
    r"""One online spherical k-means step: ``mu_c <- normalize(decay mu_c + (1 - decay) m_c)``.

    ``m_c`` is the mean of the unit vectors whose nearest centroid is ``c`` (the paper's
    exponential moving average of the queries and keys routed to a centroid, Roy et al.
    2021, Sec. 4.1); a centroid that got no vector keeps its value.
    :func:`centroid_statistics` then :func:`apply_centroid_statistics` (a layer gathers
    the statistics in its forward pass and applies them once per training step).

    Args:
      centroids: ``[C, H]`` (shared by all heads) or ``[N, C, H]``.
      vectors: ``[B, L, N, H]``, e.g. the queries and keys of a step concatenated on L.
      decay: in [0, 1).
      valid: optional bool ``[B, L]``; invalid vectors are ignored.

    Returns:
      the new centroids, same shape and dtype as ``centroids``, unit norm.

    Example:
      >>> import jax.numpy as jnp
      >>> mu = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> x = jnp.array([[1.0, 1.0]]).reshape(1, 1, 1, 2)
      >>> [[round(float(a), 3) for a in row] for row in update_centroids(mu, x, decay=0.0)]
      [[0.707, 0.707], [0.0, 1.0]]
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    sums, counts = centroid_statistics(centroids, vectors, valid)
    return apply_centroid_statistics(centroids, sums, counts, decay=decay)
