"""Dense scaled dot-product attention: the reference every effjax variant is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effjax.attention import _common
from effjax.attention import masks as masks_lib


def _check_logit_array(name: str, x, dims: _common.AttentionDims) -> jax.Array:
    """Checks a mask or bias is rank 4 and broadcastable to [B, N, T, S]."""
    shape = tuple(jnp.shape(x))
    full = (dims.batch, dims.num_heads, dims.q_len, dims.kv_len)
    ok = len(shape) == 4 and all(s in (1, f) for s, f in zip(shape, full, strict=True))
    if not ok or shape[2:] != full[2:]:
        raise ValueError(
            f"{name} must have shape [B or 1, N or 1, T, S] with [B, N, T, S] = {full}, got {shape}"
        )
    return jnp.asarray(x)


def _group_logit_array(x: jax.Array, dims: _common.AttentionDims) -> jax.Array:
    """[B|1, N|1, T, S] -> [B|1, K|1, G|1, T, S], matching the grouped logits layout."""
    b, n, t, s = x.shape
    if n == 1:
        return x[:, :, None]
    return x.reshape(b, dims.num_kv_heads, dims.groups, t, s)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    r"""Dense scaled dot-product attention, :math:`\mathrm{softmax}(s\,QK^T + B)\,V`.

    The reference implementation: it builds the full ``[B, N, T, S]`` logits, so
    it costs O(T S) time and memory. Every efficient variant in
    :mod:`effjax.attention` equals this function with its equivalent mask.

    Shape letters: B batch, T query length, S key length, N query heads,
    K key/value heads (K divides N: GQA, MQA for K = 1), H head dimension.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]``.
      value: ``[B, S, K, Hv]``.
      mask: optional bool ``[B or 1, N or 1, T, S]``; True = attend.
      bias: optional float ``[B or 1, N or 1, T, S]`` added to the scaled logits.
      padding_mask: optional bool ``[B, S]``; True = a real key.
      is_causal: bottom-right aligned causal mask: query ``t`` sees keys
        ``s <= t + (S - T)``, so ``T < S`` works for decoding against a cache.
      scale: logit scale, default ``1 / sqrt(H)``.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype``. Logits and softmax are float32 for any
      input dtype; a query that sees no key returns zeros (with finite gradients).

    Raises:
      ValueError: at trace time, for wrong ranks, mismatched shapes or heads.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.attention import dot_product_attention
      >>> q = k = v = jnp.ones((2, 16, 4, 8))
      >>> dot_product_attention(q, k, v, is_causal=True).shape
      (2, 16, 4, 8)
    """
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    scale = _common.resolve_scale(scale, dims.head_dim)

    q = _common.group_heads(query, dims.num_kv_heads).astype(jnp.float32)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, key.astype(jnp.float32)) * scale
    if bias is not None:
        bias = _check_logit_array("bias", bias, dims)
        logits = logits + _group_logit_array(bias.astype(jnp.float32), dims)

    full_mask = None
    if mask is not None:
        mask = _check_logit_array("mask", mask, dims)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be bool (True = attend), got dtype {mask.dtype}")
        full_mask = _group_logit_array(mask, dims)
    if padding_mask is not None:
        full_mask = masks_lib.combine(full_mask, padding_mask[:, None, None, None, :])
    if is_causal:
        full_mask = masks_lib.combine(
            full_mask, masks_lib.causal_mask(dims.q_len, dims.kv_len)[None, None, None]
        )

    weights = _common.masked_softmax(logits, full_mask)
    out = jnp.einsum("bkgts,bskh->btkgh", weights, value.astype(jnp.float32))
    return _common.ungroup_heads(out).astype(value.dtype)
