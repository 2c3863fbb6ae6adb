"""Checks for attention implementations, shared by effjax's tests and yours.

Every efficient variant must equal the dense reference with its equivalent mask,
forward and backward. :func:`check_against_reference` is that check.

Example:
  >>> import jax
  >>> from effjax import testing
  >>> from effjax.attention import local_attention, local_mask
  >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 8, 2, 4))
  >>> testing.check_against_reference(
  ...     local_attention, q, k, v, mask=local_mask(8, 8, 2), window_size=2
  ... )
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention.dense import dot_product_attention


def _broadcast_mask(mask: jax.Array | None) -> jax.Array | None:
    """[T, S] / [N, T, S] / [B, N, T, S] -> rank 4, as the reference takes it."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def check_against_reference(
    attention_fn: Callable[..., jax.Array],
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    check_grads: bool = True,
    **options,
) -> None:
    """Asserts ``attention_fn`` equals dense attention with its equivalent ``mask``.

    The variant is called as ``attention_fn(query, key, value, padding_mask=...,
    is_causal=..., scale=..., **options)`` and the reference as
    ``dot_product_attention(query, key, value, mask=mask, padding_mask=...,
    is_causal=..., scale=...)``. Outputs, and the gradients of
    ``sum(output * c)`` for a fixed random ``c`` with respect to query, key and
    value, must agree to ``atol``/``rtol`` (compared in float32).

    Args:
      attention_fn: the variant under test.
      query, key, value: ``[B, T, N, H]``, ``[B, S, K, H]``, ``[B, S, K, Hv]``.
      mask: the variant's dense equivalent, bool ``[T, S]``, ``[N, T, S]`` or
        ``[B, N, T, S]`` (leading axes may be 1).
      padding_mask, is_causal, scale: passed to both functions.
      check_grads: also compare gradients.
      **options: variant-only keyword arguments (window_size, rng, ...).

    Raises:
      AssertionError: outputs or gradients differ.
    """
    shared = {"padding_mask": padding_mask, "is_causal": is_causal, "scale": scale}

    # Compiled once each: many small eager ops would cost more than one compile.
    @jax.jit
    def variant(q, k, v):
        return attention_fn(q, k, v, **shared, **options)

    @jax.jit
    def reference(q, k, v):
        return dot_product_attention(q, k, v, mask=_broadcast_mask(mask), **shared)

    out = variant(query, key, value)
    expected = reference(query, key, value)
    assert out.shape == expected.shape, f"output shape {out.shape} != {expected.shape}"
    assert out.dtype == value.dtype, f"output dtype {out.dtype} != value dtype {value.dtype}"
    np.testing.assert_allclose(
        np.asarray(out, np.float32),
        np.asarray(expected, np.float32),
        atol=atol,
        rtol=rtol,
        err_msg="forward output differs from the dense reference",
    )
    if not check_grads:
        return

    cotangent = jax.random.normal(jax.random.key(1234), expected.shape, jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * cotangent)

    got = jax.jit(jax.grad(loss(variant), argnums=(0, 1, 2)))(query, key, value)
    want = jax.jit(jax.grad(loss(reference), argnums=(0, 1, 2)))(query, key, value)
    for name, g, w in zip(("query", "key", "value"), got, want, strict=True):
        np.testing.assert_allclose(
            np.asarray(g, np.float32),
            np.asarray(w, np.float32),
            atol=atol,
            rtol=rtol,
            err_msg=f"gradient with respect to {name} differs from the dense reference",
        )


def random_qkv(
    rng: jax.Array,
    *,
    batch: int = 2,
    q_len: int = 16,
    kv_len: int | None = None,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    head_dim: int = 8,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Standard-normal ``query [B,T,N,H]``, ``key`` and ``value [B,S,K,H]`` for tests."""
    kv_len = q_len if kv_len is None else kv_len
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    kq, kk, kv = jax.random.split(rng, 3)
    q = jax.random.normal(kq, (batch, q_len, num_heads, head_dim), dtype)
    k = jax.random.normal(kk, (batch, kv_len, num_kv_heads, head_dim), dtype)
    v = jax.random.normal(kv, (batch, kv_len, num_kv_heads, head_dim), dtype)
    return q, k, v


def random_padding_mask(rng: jax.Array, batch: int, kv_len: int) -> jax.Array:
    """bool [B, S]: each row keeps a random-length prefix (at least one key) as padding does."""
    lengths = jax.random.randint(rng, (batch,), 1, kv_len + 1)
    return jnp.arange(kv_len)[None, :] < lengths[:, None]
