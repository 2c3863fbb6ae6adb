r"""Sparse Sinkhorn attention (Tay, Bahri, Yang, Metzler & Juan, 2020, "Sparse Sinkhorn
Attention").

The sequence is cut into ``n = ceil(T / b)`` blocks of ``b`` tokens. A sorting network
scores every pair of blocks, ``R [n, n]``, and Sinkhorn balancing (alternate row and
column normalisation in log space, ``iterations`` times, of ``R / temperature``) turns it
into a soft block permutation ``P`` (doubly stochastic). The keys and values are sorted
block-wise by ``P``: slot ``r`` of sorted block ``i`` is ``sum_j P_ij K_{j,r}``. Query
block ``i`` attends to its own block (local attention) and to sorted block ``i``:
O(T b) time and memory for the attention, O(n^2) for the sort.

Causal mode (causal Sinkhorn balancing: no block's sort sees the future): block ``i``
may only be sorted with earlier blocks ``j < i``, its sort scores only see earlier
blocks, and the column step of the balancing normalises row ``i`` over rows ``<= i``
only (a plain column sum would mix in the rows of later blocks, whose scores see tokens
after block ``i``). So query ``t`` depends on positions ``<= t`` alone, whatever the
sequence length: the full pass over a prefix gives the same rows, which makes cached
decoding exact. SortCut truncation: every query attends to the first ``k`` sorted
blocks only (O(T k b), no local part, not causal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention import _blockwise, _common


def sinkhorn_normalize(
    log_alpha: jax.Array,
    *,
    iterations: int,
    mask: jax.Array | None = None,
    causal: bool = False,
):
    """Sinkhorn balancing of ``exp(log_alpha)`` over the last two axes, in log space.

    Alternately normalises rows and columns ``iterations`` times (Sinkhorn 1964;
    Mena et al. 2018). Entries where ``mask`` is False are held at 0; a row or column
    with no allowed entry stays all 0. With ``causal``, the column step divides entry
    ``(i, j)`` by the sum of column ``j`` over rows ``<= i`` only, so row ``i`` of the
    result depends on rows ``<= i`` of ``log_alpha`` alone (causal Sinkhorn balancing).

    Args:
      log_alpha: float ``[..., n, n]``.
      iterations: >= 1 row-and-column rounds.
      mask: optional bool broadcastable to ``log_alpha``.
      causal: cumulative column sums (rows ``<= i``) instead of full ones.

    Returns:
      float32 ``[..., n, n]``, non-negative, rows summing to 1 (approximately after the
      last column step; exactly doubly stochastic in the limit).

    Example:
      >>> import jax.numpy as jnp
      >>> p = sinkhorn_normalize(jnp.array([[2.0, 0.0], [0.0, 1.0]]), iterations=20)
      >>> [round(float(x), 3) for x in p.sum(0)]
      [1.0, 1.0]
    """
    iterations = _common.check_positive("iterations", iterations)
    x = log_alpha.astype(jnp.float32)
    allowed = jnp.ones(x.shape, bool) if mask is None else jnp.broadcast_to(mask, x.shape)
    x = jnp.where(allowed, x, _common.MASK_VALUE)
    for _ in range(iterations):
        x = jnp.where(allowed, x - jax.nn.logsumexp(x, axis=-1, keepdims=True), x)
        if causal:
            columns = jax.lax.cumlogsumexp(x, axis=x.ndim - 2)
        else:
            columns = jax.nn.logsumexp(x, axis=-2, keepdims=True)
        x = jnp.where(allowed, x - columns, x)
    return jnp.where(allowed, jnp.exp(x), 0.0)


def _blocks(x: jax.Array, num_blocks: int, block_size: int) -> jax.Array:
    """``[B, L, ...]`` padded to ``n b`` -> ``[B, n, b, ...]``."""
    x = _common.pad_axis(x, 1, num_blocks * block_size)
    return x.reshape(x.shape[0], num_blocks, block_size, *x.shape[2:])


def _summaries(x: jax.Array, valid: jax.Array, shift: bool) -> jax.Array:
    """Mean of the valid tokens of ``x [B, n, b, K, H]``: per block, or with ``shift`` over
    all blocks before each one (causal: block i's summary sees blocks < i). ``[B, K, n, H]``."""
    w = valid.astype(jnp.float32)
    sums = jnp.einsum("bnrkh,bnr->bknh", x.astype(jnp.float32), w)
    counts = jnp.sum(w, axis=2)[:, None, :, None]
    if shift:
        sums = jnp.cumsum(sums, axis=2) - sums
        counts = jnp.cumsum(counts, axis=2) - counts
    return sums / jnp.maximum(counts, 1.0)


def block_summaries(
    x: jax.Array,
    *,
    block_size: int,
    padding_mask: jax.Array | None = None,
    shift: bool = False,
) -> jax.Array:
    """Mean of the real tokens of each block of ``x [B, L, K, H]`` -> float32 ``[B, K, n, H]``;
    with ``shift``, the mean over all blocks before each one (zeros for block 0), so a
    causal sorting network never reads the block it sorts for."""
    block_size = _common.check_positive("block_size", block_size)
    batch, length = x.shape[:2]
    valid = jnp.ones((batch, length), bool) if padding_mask is None else padding_mask
    num_blocks = -(-length // block_size)
    blocks = _blocks(x, num_blocks, block_size)
    return _summaries(blocks, _blocks(valid, num_blocks, block_size), shift)


def default_sort_logits(
    query: jax.Array,
    key: jax.Array,
    *,
    block_size: int,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    """A parameter-free sorting network: ``R_ij = s <mean query of block i, mean key of
    block j>`` over real tokens (averaged over the query heads that share a key head).

    Causal: row ``i`` uses the mean query of blocks ``< i`` (block ``i`` itself holds later
    tokens than its first queries), and only columns ``j < i`` are used, so no score that
    block ``i`` depends on sees block ``i`` or later.
    ``query [B, T, N, H]``, ``key [B, T, K, H]`` -> float32 ``[B, K, n, n]``. A learned
    sorting network (as in the paper) passes its own ``sort_logits`` instead.
    """
    dims = _common.check_qkv(query, key, key)
    block_size = _common.check_positive("block_size", block_size)
    valid = jnp.ones((dims.batch, dims.kv_len), bool)
    if padding_mask is not None:
        valid = _common.check_padding_mask(padding_mask, dims)
    num_blocks = -(-dims.kv_len // block_size)
    valid = _blocks(valid, num_blocks, block_size)
    q = jnp.mean(_common.group_heads(query, dims.num_kv_heads).astype(jnp.float32), axis=3)
    q_sum = _summaries(_blocks(q, num_blocks, block_size), valid, is_causal)
    k_sum = _summaries(_blocks(key, num_blocks, block_size), valid, False)
    return jnp.einsum("bkih,bkjh->bkij", q_sum, k_sum) * _common.resolve_scale(scale, dims.head_dim)


def _sort_blocks(perm: jax.Array, x: jax.Array, valid: jax.Array):
    """Soft block sort ``sum_j P_ij x_j`` over the real tokens of each slot, renormalised.

    ``perm [B, K, n, n]``, ``x [B, n, b, K, D]``, ``valid [B, n, b]`` -> the sorted blocks
    ``[B, n, b, K, D]`` and which sorted slots hold any real token ``[B, n, b, K]``.
    """
    weights = perm[:, :, :, :, None] * valid.astype(jnp.float32)[:, None, None]  # [B,K,i,j,r]
    total = jnp.einsum("bkijr->birk", weights)
    mixed = jnp.einsum("bkijr,bjrkd->birkd", weights, x.astype(jnp.float32))
    has = total > 0
    return mixed / jnp.where(has, total, 1.0)[..., None], has


def sinkhorn_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    block_size: int = 64,
    sort_logits: jax.Array | None = None,
    temperature: float = 0.75,
    iterations: int = 5,
    sortcut_blocks: int | None = None,
    rng: jax.Array | None = None,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    r"""Sparse Sinkhorn attention (Tay et al. 2020).

    With ``P = sinkhorn(R / temperature)`` (``R`` = ``sort_logits``, plus Gumbel noise
    when ``rng`` is given) the sorted keys are :math:`\tilde K_{i,r} = \sum_j P_{ij} m_{j,r}
    K_{j,r} / \sum_j P_{ij} m_{j,r}` (likewise values; ``m`` marks real keys, so padded keys
    never enter), and query ``t`` in block ``i`` computes

    .. math:: \mathrm{softmax}\big(s\, q_t [K_i ; \tilde K_i]^T\big) [V_i ; \tilde V_i]

    over its own block (causally masked when ``is_causal``) and sorted block ``i``. Causal:
    ``P_ij = 0`` for ``j >= i``, so sorted block ``i`` mixes only earlier blocks, and the
    balancing's column sums for row ``i`` run over rows ``<= i`` (``sinkhorn_normalize(...,
    causal=True)``): query ``t`` depends on positions ``<= t`` alone, not on ``T``. With
    ``sortcut_blocks = k`` every query instead attends to sorted blocks ``0 .. k-1``.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, T, K, H]``, K divides N (self-attention: S = T).
      value: ``[B, T, K, Hv]``.
      block_size: b > 0; any T works (the last block is padded internally).
      sort_logits: ``R``, float ``[B or 1, K or 1, n, n]`` with ``n = ceil(T / b)``, from a
        sorting network; default :func:`default_sort_logits` (block-summary dot products).
      temperature: > 0, Sinkhorn temperature (paper 0.75).
      iterations: Sinkhorn rounds (>= 1).
      sortcut_blocks: SortCut truncation ``k`` (1 <= k <= n), non-causal only.
      rng: optional PRNG key for Gumbel noise on ``R`` (Gumbel-Sinkhorn, in training).
      padding_mask: bool ``[B, T]``, True = a real key.
      is_causal: causal Sinkhorn attention (query t sees only keys <= t).
      scale: logit scale, default ``1 / sqrt(H)``.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype`` (float32 logits and softmax); a query that sees
      no real key returns zeros.

    Raises:
      ValueError: bad shapes, T != S, ``sort_logits`` of the wrong shape, temperature <= 0,
        a bad ``sortcut_blocks``, or SortCut with ``is_causal``.

    Example:
      >>> import jax
      >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 50, 2, 8))
      >>> sinkhorn_attention(q, k, v, block_size=8, is_causal=True).shape
      (1, 50, 2, 8)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    _common.check_self_attention("sinkhorn_attention", query, key, dims)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    block_size = _common.check_positive("block_size", block_size)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    num_blocks = -(-dims.kv_len // block_size)
    if sortcut_blocks is not None:
        if is_causal:
            raise ValueError(
                "sortcut_blocks is not causal: SortCut lets every query see the first sorted "
                "blocks, which mix all positions; use is_causal=False or sortcut_blocks=None"
            )
        sortcut_blocks = _common.check_positive("sortcut_blocks", sortcut_blocks)
        if sortcut_blocks > num_blocks:
            raise ValueError(
                f"sortcut_blocks={sortcut_blocks} exceeds the {num_blocks} blocks of "
                f"T={dims.kv_len} with block_size={block_size}"
            )
    if sort_logits is None:
        sort_logits = default_sort_logits(
            query, key, block_size=block_size, padding_mask=padding_mask,
            is_causal=is_causal, scale=scale,
        )  # fmt: skip
    sort_shape = tuple(jnp.shape(sort_logits))
    if (
        len(sort_shape) != 4
        or sort_shape[2:] != (num_blocks, num_blocks)
        or not (sort_shape[0] in (1, dims.batch) and sort_shape[1] in (1, dims.num_kv_heads))
    ):
        raise ValueError(
            f"sort_logits must have shape [B or 1, K or 1, n, n] with B={dims.batch}, "
            f"K={dims.num_kv_heads}, n={num_blocks} (T={dims.kv_len}, block_size="
            f"{block_size}), got {sort_shape}"
        )
    logits = jnp.broadcast_to(
        jnp.asarray(sort_logits, jnp.float32),
        (dims.batch, dims.num_kv_heads, num_blocks, num_blocks),
    )
    if rng is not None:
        logits = logits + jax.random.gumbel(rng, logits.shape, jnp.float32)
    block_mask = None
    if is_causal:  # block i may only be sorted with earlier blocks
        block_mask = jnp.asarray(np.tri(num_blocks, k=-1, dtype=bool))
    perm = sinkhorn_normalize(
        logits / temperature, iterations=iterations, mask=block_mask, causal=is_causal
    )

    valid = jnp.ones((dims.batch, dims.kv_len), bool)
    if padding_mask is not None:
        valid = padding_mask
    valid = _blocks(valid, num_blocks, block_size)  # padding of the last block: False
    k_blocks = _blocks(key, num_blocks, block_size)
    v_blocks = _blocks(value, num_blocks, block_size)
    sorted_k, sorted_valid = _sort_blocks(perm, k_blocks, valid)
    sorted_v, _ = _sort_blocks(perm, v_blocks, valid)
    q_blocks = _blocks(_common.group_heads(query, dims.num_kv_heads), num_blocks, block_size)
    scale = _common.resolve_scale(scale, dims.head_dim)

    def flat(x):  # [B, k, b, ...] -> [B, 1, k b, ...]
        return x.reshape(x.shape[0], 1, -1, *x.shape[3:])

    if sortcut_blocks is not None:
        keys = flat(sorted_k[:, :sortcut_blocks])
        values = flat(sorted_v[:, :sortcut_blocks])
        seen = flat(sorted_valid[:, :sortcut_blocks])  # [B, 1, k b, K]
        mask = jnp.moveaxis(seen, -1, 2)[:, :, :, None, None, :]
        out, _ = _blockwise.block_attention(flat(q_blocks), keys, values, mask, scale)
    else:
        own = valid[:, :, None, :]  # [B, n, query slot, key slot]
        if is_causal:
            own = own & jnp.asarray(np.tri(block_size, dtype=bool))[None, None]
        own = jnp.broadcast_to(
            own[:, :, None, None], (dims.batch, num_blocks, dims.num_kv_heads, 1, *own.shape[2:])
        )
        partner = jnp.moveaxis(sorted_valid, -1, 2)[:, :, :, None, None, :]
        partner = jnp.broadcast_to(partner, own.shape)
        mask = jnp.concatenate([own, partner], axis=-1)
        keys = jnp.concatenate([k_blocks.astype(jnp.float32), sorted_k], axis=2)
        values = jnp.concatenate([v_blocks.astype(jnp.float32), sorted_v], axis=2)
        out, _ = _blockwise.block_attention(q_blocks, keys, values, mask, scale)
    out = out.reshape(dims.batch, num_blocks * block_size, *out.shape[3:])[:, : dims.q_len]
    return _common.ungroup_heads(out).astype(value.dtype)
