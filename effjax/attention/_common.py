"""Shared checks and small numerical pieces of every attention variant (private).

Shape letters follow ``jax.nn.dot_product_attention``::

  B batch, T query length, S key/value length, N query heads,
  K key/value heads (K divides N), G = N // K, H head dimension.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

# Re-exported so that variants keep one import; the public home is effjax.attention.helpers.
from effjax.attention.helpers import (  # noqa: F401
    MASK_VALUE,
    check_positive,
    check_static_bool,
    check_static_int,
    gather_rows,
    masked_softmax,
    pad_axis,
    round_up,
)


@dataclasses.dataclass(frozen=True)
class AttentionDims:
    """Sizes read off validated query/key/value arrays."""

    batch: int
    q_len: int
    kv_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    value_dim: int

    @property
    def groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def empty(self) -> bool:
        """No query or no key: the result is all zeros (as for a query that sees no key)."""
        return self.q_len == 0 or self.kv_len == 0


def _shape(x) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", np.shape(x)))


def check_qkv(query, key, value) -> AttentionDims:
    """Validates ``query [B,T,N,H]``, ``key [B,S,K,H]``, ``value [B,S,K,Hv]`` at trace time."""
    qs, ks, vs = _shape(query), _shape(key), _shape(value)
    for name, s, letters in (("query", qs, "BTNH"), ("key", ks, "BSKH"), ("value", vs, "BSKH")):
        if len(s) != 4:
            raise ValueError(f"{name} must have rank 4 [{', '.join(letters)}], got shape {s}")
    b, t, n, h = qs
    if ks[0] != b or vs[0] != b:
        raise ValueError(
            f"batch sizes differ: query {qs}, key {ks}, value {vs} (dimension 0 must match)"
        )
    if ks[1] != vs[1]:
        raise ValueError(f"key and value lengths differ: key {ks}, value {vs} (dimension 1)")
    if ks[2] != vs[2]:
        raise ValueError(f"key and value head counts differ: key {ks}, value {vs} (dimension 2)")
    if ks[3] != h:
        raise ValueError(f"query and key head dims differ: query {qs}, key {ks} (dimension 3)")
    k = ks[2]
    if k == 0 or n % k:
        raise ValueError(
            f"key/value heads K={k} must divide query heads N={n}: query {qs}, key {ks}"
        )
    return AttentionDims(b, t, ks[1], n, k, h, vs[3])


def check_token_mask(name: str, mask, batch: int, length: int, letter: str) -> jax.Array:
    """Validates a per-token bool mask ``[B, letter]`` of shape ``(batch, length)``.

    The mask is returned as given (a list becomes a NumPy array): converting a NumPy mask
    with ``jnp.asarray`` would make it a tracer under ``jit`` and lose what callers can
    read from a concrete mask (e.g. the number of global tokens).
    """
    shape = _shape(mask)
    if shape != (batch, length):
        raise ValueError(f"{name} must have shape [B, {letter}] = {(batch, length)}, got {shape}")
    if not hasattr(mask, "dtype"):
        mask = np.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise ValueError(f"{name} must be bool, got dtype {mask.dtype}")
    return mask


def check_padding_mask(padding_mask, dims: AttentionDims) -> jax.Array | None:
    """Validates ``padding_mask`` bool [B, S] (True = a real key)."""
    if padding_mask is None:
        return None
    return check_token_mask("padding_mask", padding_mask, dims.batch, dims.kv_len, "S")


def check_self_attention(function: str, query, key, dims: AttentionDims) -> None:
    """Raises unless ``T == S``, for variants whose pattern is defined on one sequence."""
    if dims.q_len != dims.kv_len:
        raise ValueError(
            f"{function} is self-attention: query length {dims.q_len} must equal "
            f"key length {dims.kv_len} (query {_shape(query)}, key {_shape(key)})"
        )


def zeros_output(dims: AttentionDims, value) -> jax.Array:
    """``[B, T, N, Hv]`` zeros in ``value.dtype``, the result when ``dims.empty``."""
    return jnp.zeros((dims.batch, dims.q_len, dims.num_heads, dims.value_dim), value.dtype)


def resolve_scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def group_heads(query: jax.Array, num_kv_heads: int) -> jax.Array:
    """[B, T, N, H] -> [B, T, K, G, H], the query heads that share one key/value head."""
    b, t, n, h = query.shape
    return query.reshape(b, t, num_kv_heads, n // num_kv_heads, h)


def ungroup_heads(x: jax.Array) -> jax.Array:
    """[B, T, K, G, H] -> [B, T, N, H]."""
    b, t, k, g, h = x.shape
    return x.reshape(b, t, k * g, h)


def check_implementation(function: str, implementation: str | None, valid: tuple) -> str | None:
    """``implementation`` if ``function`` has that path (``valid`` includes None), else a
    one-line ValueError listing the valid ones."""
    if implementation not in valid:
        raise ValueError(
            f"{function}: implementation must be one of {valid}, got {implementation!r}"
        )
    return implementation
