r"""Persistent-memory attention (Sukhbaatar et al. 2019, "Augmenting Self-attention with
Persistent Memory", the all-attention layer).

``M`` learned key/value vectors per head are concatenated in front of the sequence's
keys and values. They stand for the knowledge a feed-forward sub-layer would hold, so
the paper drops the feed-forward layer. The memory is never masked: padded and causal
queries see it too, so no query is ever left without a key.

  out_t = softmax_s( s q_t [M_k ; K]^T ) [M_v ; V]        time and memory O(T (M + S))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effjax.attention import _common
from effjax.attention.dense import _check_logit_array, dot_product_attention


def _check_memory(name: str, memory, num_kv_heads: int, dim: int, letter: str) -> jax.Array:
    shape = tuple(jnp.shape(memory))
    if len(shape) != 3 or shape[0] != num_kv_heads or shape[2] != dim or shape[1] == 0:
        raise ValueError(
            f"{name} must have shape [K, M, {letter}] with K = {num_kv_heads}, "
            f"{letter} = {dim}, M > 0, got {shape}"
        )
    return jnp.asarray(memory)


def persistent_memory_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    memory_key: jax.Array,
    memory_value: jax.Array,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    mask: jax.Array | None = None,
    implementation: str | None = None,
) -> jax.Array:
    r"""All-attention: dense attention over ``[memory ; sequence]`` (Sukhbaatar et al. 2019).

    Equals :func:`~effjax.attention.dot_product_attention` on the keys
    ``concat([M_k, K])`` and values ``concat([M_v, V])`` (the memory broadcast over the
    batch), where the ``M`` memory slots are always visible and the sequence keys keep
    their padding and causal masks (query ``t`` sees key ``s <= t + S - T``).

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]``, K divides N.
      value: ``[B, S, K, Hv]``.
      memory_key: ``[K, M, H]`` persistent keys, one set per key/value head.
      memory_value: ``[K, M, Hv]`` persistent values.
      padding_mask: bool ``[B, S]`` over the sequence keys, True = a real key.
      is_causal: causal mask on the sequence keys; the memory stays visible.
      scale: logit scale, default ``1 / sqrt(H)``.
      mask: optional bool mask over the sequence keys, broadcastable to ``[B, N, T, S]``
        as :func:`~effjax.attention.dot_product_attention`'s (True = may
        attend), e.g. a decoding cache's; the memory columns are never masked.
      implementation: passed on to :func:`~effjax.attention.dot_product_attention`.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype`` (float32 logits and softmax).

    Raises:
      ValueError: bad shapes, or memory shapes that do not match the heads.

    Example:
      >>> import jax.numpy as jnp
      >>> q = k = v = jnp.ones((2, 16, 4, 8))
      >>> mk = mv = jnp.zeros((4, 3, 8))
      >>> persistent_memory_attention(q, k, v, memory_key=mk, memory_value=mv,
      ...                             is_causal=True).shape
      (2, 16, 4, 8)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    memory_key = _check_memory("memory_key", memory_key, dims.num_kv_heads, dims.head_dim, "H")
    memory_value = _check_memory(
        "memory_value", memory_value, dims.num_kv_heads, dims.value_dim, "Hv"
    )
    if memory_key.shape[1] != memory_value.shape[1]:
        raise ValueError(
            f"memory_key {memory_key.shape} and memory_value {memory_value.shape} "
            "must hold the same number of slots M (dimension 1)"
        )
    num_slots = memory_key.shape[1]

    def with_memory(memory: jax.Array, x: jax.Array) -> jax.Array:
        """[K, M, D] memory in front of [B, S, K, D] -> [B, M + S, K, D]."""
        memory = jnp.swapaxes(memory, 0, 1).astype(x.dtype)
        memory = jnp.broadcast_to(memory[None], (dims.batch, *memory.shape))
        return jnp.concatenate([memory, x], axis=1)

    if padding_mask is not None:
        padding_mask = jnp.concatenate(
            [jnp.ones((dims.batch, num_slots), bool), padding_mask], axis=1
        )
    if mask is not None:
        # Dense attention's rules for a mask (rank <= 4, broadcastable to [B, N, T, S]).
        mask = _check_logit_array("mask", mask, dims)
        mask = jnp.broadcast_to(mask, (*mask.shape[:-1], dims.kv_len))
        mask = jnp.concatenate([jnp.ones((*mask.shape[:-1], num_slots), bool), mask], axis=-1)
    # Bottom-right alignment over S + M keys keeps the memory (the first M) visible to all.
    return dot_product_attention(
        query,
        with_memory(memory_key, key),
        with_memory(memory_value, value),
        padding_mask=padding_mask,
        mask=mask,
        is_causal=is_causal,
        scale=scale,
        implementation=implementation,
    )
