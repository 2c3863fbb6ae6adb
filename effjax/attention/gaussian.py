r"""Hard-coded Gaussian attention (You, Sun & Iyyer, 2020, "Hard-Coded Gaussian Attention
for Neural Machine Translation").

Each head's attention weights are fixed: query ``t`` (at key position ``p = t + S - T``)
puts weight :math:`\propto \exp(-(s - p - \mu_n)^2 / 2\sigma_n^2)` on key ``s``, a
Gaussian centred ``mu_n`` positions from the query with width ``sigma_n``, renormalised
over the keys it can see (inside the truncation window, not padded, not in the future when
causal). Queries and keys carry no information; only the values are mixed, so the layer
needs no query/key projections. With the Gaussian truncated to ``w`` positions on each
side this is a depthwise 1-D convolution of the values: O(T w Hv) time, O(T Hv) memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention import _common

# Tails beyond this many widths carry < exp(-12.5) ~ 4e-6 of a Gaussian's peak weight.
_TAIL_WIDTHS = 5.0


def _per_head(name: str, values, num_heads: int) -> np.ndarray:
    arr = np.asarray(values, np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.full(num_heads, arr[0])
    if arr.size != num_heads:
        raise ValueError(
            f"{name} must be a number or have one entry per query head N={num_heads}, "
            f"got {np.shape(values)}"
        )
    return arr


def default_offsets(num_heads: int, is_causal: bool) -> tuple[float, ...]:
    """The paper's centres: heads alternate between the previous and the next token
    (encoder), or the previous and the current token (causal decoder)."""
    pair = (-1.0, 0.0) if is_causal else (-1.0, 1.0)
    return tuple(pair[n % 2] for n in range(num_heads))


def gaussian_window(offsets: Sequence[float], widths: Sequence[float]) -> int:
    """Default truncation: ``ceil(max|mu| + 5 max sigma)`` keys on each side of a query."""
    return math.ceil(np.max(np.abs(offsets)) + _TAIL_WIDTHS * np.max(widths))


def gaussian_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    offsets: float | Sequence[float] | None = None,
    widths: float | Sequence[float] = 1.0,
    window_size: int | None = None,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    r"""Hard-coded Gaussian attention (You et al. 2020).

    .. math::

      \mathrm{out}_{t,n} = \frac{\sum_s m_{ts} g_n(s - p_t) v_s}{\sum_s m_{ts} g_n(s - p_t)},
      \qquad g_n(r) = \exp\!\Big(-\frac{(r - \mu_n)^2}{2 \sigma_n^2}\Big)

    where ``p_t = t + S - T`` (bottom-right aligned) and ``m_ts`` is 1 for keys with
    ``|s - p_t| <= window_size`` that are real (``padding_mask``) and, when causal,
    ``s <= p_t``. Equal to the softmax of the logits ``log g_n(s - p_t)`` under that mask,
    i.e. ``dot_product_attention`` with a fixed bias and no query-key term.

    Args:
      query: ``[B, T, N, H]``; only its shape is used.
      key: ``[B, S, K, H]``; only its shape is used.
      value: ``[B, S, K, Hv]``, K divides N.
      offsets: ``mu_n``, a number or one per query head; default alternates -1, +1
        (the previous and next token), or -1, 0 when causal.
      widths: ``sigma_n > 0``, a number or one per query head (paper: 1).
      window_size: truncation ``w``: keys further than ``w`` positions from the query
        are dropped; default ``ceil(max|mu| + 5 max sigma)``.
      padding_mask: bool ``[B, S]``, True = a real key.
      is_causal: drop keys after the query.
      scale: accepted for interface compatibility; there are no logits to scale.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype``, computed in float32; a query that sees no key
      returns zeros (so does one whose visible keys' Gaussian weights all underflow in
      float32, far outside ``mu +- 5 sigma``). Gradients reach ``value`` only.

    Raises:
      ValueError: bad shapes, offsets/widths of the wrong length, a width <= 0, or a
        negative window.

    Example:
      >>> import jax.numpy as jnp
      >>> v = jnp.arange(6.0).reshape(1, 6, 1, 1)
      >>> out = gaussian_attention(v, v, v, offsets=-1.0, widths=0.01, window_size=2)
      >>> out[0, :, 0, 0].tolist()  # each token takes the previous one
      [0.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    del scale
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    n = dims.num_heads
    mu = _per_head("offsets", default_offsets(n, is_causal) if offsets is None else offsets, n)
    sigma = _per_head("widths", widths, n)
    if np.any(sigma <= 0):
        raise ValueError(f"widths must be > 0, got {widths!r}")
    w = gaussian_window(mu, sigma) if window_size is None else int(window_size)
    if w < 0:
        raise ValueError(f"window_size must be >= 0, got {window_size!r}")
    if dims.empty:
        return _common.zeros_output(dims, value)

    # Taps r = s - p in [-w, w]; causal drops r > 0. Kernel [2w+1, N].
    rel = np.arange(-w, w + 1)[:, None]
    taps = np.exp(-((rel - mu[None]) ** 2) / (2.0 * sigma[None] ** 2))
    if is_causal:
        taps = np.where(rel > 0, 0.0, taps)
    # Peak tap 1 per head (the normalisation cancels it): keeps float32 from underflowing.
    taps = jnp.asarray(taps / taps.max(axis=0, keepdims=True), jnp.float32)

    valid = jnp.ones((dims.batch, dims.kv_len), jnp.float32)
    if padding_mask is not None:
        valid = padding_mask.astype(jnp.float32)
    # Zero padded values (not multiply): their contents, even inf, must not reach the output.
    v = value.astype(jnp.float32)
    if padding_mask is not None:
        v = jnp.where(padding_mask[:, :, None, None], v, 0.0)
    v = jnp.repeat(v, dims.groups, axis=2).reshape(dims.batch, dims.kv_len, n * dims.value_dim)
    # With T > S the first T - S queries sit before key 0: prepend that many empty keys.
    lead = max(dims.q_len - dims.kv_len, 0)
    v = jnp.pad(v, [(0, 0), (lead, 0), (0, 0)])
    valid = jnp.pad(valid, [(0, 0), (lead, 0)])
    length = dims.kv_len + lead

    def depthwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
        """out[:, p] = sum_r kernel[r] * x[:, p + r] per channel, zero outside [0, S)."""
        return jax.lax.conv_general_dilated(
            x,
            kernel[:, None, :],
            window_strides=(1,),
            padding=[(w, w)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=x.shape[-1],
            precision=jax.lax.Precision.HIGHEST,
        )

    total = depthwise(v, jnp.repeat(taps, dims.value_dim, axis=1))
    norm = depthwise(jnp.broadcast_to(valid[:, :, None], (dims.batch, length, n)), taps)
    total = total[:, length - dims.q_len :].reshape(dims.batch, dims.q_len, n, -1)
    norm = norm[:, length - dims.q_len :, :, None]
    seen = norm > 0
    out = jnp.where(seen, total / jnp.where(seen, norm, 1.0), 0.0)
    return out.astype(value.dtype)
