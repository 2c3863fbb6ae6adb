"""Exact memory-efficient attention: online softmax over key chunks (FlashAttention in pure JAX).

The forward pass walks over blocks of keys for each block of queries and keeps, per
query, the running maximum ``m``, the running normaliser ``l`` and the unnormalised
output, rescaling them when a new block raises the maximum (Milakov & Gimelshein 2018,
"Online normalizer calculation for softmax"; Rabe & Staats 2021, "Self-attention does
not need O(n^2) memory"). The backward pass is a custom VJP that recomputes each block
of probabilities from the saved log-sum-exp instead of storing them (Dao et al. 2022,
"FlashAttention", Algorithm 4; Dao 2023, FlashAttention-2). Neither pass holds more
than one ``[block_q, block_k]`` tile of logits per head, so memory grows linearly in
the sequence length, and causal blocks above the diagonal are never computed.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from effjax.attention import _common

DEFAULT_BLOCK_Q = 1024
DEFAULT_BLOCK_K = 512


class _Blocks(NamedTuple):
    """Static tiling: T queries in ``nq`` blocks of ``bq``, S keys in ``nk`` blocks of ``bk``."""

    q_len: int
    kv_len: int
    bq: int
    bk: int
    nq: int
    nk: int
    is_causal: bool

    def causal_offset(self) -> int:
        # Bottom-right aligned causal mask: query t sees keys s <= t + (S - T).
        return self.kv_len - self.q_len

    def key_blocks_end(self, i):
        """One past the last key block query block ``i`` sees (all of them if not causal)."""
        if not self.is_causal:
            return self.nk
        last_key = jnp.minimum((i + 1) * self.bq, self.q_len) - 1 + self.causal_offset()
        return jnp.clip(last_key // self.bk + 1, 0, self.nk)

    def query_blocks_start(self, j):
        """The first query block that sees any key of key block ``j`` (< nq: the key
        block starts before S, and query T - 1 sees key S - 1)."""
        if not self.is_causal:
            return 0
        return jnp.maximum(j * self.bk - self.causal_offset(), 0) // self.bq

    def tile_mask(self, i, j, key_valid: jax.Array | None) -> jax.Array | None:
        """bool rank-5 mask of tile (i, j), broadcastable to ``[B, K, G, bq, bk]``; None = none."""
        mask = None
        if self.is_causal:
            q_pos = i * self.bq + jnp.arange(self.bq)
            k_pos = j * self.bk + jnp.arange(self.bk)
            mask = (k_pos[None, :] <= q_pos[:, None] + self.causal_offset())[None, None, None]
        if key_valid is not None:
            valid = jax.lax.dynamic_slice_in_dim(key_valid, j * self.bk, self.bk, axis=1)
            valid = valid[:, None, None, None, :]
            mask = valid if mask is None else mask & valid
        return mask


def _slice(x: jax.Array, index, size: int, axis: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


def _logits(q_i: jax.Array, k_j: jax.Array) -> jax.Array:
    """``[B, bq, K, G, H] x [B, bk, K, H] -> [B, K, G, bq, bk]`` (q is pre-scaled)."""
    return jnp.einsum("bikgh,bjkh->bkgij", q_i, k_j)


def _tile_softmax(q_i, k_j, v_j, mask):
    """One tile's partial softmax state: its row max ``m``, ``l = sum exp(s - m)`` and
    ``acc = exp(s - m) V``, shapes ``[B, K, G, bq]`` and ``[B, K, G, bq, Hv]``."""
    s = _logits(q_i, k_j)
    if mask is not None:
        s = jnp.where(mask, s, _common.MASK_VALUE)
    m = jnp.max(s, axis=-1)
    p = jnp.exp(s - m[..., None])
    if mask is not None:
        # A fully masked row has m = MASK_VALUE, so exp gives 1 there.
        p = jnp.where(mask, p, 0.0)
    return m, jnp.sum(p, axis=-1), jnp.einsum("bkgij,bjkh->bkgih", p, v_j)


def _merge(a, b):
    """Online softmax: the state of the union of two disjoint key sets of the same rows."""
    (m_a, l_a, acc_a), (m_b, l_b, acc_b) = a, b
    m = jnp.maximum(m_a, m_b)
    c_a, c_b = jnp.exp(m_a - m), jnp.exp(m_b - m)
    return m, l_a * c_a + l_b * c_b, acc_a * c_a[..., None] + acc_b * c_b[..., None]


def _forward(blocks: _Blocks, q, k, v, key_valid):
    """Online-softmax forward. ``q [B, Tp, K, G, H]`` (pre-scaled), ``k [B, Sp, K, H]``,
    ``v [B, Sp, K, Hv]``, real floats. Returns ``out [B, Tp, K, G, Hv]``, ``lse [B, K, G, Tp]``."""
    b, _, kh, g, _ = q.shape
    hv = v.shape[-1]

    def query_block(i):
        q_i = _slice(q, i, blocks.bq, 1)

        def tile(j):
            k_j, v_j = _slice(k, j, blocks.bk, 1), _slice(v, j, blocks.bk, 1)
            return _tile_softmax(q_i, k_j, v_j, blocks.tile_mask(i, j, key_valid))

        # The first tile starts the state (rather than zeros) so that the loop carry has
        # the inputs' varying axes under shard_map. A row that sees no key keeps l = 0.
        m, l, acc = jax.lax.fori_loop(
            1, blocks.key_blocks_end(i), lambda j, state: _merge(state, tile(j)), tile(0)
        )
        has_key = l > 0
        safe_l = jnp.where(has_key, l, 1.0)
        out = jnp.where(has_key[..., None], acc / safe_l[..., None], 0.0)
        lse = jnp.where(has_key, m + jnp.log(safe_l), _common.MASK_VALUE)
        return jnp.einsum("bkgih->bikgh", out), lse

    out, lse = jax.lax.map(query_block, jnp.arange(blocks.nq))
    # [nq, B, bq, K, G, Hv] -> [B, Tp, K, G, Hv]; [nq, B, K, G, bq] -> [B, K, G, Tp].
    out = jnp.moveaxis(out, 0, 1).reshape(b, blocks.nq * blocks.bq, kh, g, hv)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, blocks.nq * blocks.bq)
    return out, lse


def _backward(blocks: _Blocks, q, k, v, key_valid, out, lse, d_out, d_lse):
    """FlashAttention-2 backward: recompute each probability tile from ``lse``.

    Returns ``dq`` (w.r.t. the pre-scaled q; the scaling's own derivative is left to
    autodiff), ``dk``, ``dv``.
    """
    # dS_ij = P_ij (dP_ij - D_i) with D_i = rowsum(dO * O) = sum_j P_ij dP_ij (the softmax
    # Jacobian's diagonal term); a cotangent of lse_i adds P_ij, as d lse_i / d S_ij = P_ij.
    delta = jnp.einsum("bikgh,bikgh->bkgi", d_out, out) - d_lse

    def key_block(dq, j):
        k_j, v_j = _slice(k, j, blocks.bk, 1), _slice(v, j, blocks.bk, 1)

        def tile_grads(i, dq):
            """Adds tile (i, j)'s share to dq; returns it with tile (i, j)'s dk_j, dv_j."""
            q_i, do_i = _slice(q, i, blocks.bq, 1), _slice(d_out, i, blocks.bq, 1)
            p = jnp.exp(_logits(q_i, k_j) - _slice(lse, i, blocks.bq, 3)[..., None])
            mask = blocks.tile_mask(i, j, key_valid)
            if mask is not None:
                p = jnp.where(mask, p, 0.0)
            dp = jnp.einsum("bikgh,bjkh->bkgij", do_i, v_j)
            ds = p * (dp - _slice(delta, i, blocks.bq, 3)[..., None])
            dq_i = _slice(dq, i, blocks.bq, 1) + jnp.einsum("bkgij,bjkh->bikgh", ds, k_j)
            dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * blocks.bq, axis=1)
            dk_j = jnp.einsum("bkgij,bikgh->bjkh", ds, q_i)
            dv_j = jnp.einsum("bkgij,bikgh->bjkh", p, do_i)
            return dq, dk_j, dv_j

        def query_step(i, carry):
            dq, dk_j, dv_j = carry
            dq, dk_i, dv_i = tile_grads(i, dq)
            return dq, dk_j + dk_i, dv_j + dv_i

        # As in the forward pass, the first tile starts the accumulators.
        start = blocks.query_blocks_start(j)
        dq, dk_j, dv_j = jax.lax.fori_loop(start + 1, blocks.nq, query_step, tile_grads(start, dq))
        return dq, (dk_j, dv_j)

    dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros_like(q), jnp.arange(blocks.nk))
    b, _, kh, h = k.shape
    dk = jnp.moveaxis(dk, 0, 1).reshape(b, blocks.nk * blocks.bk, kh, h)
    dv = jnp.moveaxis(dv, 0, 1).reshape(b, blocks.nk * blocks.bk, kh, v.shape[-1])
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(blocks: _Blocks, q, k, v, key_valid):
    return _forward(blocks, q, k, v, key_valid)


def _attention_fwd(blocks, q, k, v, key_valid):
    out, lse = _forward(blocks, q, k, v, key_valid)
    return (out, lse), (q, k, v, key_valid, out, lse)


def _attention_bwd(blocks, residuals, cotangents):
    q, k, v, key_valid, out, lse = residuals
    dq, dk, dv = _backward(blocks, q, k, v, key_valid, out, lse, *cotangents)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _block_size(name: str, value: int | None, length: int, default: int) -> int:
    value = default if value is None else _common.check_positive(name, value)
    return min(value, length)


def chunked_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    r"""Exact :math:`\mathrm{softmax}(s\,QK^T)\,V` in O(T + S) memory (FlashAttention in JAX).

    Equals :func:`~effjax.attention.dot_product_attention` (forward and gradients, up
    to float rounding) for dense, causal and padded attention with any number of
    key/value heads, but never builds the ``[T, S]`` logits: queries are taken
    ``block_q`` at a time, keys ``block_k`` at a time with an online softmax, and the
    custom backward pass recomputes each probability tile from the saved log-sum-exp
    (Dao et al. 2022, "FlashAttention"; Dao 2023, "FlashAttention-2"). Causal tiles
    entirely above the diagonal are skipped in both passes. Lengths need not divide
    the block sizes (the last block is padded and masked).

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]``; K divides N (GQA/MQA when K < N).
      value: ``[B, S, K, Hv]``.
      padding_mask: optional bool ``[B, S]``; True = a real key.
      is_causal: bottom-right aligned: query ``t`` sees keys ``s <= t + (S - T)``.
      scale: logit scale, default ``1 / sqrt(H)``.
      block_q: queries per tile (default 1024, at most T).
      block_k: keys per tile (default 512, at most S).

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype``; float32 logits and softmax. A query that
      sees no key returns zeros (with zero gradients).

    Raises:
      ValueError: at trace time, for wrong ranks, mismatched shapes or heads, a
        padding_mask of the wrong shape, or a non-positive block size.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.attention import chunked_attention, dot_product_attention
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 100, 4, 8))
      >>> out = chunked_attention(q, k, v, is_causal=True, block_q=32, block_k=16)
      >>> bool(jnp.allclose(out, dot_product_attention(q, k, v, is_causal=True), atol=1e-5))
      True
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    if dims.empty:
        return _common.zeros_output(dims, value)
    out, _ = chunked_attention_with_lse(
        _common.group_heads(query, dims.num_kv_heads),
        key,
        value,
        key_valid=padding_mask,
        is_causal=is_causal,
        scale=_common.resolve_scale(scale, dims.head_dim),
        block_q=block_q,
        block_k=block_k,
    )
    return _common.ungroup_heads(out).astype(value.dtype)


