"""Attention of query blocks over gathered key blocks, shared by the sparse variants (private).

Local, Longformer and BigBird attention all reduce to the same step: every block of
``b`` queries attends to its own short list of ``C`` key blocks (a band around it, or
blocks named by an index table) under a token-level mask. The step costs
O(T * C * b) time and memory, and gives back the log-sum-exp of each row so that
separately computed parts of a row (a window and a set of global keys) can be merged
exactly, as in blockwise/flash attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effjax.attention import _common


def softmax_with_lse(logits: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Softmax over the last axis, in at least float32, and its log-sum-exp.

    Masked entries give 0. A row with no unmasked entry gets weights 0 and lse
    ``MASK_VALUE`` (finite), so it carries no weight when merged with another part of
    the same row. Complex logits get the holomorphic softmax ``exp(z) / sum exp(z)``.
    """
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    logits = jnp.where(mask, logits.astype(dtype), _common.MASK_VALUE)
    # The max only stabilises exp; its gradient cancels, so keep it out of the graph.
    # Any constant shift cancels, so a complex row is shifted by its largest real part.
    row_max = jnp.max(jnp.real(logits), axis=-1, keepdims=True, initial=_common.MASK_VALUE)
    row_max = jax.lax.stop_gradient(row_max)
    unnormalised = jnp.where(mask, jnp.exp(logits - row_max), 0.0)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    # A row with one unmasked logit has a max above the fill (a complex sum may cancel to 0).
    has_key = row_max > _common.MASK_VALUE
    safe_total = jnp.where(has_key, total, 1.0)
    weights = unnormalised / safe_total
    lse = jnp.where(has_key, row_max + jnp.log(safe_total), _common.MASK_VALUE)
    return weights, lse[..., 0]


def unnormalised_softmax(
    logits: jax.Array, mask: jax.Array, axis: int = -1
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The softmax over ``axis`` in FlashAttention's order (Dao et al. 2022): returns
    ``exp(l - max)``, the inverse of each row's sum and the row's log-sum-exp, so a
    caller multiplies its ``[.., Hv]`` value product by the inverse instead of dividing
    the ``[.., C]`` weights (one pass fewer over them).

    Masked entries need no second select: once a row has a key its max is above the
    fill and their ``exp`` underflows to exactly 0; a row with no key (every ``exp`` 1)
    gets inverse 0 and lse ``MASK_VALUE``, so its output is 0.
    """
    logits = jnp.where(mask, logits.astype(jnp.promote_types(logits.dtype, jnp.float32)),
                       _common.MASK_VALUE)  # fmt: skip
    # The max only stabilises exp; its gradient cancels, so keep it out of the graph. A
    # complex row is shifted by its largest real part (exp(z) / sum exp(z), as above).
    row_max = jnp.max(jnp.real(logits), axis=axis, keepdims=True, initial=_common.MASK_VALUE)
    row_max = jax.lax.stop_gradient(row_max)
    unnormalised = jnp.exp(logits - row_max)
    total = jnp.sum(unnormalised, axis=axis)
    row_max = jnp.squeeze(row_max, axis)
    has_key = row_max > _common.MASK_VALUE
    inverse = jnp.where(has_key, 1.0 / total, 0.0)
    lse = jnp.where(has_key, row_max + jnp.log(total), _common.MASK_VALUE)
    return unnormalised, inverse, lse


def merge_normalised(
    parts: list[tuple[jax.Array, jax.Array]],
) -> tuple[jax.Array, jax.Array]:
    """Merges ``(out [..., Hv], lse [...])`` pairs computed over disjoint key sets of a row.

    ``out = sum_p exp(lse_p - lse) out_p`` with ``lse = logsumexp_p lse_p``: the softmax
    over the union of the key sets. Rows empty in every part stay 0.
    """
    lses = jnp.stack([lse for _, lse in parts])
    lse = jax.lax.stop_gradient(jnp.max(lses, axis=0))
    lse = lse + jnp.log(jnp.sum(jnp.exp(lses - lse[None]), axis=0))
    out = sum(o * jnp.exp(l - lse)[..., None] for o, l in parts)
    return out, lse


def block_attention(
    query_blocks: jax.Array,
    key_blocks: jax.Array,
    value_blocks: jax.Array,
    mask: jax.Array,
    scale: float,
) -> tuple[jax.Array, jax.Array]:
    """Each query block attends to its own gathered keys.

    The softmax is normalised after the value product (:func:`unnormalised_softmax`), so
    the ``[.., b, C]`` logits are read and written fewer times: the sparse variants are
    bound by those passes, not by their FLOPs.

    Args:
      query_blocks: ``[B, Q, b, K, G, H]``: Q blocks of b queries, grouped heads.
      key_blocks: ``[B, Q, C, K, H]``: the C keys query block q sees (a band or a
        gathered list of key blocks, flattened).
      value_blocks: ``[B, Q, C, K, Hv]``.
      mask: bool, broadcastable to ``[B, Q, K, G, b, C]``.
      scale: logit scale.

    Returns:
      ``out [B, Q, b, K, G, Hv]`` and ``lse [B, Q, b, K, G]``, in at least float32; a
      row with no key gives zeros and lse ``MASK_VALUE``.
    """
    dtype = jnp.promote_types(jnp.result_type(query_blocks, key_blocks), jnp.float32)
    # Logits key-major, [B, Q, K, G, C, b]: the layout both matmuls want on XLA:CPU, so
    # the softmax passes need no transposing copies between them.
    logits = jnp.einsum(
        "bqikgh,bqjkh->bqkgji",
        query_blocks.astype(dtype) * jnp.asarray(scale, dtype),
        key_blocks.astype(dtype),
    )
    mask = jnp.asarray(mask)
    mask = jnp.swapaxes(mask.reshape((1,) * (6 - mask.ndim) + mask.shape), -1, -2)
    unnormalised, inverse, lse = unnormalised_softmax(logits, mask, axis=-2)  # [B,Q,K,G,b]
    value_blocks = value_blocks.astype(jnp.promote_types(unnormalised.dtype, value_blocks.dtype))
    out = jnp.einsum("bqkgji,bqjkh->bqikgh", unnormalised, value_blocks)
    out = out * jnp.moveaxis(inverse, -1, 2)[..., None]
    return out, jnp.moveaxis(lse, -1, 2)
