"""Causal prefix sums of outer products, the core of every linear-time attention (private).

Kernel attention (Performer, linear transformers) replaces ``softmax(q k^T)`` by
``phi(q) phi(k)^T``, so the causal output of query ``t`` is
``phi(q_t)^T sum_{s <= t} phi(k_s) v_s^T``: a prefix sum of ``[F, Hv]`` outer
products (Katharopoulos et al. 2020, eq. 9). :func:`causal_prefix_product`
computes it in chunks of ``C`` steps: inside a chunk as a masked ``[C, C]``
product, across chunks through a running ``[F, Hv]`` state carried by
``lax.scan``. Its custom VJP expresses each gradient as another causal (or,
time-reversed, anti-causal) prefix product, so the backward pass recomputes the
states instead of storing one per chunk: memory stays linear in ``T``.

Shapes (G axes let grouped query heads share one key/value head, GQA)::

  a [B, T, K, Ga, X], b [B, T, K, Gb, X], c [B, T, K, Gb, Y] -> y [B, T, K, Ga, Y]
  y[t, i] = sum_{s <= t} sum_j (a[t, i] . b[s, j]) c[s, j]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from effjax.attention import _common

DEFAULT_CHUNK_SIZE = 64


def outer_sum(b: jax.Array, c: jax.Array) -> jax.Array:
    """``sum_s sum_j b[s, j] c[s, j]^T``: ``[B, S, K, Gb, X], [B, S, K, Gb, Y] -> [B, K, X, Y]``."""
    return jnp.einsum("bskjx,bskjy->bkxy", b, c)


def apply_state(a: jax.Array, state: jax.Array) -> jax.Array:
    """``a[t, i] . state``: ``[B, T, K, Ga, X], [B, K, X, Y] -> [B, T, K, Ga, Y]``."""
    return jnp.einsum("btkix,bkxy->btkiy", a, state)


def _chunk_step(state, chunk):
    a, b, c = chunk  # [B, C, K, G*, *]
    size = a.shape[1]
    scores = jnp.einsum("btkix,bskjx->bkitsj", a, b)
    causal = jnp.tril(jnp.ones((size, size), jnp.bool_))
    scores = jnp.where(causal[None, None, None, :, :, None], scores, 0.0)
    y = apply_state(a, state) + jnp.einsum("bkitsj,bskjy->btkiy", scores, c)
    return state + outer_sum(b, c), y


def _to_chunks(x: jax.Array, num_chunks: int) -> jax.Array:
    """[B, T, ...] -> [T / C, B, C, ...] (scan over the leading axis)."""
    b, t = x.shape[:2]
    x = x.reshape(b, num_chunks, t // num_chunks, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _causal_scan(a, b, c, chunk_size: int) -> jax.Array:
    t = a.shape[1]
    size = min(chunk_size, t)
    padded = _common.round_up(t, size)
    # Zero rows of b and c add nothing to any prefix sum; padded rows of a are sliced off.
    a, b, c = (_common.pad_axis(x, 1, padded) for x in (a, b, c))
    num_chunks = padded // size
    state = jnp.zeros((a.shape[0], a.shape[2], a.shape[-1], c.shape[-1]), a.dtype)
    _, y = jax.lax.scan(_chunk_step, state, tuple(_to_chunks(x, num_chunks) for x in (a, b, c)))
    y = jnp.moveaxis(y, 0, 1).reshape(a.shape[0], padded, *y.shape[3:])
    return y[:, :t]


def _reverse(x: jax.Array) -> jax.Array:
    return jnp.flip(x, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_prefix_product(a, b, c, chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
    """``y[t, i] = sum_{s <= t} sum_j (a[t, i] . b[s, j]) c[s, j]`` (see the module docstring).

    ``a``, ``b``, ``c`` share ``T`` (callers align queries and keys beforehand);
    ``chunk_size`` trades the ``[C, C]`` intra-chunk product against scan steps.
    """
    return _causal_scan(a, b, c, chunk_size)


def _forward(a, b, c, chunk_size):
    return _causal_scan(a, b, c, chunk_size), (a, b, c)


def _backward(chunk_size, residuals, dy):
    a, b, c = residuals
    # y is linear in each argument, so each cotangent is itself a prefix product:
    #   da[t, i] = sum_{s <= t} sum_j (dy[t, i] . c[s, j]) b[s, j]     (causal)
    #   db[s, j] = sum_{t >= s} sum_i (c[s, j] . dy[t, i]) a[t, i]     (anti-causal)
    #   dc[s, j] = sum_{t >= s} sum_i (b[s, j] . a[t, i]) dy[t, i]     (anti-causal)
    # and an anti-causal sum is a causal one in reversed time.
    da = causal_prefix_product(dy, c, b, chunk_size)
    ra, rdy = _reverse(a), _reverse(dy)
    db = _reverse(causal_prefix_product(_reverse(c), rdy, ra, chunk_size))
    dc = _reverse(causal_prefix_product(_reverse(b), ra, rdy, chunk_size))
    return da, db, dc


causal_prefix_product.defvjp(_forward, _backward)
