r"""Synthesizer attention (Tay et al. 2021, "Synthesizer: Rethinking Self-Attention for
Transformer Models").

The attention weights are synthesised instead of computed from query-key dot products:

- **dense**: each token's row of logits comes from a per-head two-layer MLP of the token,
  ``B_t = W_2 relu(W_1 x_t + b_1) + b_2`` (``W_2 [F, L]``; parameters N(HF + F + FL + L));
- **random**: a ``[L, L]`` table per head, learned or frozen (parameters N L^2);
- **factorized dense**: two MLP heads of widths ``a`` and ``b`` with ``a b >= L``,
  ``B_t = tile(A_t, b) * repeat(B_t, a)`` (parameters N(HF + F + F(a+b) + a + b));
- **factorized random**: ``R = R_1 R_2^T`` with ``R_1, R_2 [L, k]`` (parameters 2 N L k);
- **mixture**: any of these plus ``alpha`` times the usual scaled dot-product logits.

``L`` is the maximum length: dense and random synthesizers have parameters that grow with
it (linearly and quadratically), and they cannot attend past it. The logits here are
``[T, S]`` per head, as in the paper: the method saves the query-key product (and, when
unmixed, the query and key projections), not memory. The logit makers below are pure
functions of their parameters; :mod:`effjax.layers` owns the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effjax.attention import _common
from effjax.attention.dense import dot_product_attention


def _check_length(what: str, needed: int, available: int) -> None:
    if needed > available:
        raise ValueError(
            f"{what} covers {available} positions but the sequence needs {needed}: "
            "synthesizer tables are sized for a maximum length"
        )


def _hidden(x: jax.Array, w1: jax.Array, b1: jax.Array) -> jax.Array:
    """Per-head ``relu(x W1 + b1)``: ``x [B,T,N,H]``, ``W1 [N,H,F]`` -> ``[B,N,T,F]`` float32."""
    hidden = jnp.einsum("btnh,nhf->bntf", x.astype(jnp.float32), w1.astype(jnp.float32))
    return jax.nn.relu(hidden + b1.astype(jnp.float32)[None, :, None])


def _head(hidden: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Per-head ``hidden W + b``: ``[B,N,T,F]``, ``W [N,F,O]`` -> ``[B,N,T,O]`` float32."""
    out = jnp.einsum("bntf,nfo->bnto", hidden, w.astype(jnp.float32))
    return out + b.astype(jnp.float32)[None, :, None]


def dense_synthesizer_logits(
    x: jax.Array,
    w1: jax.Array,
    b1: jax.Array,
    w2: jax.Array,
    b2: jax.Array,
    *,
    kv_len: int,
) -> jax.Array:
    """Dense synthesizer logits ``W2 relu(W1 x_t + b1) + b2`` of every token, cut to S keys.

    Args:
      x: ``[B, T, N, H]`` per-head token inputs (the layer passes its query projection).
      w1: ``[N, H, F]``, b1: ``[N, F]``, w2: ``[N, F, L]``, b2: ``[N, L]``; ``L >= S``.
      kv_len: S.

    Returns:
      float32 ``[B, N, T, S]``.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((1, 4, 2, 8))
      >>> w1, b1 = jnp.ones((2, 8, 16)), jnp.zeros((2, 16))
      >>> w2, b2 = jnp.ones((2, 16, 32)), jnp.zeros((2, 32))
      >>> dense_synthesizer_logits(x, w1, b1, w2, b2, kv_len=4).shape
      (1, 2, 4, 4)
    """
    _check_length("w2", kv_len, w2.shape[-1])
    return _head(_hidden(x, w1, b1), w2, b2)[..., :kv_len]


def factorized_dense_logits(
    x: jax.Array,
    w1: jax.Array,
    b1: jax.Array,
    wa: jax.Array,
    ba: jax.Array,
    wb: jax.Array,
    bb: jax.Array,
    *,
    kv_len: int,
) -> jax.Array:
    """Factorized dense synthesizer: ``tile(A_t, b) * repeat(B_t, a)`` cut to S keys.

    ``A_t [a]`` and ``B_t [b]`` are two heads on one hidden layer ``relu(W1 x_t + b1)``;
    key ``s`` gets ``A_t[s mod a] * B_t[s // a]`` (Tay et al. 2021, Sec. 3.1).

    Args:
      x: ``[B, T, N, H]``; w1 ``[N, H, F]``, b1 ``[N, F]``; wa ``[N, F, a]``, ba ``[N, a]``;
        wb ``[N, F, b]``, bb ``[N, b]`` with ``a * b >= S``.
      kv_len: S.

    Returns:
      float32 ``[B, N, T, S]``.
    """
    a, b = wa.shape[-1], wb.shape[-1]
    _check_length("wa x wb", kv_len, a * b)
    hidden = _hidden(x, w1, b1)
    factor_a, factor_b = _head(hidden, wa, ba), _head(hidden, wb, bb)
    logits = jnp.tile(factor_a, (1, 1, 1, b)) * jnp.repeat(factor_b, a, axis=-1)
    return logits[..., :kv_len]


