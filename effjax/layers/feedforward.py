"""Position-wise feed-forward, optionally over sequence chunks (Kitaev et al. 2020, Sec. 4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from effjax.attention import _common

Dtype = Any


class FeedForward(nn.Module):
    r"""``FF(x) = act(x W_i + b_i) W_o + b_o``, position by position, ``[B, T, D] -> [B, T, D]``.

    Every position is independent, so with ``chunk_size`` the sequence is cut into
    chunks of that many positions, padded at the end, and the chunks go through
    ``lax.map`` with ``jax.checkpoint``: the ``[B, chunk, d_ff]`` hidden activation
    exists one chunk at a time, forward and backward, instead of ``[B, T, d_ff]``
    (the Reformer's chunked feed-forward). Outputs and gradients equal the
    unchunked layer's (``chunk_size=None``) up to float rounding.

    Attributes:
      d_ff: hidden size.
      chunk_size: positions per chunk, or None for one pass.
      activation: hidden activation (default gelu).
      dropout_rate: dropout on the output (per position, so chunking leaves it unchanged).
      dtype: computation dtype; param_dtype: parameter dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> ff = FeedForward(d_ff=64, chunk_size=16)
      >>> x = jnp.ones((2, 50, 32))
      >>> variables = ff.init(jax.random.key(0), x)
      >>> ff.apply(variables, x).shape
      (2, 50, 32)
    """

    d_ff: int
    chunk_size: int | None = None
    activation: Callable[[jax.Array], jax.Array] = nn.gelu
    dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Applies the feed-forward to ``x [B, T, D]``."""
        if x.ndim != 3:
            raise ValueError(f"x must be [B, T, D], got shape {x.shape}")
        d_model = x.shape[-1]
        w_in = self.param("wi", self.kernel_init, (d_model, self.d_ff), self.param_dtype)
        b_in = self.param("bi", nn.initializers.zeros_init(), (self.d_ff,), self.param_dtype)
        w_out = self.param("wo", self.kernel_init, (self.d_ff, d_model), self.param_dtype)
        b_out = self.param("bo", nn.initializers.zeros_init(), (d_model,), self.param_dtype)
        dtype = self.dtype or x.dtype
        w_in, b_in, w_out, b_out = (p.astype(dtype) for p in (w_in, b_in, w_out, b_out))
        x = x.astype(dtype)

        def feed_forward(h):
            hidden = self.activation(h @ w_in + b_in[None, None])
            return hidden @ w_out + b_out[None, None]

        if self.chunk_size is None:
            out = feed_forward(x)
        else:
            out = _chunked(feed_forward, x, _common.check_positive("chunk_size", self.chunk_size))
        if self.dropout_rate > 0.0:
            out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        return out


def _chunked(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk_size: int) -> jax.Array:
    """``fn`` over ``[B, chunk, D]`` pieces of ``x [B, T, D]``, one at a time and rematerialised."""
    b, t, d = x.shape
    padded = _common.round_up(t, chunk_size)
    chunks = _common.pad_axis(x, 1, padded).reshape(b, padded // chunk_size, chunk_size, d)
    out = jax.lax.map(jax.checkpoint(fn), chunks.swapaxes(0, 1))
    return out.swapaxes(0, 1).reshape(b, padded, -1)[:, :t]