def chunked_attention_with_lse(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    key_valid: jax.Array | None,
    is_causal: bool,
    scale: float,
    block_q: int | None = None,
    block_k: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The computation behind :func:`chunked_attention`, on grouped heads, for other paths.

    Args:
      query: ``[B, T, K, G, H]`` (query heads grouped by the key/value head they share).
      key: ``[B, S, K, H]``; value: ``[B, S, K, Hv]``, with ``T, S > 0``.
      key_valid: bool ``[B, S]`` or None; True = a real key.
      is_causal, scale, block_q, block_k: as in :func:`chunked_attention`.

    Returns:
      ``out [B, T, K, G, Hv]`` and the log-sum-exp of each row's logits ``lse
      [B, T, K, G]`` (``MASK_VALUE`` where a row sees no key), both differentiable, in
      the inputs' dtype promoted to at least float32.
    """
    b, t = query.shape[:2]
    s = key.shape[1]
    bq = _block_size("block_q", block_q, t, DEFAULT_BLOCK_Q)
    bk = _block_size("block_k", block_k, s, DEFAULT_BLOCK_K)
    nq, nk = -(-t // bq), -(-s // bk)
    blocks = _Blocks(t, s, bq, bk, nq, nk, _common.check_static_bool("is_causal", is_causal))
    dtype = jnp.promote_types(jnp.result_type(query, key, value), jnp.float32)
    q = _common.pad_axis(query.astype(dtype) * jnp.asarray(scale, dtype), 1, nq * bq)
    k = _common.pad_axis(key.astype(dtype), 1, nk * bk)
    v = _common.pad_axis(value.astype(dtype), 1, nk * bk)
    if nk * bk != s:
        key_valid = jnp.ones((b, s), bool) if key_valid is None else key_valid
        key_valid = _common.pad_axis(key_valid, 1, nk * bk, value=False)
    out, lse = _attention(blocks, q, k, v, key_valid)
    return out[:, :t], jnp.moveaxis(lse, 3, 1)[:, :t]
