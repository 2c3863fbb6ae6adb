"""Relative-position attention of Transformer-XL (Dai et al. 2019, Sec. 3.3).

Query ``i`` sits at position ``i + S - T`` of the keys (bottom-right alignment, so the
``S - T`` leading keys are a memory of earlier positions) and key ``j`` at ``j``; their
distance is ``d = i + S - T - j``. The score is the paper's four terms

``A[i, j] = q_i.k_j + q_i.r_d + u.k_j + v.r_d = (q_i + u).k_j + (q_i + v).r_d``

(content, content-dependent position, global content bias ``u``, global position bias
``v``), where ``r_d = W_R R_d`` is a projected sinusoidal embedding of the distance.
Nothing depends on absolute positions, so hidden states cached from an earlier segment
keep their meaning when the next segment attends to them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effjax.attention.dense import dot_product_attention


def sinusoids(positions: jax.Array, dim: int) -> jax.Array:
    """``float32 [L, dim]`` encodings of (any, also negative) ``positions [L]``:
    ``sin(p / 10000^(2i/dim))`` in the first half of the features, ``cos`` in the second
    (Vaswani et al. 2017, Transformer-XL's ``R``).

    Example:
      >>> sinusoids(jnp.array([0.0, -1.0]), 4)[:, 0].tolist()  # sin(p)
      [0.0, -0.8414709568023682]
    """
    freqs = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2) / dim))
    angles = jnp.asarray(positions, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[:, :dim]


def relative_distances(q_len: int, kv_len: int) -> jax.Array:
    """``int32 [S + T - 1]``: the distances ``S - 1, S - 2, ..., -(T - 1)`` that
    :func:`relative_position_attention`'s ``position_key`` rows stand for, in that order
    (row ``l`` is distance ``S - 1 - l``)."""
    return jnp.arange(kv_len - 1, -q_len, -1, dtype=jnp.int32)


def relative_shift(x: jax.Array, kv_len: int) -> jax.Array:
    """``[..., T, S + T - 1] -> [..., T, S]`` with ``out[..., i, j] = x[..., i, j + T - 1 - i]``.

    Transformer-XL's "relative shift": column ``l`` of ``x`` scores distance
    ``S - 1 - l`` for every query, and query ``i`` needs distance ``i + S - T - j`` at key
    ``j``. Appending one zero column and reading the flattened rows with a stride of
    ``S + T - 1`` moves row ``i`` left by ``T - 1 - i``: exact, with no gather and no
    index array (the zero column is never read).

    Example:
      >>> x = jnp.arange(2 * 4).reshape(2, 4)  # T = 2, S = 3: distances 2, 1, 0, -1
      >>> relative_shift(x, 3).tolist()  # row 0 (distances 1, 0, -1), row 1 (2, 1, 0)
      [[1, 2, 3], [4, 5, 6]]
    """
    *lead, t, length = x.shape
    if length != kv_len + t - 1:
        raise ValueError(f"x must be [..., T, S + T - 1] with S={kv_len}, got shape {x.shape}")
    if t == 0:
        return jnp.zeros((*lead, 0, kv_len), x.dtype)
    padded = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (0, 1)])
    flat = padded.reshape(*lead, t * (length + 1))[..., t - 1 : t - 1 + t * length]
    return flat.reshape(*lead, t, length)[..., :kv_len]


def _check_position_args(query, key, position_key, content_bias, position_bias) -> None:
    if query.ndim != 4 or key.ndim != 4:
        raise ValueError(
            f"query and key must be [B, T, N, H] and [B, S, K, H], got {query.shape}, {key.shape}"
        )
    t, n, h = query.shape[1:]
    want = (key.shape[1] + t - 1, n, h)
    if position_key.shape != want:
        raise ValueError(
            f"position_key must be [S + T - 1, N, H] = {want} for query {query.shape} and "
            f"key {key.shape}, got {position_key.shape}"
        )
    for name, bias in (("content_bias", content_bias), ("position_bias", position_bias)):
        if bias.shape != (n, h):
            raise ValueError(f"{name} must be [N, H] = {(n, h)}, got {bias.shape}")


def relative_position_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    position_key: jax.Array,
    content_bias: jax.Array,
    position_bias: jax.Array,
    padding_mask: jax.Array | None = None,
    mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """Transformer-XL attention ``softmax(scale * A) V`` with the relative score ``A`` of the
    module docstring (Dai et al. 2019, Sec. 3.3 and Appendix B).

    Args:
      query: ``[B, T, N, H]``; query ``i`` is at key position ``i + S - T``.
      key, value: ``[B, S, K, H]`` (``K`` divides ``N``), e.g. ``[memory; segment]``.
      position_key: ``[S + T - 1, N, H]``, the projected distance embeddings ``r``; row
        ``l`` is distance ``S - 1 - l`` (:func:`relative_distances`).
      content_bias: ``u [N, H]``; position_bias: ``v [N, H]``.
      padding_mask: bool ``[B, S]``, True = a real key (empty memory slots are False).
      mask: bool, broadcastable to ``[B, N, T, S]``, True = may attend (a decoding
        cache's causal mask, where the queries do not sit at the keys' end).
      is_causal: query ``i`` sees keys ``j <= i + S - T`` (all memory, and the segment's
        tokens up to itself).
      scale: default ``1/sqrt(H)``.
      implementation: :func:`dot_product_attention`'s (the position terms are a dense
        bias, so None runs ``"xla"``).

    Returns:
      ``[B, T, N, H]``, ``value.dtype``. Equal to :func:`dot_product_attention` of
      ``query + u`` with the bias ``scale * (q_i + v).r_{i + S - T - j}``; the distance
      terms come from one ``[T, S + T - 1]`` product and :func:`relative_shift`.

    Example (zero position terms leave dot-product attention):
      >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
      >>> zeros = jnp.zeros((2, 4))
      >>> out = relative_position_attention(q, k, v, position_key=jnp.zeros((5, 2, 4)),
      ...     content_bias=zeros, position_bias=zeros, is_causal=True)
      >>> bool(jnp.allclose(out, dot_product_attention(q, k, v, is_causal=True), atol=1e-6))
      True
    """
    _check_position_args(query, key, position_key, content_bias, position_bias)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    position_scores = jnp.einsum(
        "btnh,lnh->bntl",
        query + position_bias.astype(query.dtype)[None, None],
        position_key.astype(query.dtype),
        preferred_element_type=jnp.float32,
    )
    bias = scale * relative_shift(position_scores, key.shape[1])
    return dot_product_attention(
        query + content_bias.astype(query.dtype)[None, None],
        key,
        value,
        bias=bias,
        mask=mask,
        padding_mask=padding_mask,
        is_causal=is_causal,
        scale=scale,
        implementation=implementation,
    )