def _table_rows(table: jax.Array, q_len: int, kv_len: int, positions) -> jax.Array:
    """Rows of ``table [N, L, ...]`` for the queries: ``[1, N, T, ...]`` bottom-right
    aligned (rows ``S - T .. S - 1``), or ``[B, N, T, ...]`` at ``positions [B, T]``."""
    if positions is None:
        return table[None, :, kv_len - q_len : kv_len]
    positions = jnp.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != q_len:
        raise ValueError(f"positions must have shape [B, T={q_len}], got {positions.shape}")
    return jnp.moveaxis(table[:, positions], 0, 1)


def random_synthesizer_logits(
    table: jax.Array, *, q_len: int, kv_len: int, positions: jax.Array | None = None
) -> jax.Array:
    """Random synthesizer logits: the first S columns of a per-head ``[N, L, L]`` table at
    rows ``S - T .. S - 1`` (bottom-right aligned) -> float32 ``[1, N, T, S]``, or at the
    query positions ``positions`` (int ``[B, T]``, < S; decoding) -> ``[B, N, T, S]``."""
    _check_length("table", kv_len, min(table.shape[-2:]))
    return _table_rows(table, q_len, kv_len, positions)[..., :kv_len].astype(jnp.float32)


def factorized_random_logits(
    r1: jax.Array,
    r2: jax.Array,
    *,
    q_len: int,
    kv_len: int,
    positions: jax.Array | None = None,
) -> jax.Array:
    """Factorized random synthesizer ``R1 R2^T`` (``r1, r2 [N, L, k]``) -> ``[1, N, T, S]``
    (rows as :func:`random_synthesizer_logits`; ``[B, N, T, S]`` with ``positions``)."""
    _check_length("r1/r2", kv_len, min(r1.shape[1], r2.shape[1]))
    rows = _table_rows(r1, q_len, kv_len, positions).astype(jnp.float32)
    return jnp.einsum("bntk,nsk->bnts", rows, r2[:, :kv_len].astype(jnp.float32))


def synthesizer_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    synthetic_logits: jax.Array,
    dot_product_weight: float = 0.0,
    mask: jax.Array | None = None,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    r"""Synthesizer attention :math:`\mathrm{softmax}(B + \alpha\, s\, QK^T)\, V`.

    ``B`` are the synthetic logits (from :func:`dense_synthesizer_logits`,
    :func:`random_synthesizer_logits`, their factorized forms, or a sum of them) and
    ``alpha = dot_product_weight`` mixes in the usual dot-product logits (0: a pure
    synthesizer, whose output depends on ``query`` and ``key`` only through ``B``).
    Equals :func:`~effjax.attention.dot_product_attention` with ``bias=B`` and
    ``scale = alpha s``, including its masks.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]``, K divides N (unused when ``alpha = 0``, but still checked).
      value: ``[B, S, K, Hv]``.
      synthetic_logits: float ``[B or 1, N or 1, T, S]``.
      dot_product_weight: alpha >= 0, the weight of the dot-product logits (a number or
        a scalar array, e.g. a learned mixture weight).
      mask: optional bool broadcastable to ``[B, N, T, S]``, True = attend (as
        :func:`~effjax.attention.dot_product_attention`'s; a decoding cache's mask).
      padding_mask: bool ``[B, S]``, True = a real key.
      is_causal: bottom-right aligned causal mask.
      scale: dot-product logit scale ``s``, default ``1 / sqrt(H)``.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype`` (float32 logits and softmax).

    Raises:
      ValueError: bad shapes (``synthetic_logits`` not broadcastable to ``[B, N, T, S]``)
        or a negative ``dot_product_weight``.

    Example:
      >>> import jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 6, 2, 4))
      >>> table = jnp.zeros((2, 8, 8))
      >>> b = random_synthesizer_logits(table, q_len=6, kv_len=6)
      >>> synthesizer_attention(q, k, v, synthetic_logits=b, is_causal=True).shape
      (1, 6, 2, 4)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    _common.check_qkv(query, key, value)
    if isinstance(dot_product_weight, (int, float)) and dot_product_weight < 0:
        raise ValueError(f"dot_product_weight must be >= 0, got {dot_product_weight!r}")
    # Scaling the queries (not `scale`) lets alpha be a traced, learned mixture weight.
    alpha = jnp.asarray(dot_product_weight, jnp.float32)
    return dot_product_attention(
        (query.astype(jnp.float32) * alpha).astype(query.dtype),
        key,
        value,
        bias=synthetic_logits,
        mask=mask,
        padding_mask=padding_mask,
        is_causal=is_causal,
        scale=scale,
    )
