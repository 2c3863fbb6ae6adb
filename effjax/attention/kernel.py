r"""Kernel attention in linear time: Performer FAVOR+ and linear transformers.

Both replace the softmax similarity ``exp(s q.k)`` by a feature-map product
``phi(q) . phi(k)`` and reorder the computation (Katharopoulos et al. 2020, eq. 4-6)::

  out_t = phi(q_t)^T sum_s phi(k_s) v_s^T  /  phi(q_t)^T sum_s phi(k_s)

so no ``[T, S]`` array is formed: time O((T + S) F Hv), memory O((T + S) F).
The causal form is a prefix sum (``_prefix_sum.causal_prefix_product``), and the
same sums are the ``O(1)``-per-token recurrent state used for decoding
(:class:`KernelState`). The two families differ only in ``phi``:

* :func:`performer_attention` (Choromanski et al. 2020, "Rethinking Attention with
  Performers", FAVOR+): positive random features
  ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(F)`` with ``W [F, H]`` from
  :func:`make_performer_features`, an unbiased estimate of the softmax kernel; or
  ``relu(W x)`` (``kernel="relu"``).
* :func:`linear_attention` (Katharopoulos et al. 2020, "Transformers are RNNs"):
  ``phi(x) = elu(x) + 1`` or any callable.

Stabilisation (``kernel="softmax"``): every factor of ``phi`` that is the same for
all keys, or the same for all features of one query, cancels between numerator
and denominator. So a query's features are divided by their largest value, and
all keys' features by the largest value over every (real) key and feature, which
does not depend on the query; the ratio stays exact while nothing overflows.
One offset serves the whole sequence, also when causal: if an early key's
largest feature logit lies more than ~87 (float32's exp range) below the
sequence's largest, its features underflow and a query that sees only such keys
returns zeros. Decoding (:class:`KernelState`) rescales as keys arrive instead,
like online softmax, and has no such limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from effjax.attention import _common
from effjax.attention import _prefix_sum as prefix

PERFORMER_KERNELS = ("softmax", "relu")
FeatureMapFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------- features


def make_performer_features(
    rng: jax.Array, num_features: int, head_dim: int, orthogonal: bool = True
) -> jax.Array:
    """Random projection ``W [num_features, head_dim]`` for :func:`performer_attention`.

    Rows are standard normal vectors (``orthogonal=False``) or, as in FAVOR+
    (Choromanski et al. 2020, sec. 2.4), blocks of ``head_dim`` exactly orthogonal
    directions (QR of a Gaussian matrix) with lengths drawn from the chi
    distribution with ``head_dim`` degrees of freedom, so each row is still
    marginally ``N(0, I)`` and the estimator stays unbiased with lower variance.

    Args:
      rng: PRNG key; the same key gives the same features (also under jit).
      num_features: F, number of random features (need not be a multiple of H).
      head_dim: H.
      orthogonal: block-orthogonal rows (default) or i.i.d. Gaussian rows.

    Returns:
      float32 ``[F, H]``.

    Example:
      >>> import jax
      >>> w = make_performer_features(jax.random.key(0), 256, 64)
      >>> w.shape
      (256, 64)
    """
    num_features = _common.check_positive("num_features", num_features)
    head_dim = _common.check_positive("head_dim", head_dim)
    if not orthogonal:
        return jax.random.normal(rng, (num_features, head_dim), jnp.float32)
    num_blocks = -(-num_features // head_dim)
    directions_rng, norms_rng = jax.random.split(rng)
    gaussian = jax.random.normal(directions_rng, (num_blocks, head_dim, head_dim), jnp.float32)
    q, r = jnp.linalg.qr(gaussian)
    # Fix QR's sign ambiguity so the directions are Haar-distributed.
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    directions = jnp.swapaxes(q, -1, -2).reshape(num_blocks * head_dim, head_dim)
    # |N(0, I_H)| is chi(H)-distributed: draw it as the norm of a Gaussian vector.
    norms = jnp.linalg.norm(
        jax.random.normal(norms_rng, (num_blocks * head_dim, head_dim), jnp.float32), axis=-1
    )
    return (directions * norms[:, None])[:num_features]


class _FeatureMap(NamedTuple):
    """``query: [B,T,K,G,H] -> [B,T,K,G,F]``; ``key: ([B,S,K,H], mask) -> ([B,S,K,F], [B,K])``.

    ``key`` returns features that are zero at padded keys and are relative to a
    per-(batch, head) log offset (0 when no stabiliser is needed): the true
    features are ``phi * exp(offset)``.
    """

    query: Callable[[jax.Array], jax.Array]
    key: Callable[[jax.Array, jax.Array | None], tuple[jax.Array, jax.Array]]


def _zero_offset(x: jax.Array) -> jax.Array:
    return jnp.zeros((x.shape[0], x.shape[2]), jnp.float32)


def _mask_keys(phi: jax.Array, padding_mask: jax.Array | None) -> jax.Array:
    if padding_mask is None:
        return phi
    return jnp.where(padding_mask[:, :, None, None], phi, 0.0)


def _pointwise_feature_map(fn: FeatureMapFn, query_scale: float = 1.0) -> _FeatureMap:
    def key(k, padding_mask):
        return _mask_keys(fn(k), padding_mask), _zero_offset(k)

    return _FeatureMap(query=lambda q: fn(q * query_scale), key=key)


def _softmax_feature_map(features: jax.Array, scale: float) -> _FeatureMap:
    # Split the logit scale evenly, (sqrt(s) q).(sqrt(s) k) = s q.k, and estimate exp of that.
    root = math.sqrt(scale)

    def project(x):
        return jnp.einsum("...h,fh->...f", x * root, features)

    def query(q):
        # exp(-|q|^2 / 2) and the 1/sqrt(F) of the paper are constant per query: they cancel.
        logits = project(q)
        return jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))

    def key(k, padding_mask):
        x = k * root
        logits = project(k) - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
        if padding_mask is not None:
            # Padded keys must not set the offset (they could underflow every real key).
            logits = jnp.where(padding_mask[:, :, None, None], logits, _common.MASK_VALUE)
        offset = jax.lax.stop_gradient(jnp.max(logits, axis=(1, 3)))  # [B, K]
        phi = jnp.exp(logits - offset[:, None, :, None])
        return _mask_keys(phi, padding_mask), offset

    return _FeatureMap(query=query, key=key)


def _relu_feature_map(features: jax.Array, scale: float) -> _FeatureMap:
    # relu(W x) is positively homogeneous, so the logit scale cancels in the ratio; it is
    # applied anyway so that every kernel reads `scale` the same way.
    root = math.sqrt(scale)
    return _pointwise_feature_map(
        lambda x: jax.nn.relu(jnp.einsum("...h,fh->...f", x * root, features))
    )


def _elu_plus_one(x: jax.Array) -> jax.Array:
    return jax.nn.elu(x) + 1.0


def _performer_feature_map(features, kernel: str, scale: float, head_dim: int) -> _FeatureMap:
    shape = tuple(jnp.shape(features))
    if len(shape) != 2 or shape[1] != head_dim:
        raise ValueError(
            f"features must have shape [num_features, head_dim] = [F, {head_dim}] "
            f"(make_performer_features), got {shape}"
        )
    features = jnp.asarray(features, jnp.float32)
    if kernel == "softmax":
        return _softmax_feature_map(features, scale)
    if kernel == "relu":
        return _relu_feature_map(features, scale)
    raise ValueError(f"kernel must be one of {PERFORMER_KERNELS}, got {kernel!r}")


def _linear_feature_map(feature_map: str | FeatureMapFn, scale: float | None) -> _FeatureMap:
    if feature_map == "elu":
        fn = _elu_plus_one
    elif callable(feature_map):
        fn = feature_map
    else:
        raise ValueError(f"feature_map must be 'elu' or a callable, got {feature_map!r}")
    return _pointwise_feature_map(fn, 1.0 if scale is None else float(scale))


# ----------------------------------------------------------------------------- attention


def _with_ones(value: jax.Array) -> jax.Array:
    """[B, S, K, Hv] -> [B, S, K, Hv + 1]: the last column sums the denominator."""
    return jnp.concatenate([value, jnp.ones((*value.shape[:-1], 1), value.dtype)], axis=-1)


def _normalize(y: jax.Array) -> jax.Array:
    """Numerator / denominator (last column); a zero denominator (no key) gives 0."""
    numerator, denominator = y[..., :-1], y[..., -1:]
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def _causal_sums(phi_q, phi_k, v1, prefix_state, chunk_size):
    """``[B,T,K,G,F], [B,T,K,F], [B,T,K,Hv+1], [B,K,F,Hv+1] -> [B,T,K,G,Hv+1]``.

    Query ``t`` sees the ``prefix_state`` and keys ``s <= t`` of this call.
    """
    y = prefix.causal_prefix_product(phi_q, phi_k[:, :, :, None], v1[:, :, :, None], chunk_size)
    if prefix_state is None:
        return y
    return y + prefix.apply_state(phi_q, prefix_state)


def _kernel_attention(
    fmap: _FeatureMap,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    dims: _common.AttentionDims,
    padding_mask: jax.Array | None,
    is_causal: bool,
    chunk_size: int,
) -> jax.Array:
    if dims.empty:
        return _common.zeros_output(dims, value)
    grouped = _common.group_heads(query, dims.num_kv_heads).astype(jnp.float32)
    phi_k, _ = fmap.key(key.astype(jnp.float32), padding_mask)  # the offset cancels here
    v1 = _with_ones(value.astype(jnp.float32))
    if not is_causal:
        state = prefix.outer_sum(phi_k[:, :, :, None], v1[:, :, :, None])
        # Head-major query features [B, K, G, T, F] make the largest contraction a plain
        # batched matmul (about 20% faster on CPU at T=4096, F=256 than [B, T, K, G, F]).
        phi_q = fmap.query(jnp.transpose(grouped, (0, 2, 3, 1, 4)))
        y = jnp.einsum("bkgtf,bkfy->btkgy", phi_q, state)
    else:
        phi_q = fmap.query(grouped)
        # Bottom-right alignment: query t sees keys s <= t + (S - T). Keys before the first
        # query's position are seen by every query (a prefix state); if T > S, the first
        # T - S queries see nothing (zero keys in front).
        extra = dims.kv_len - dims.q_len
        state = None
        if extra > 0:
            state = prefix.outer_sum(phi_k[:, :extra, :, None], v1[:, :extra, :, None])
            phi_k, v1 = phi_k[:, extra:], v1[:, extra:]
        elif extra < 0:
            widths = ((0, 0), (-extra, 0), (0, 0), (0, 0))
            phi_k, v1 = jnp.pad(phi_k, widths), jnp.pad(v1, widths)
        y = _causal_sums(phi_q, phi_k, v1, state, chunk_size)
    return _common.ungroup_heads(_normalize(y)).astype(value.dtype)


def performer_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    features: jax.Array,
    kernel: str = "softmax",
    is_causal: bool = False,
    padding_mask: jax.Array | None = None,
    scale: float | None = None,
    chunk_size: int = prefix.DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    r"""Performer FAVOR+ attention (Choromanski et al. 2020), linear in T and S.

    Estimates :math:`\mathrm{softmax}(s\,QK^T)V` with positive random features
    :math:`\phi(x) = \exp(Wx - |x|^2/2)/\sqrt{F}` applied to ``sqrt(s) q`` and
    ``sqrt(s) k``, so :math:`E[\phi(q)\cdot\phi(k)] = \exp(s\,q\cdot k)`; the error
    shrinks as ``F`` grows (``experiments/results/performer_error.md``).
    ``kernel="relu"`` uses :math:`\phi(x) = \mathrm{relu}(Wx)` instead (exactly the
    attention of that kernel, not an estimate of softmax).

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]`` (K divides N).
      value: ``[B, S, K, Hv]``.
      features: ``[F, H]`` from :func:`make_performer_features`.
      kernel: ``"softmax"`` (FAVOR+) or ``"relu"``.
      is_causal: bottom-right aligned causal attention, as chunked prefix sums
        (time O(T (C + F) Hv), memory O(T F); the backward pass stores no states).
      padding_mask: bool ``[B, S]``, True = a real key; padded keys contribute nothing.
      scale: logit scale, default ``1 / sqrt(H)``.
      chunk_size: C, steps per chunk of the causal prefix sum.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype`` (computed in float32). A query with no
      key (all padded) gives zeros.

    Raises:
      ValueError: bad shapes, ``features`` not ``[F, H]``, unknown ``kernel``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 128, 4, 16))
      >>> w = make_performer_features(jax.random.key(0), 64, 16)
      >>> performer_attention(q, k, v, features=w, is_causal=True).shape
      (1, 128, 4, 16)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    chunk_size = _common.check_positive("chunk_size", chunk_size)
    scale = _common.resolve_scale(scale, dims.head_dim)
    fmap = _performer_feature_map(features, kernel, scale, dims.head_dim)
    return _kernel_attention(fmap, query, key, value, dims, padding_mask, is_causal, chunk_size)


def linear_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    feature_map: str | FeatureMapFn = "elu",
    is_causal: bool = False,
    padding_mask: jax.Array | None = None,
    scale: float | None = None,
    chunk_size: int = prefix.DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    r"""Linear-transformer attention (Katharopoulos et al. 2020), linear in T and S.

    :math:`out_t = \sum_s (\phi(q_t)\cdot\phi(k_s))\, v_s / \sum_s \phi(q_t)\cdot\phi(k_s)`
    with :math:`\phi(x) = \mathrm{elu}(x) + 1` (the paper's map) or any callable
    ``[..., H] -> [..., F]``; computed as :math:`\phi(q_t)^T (\sum_s \phi(k_s) v_s^T)`.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]`` (K divides N).
      value: ``[B, S, K, Hv]``.
      feature_map: ``"elu"`` or a callable applied to the last axis of queries and keys.
      is_causal: bottom-right aligned causal attention (chunked prefix sums).
      padding_mask: bool ``[B, S]``, True = a real key; padded keys contribute nothing.
      scale: multiplies the queries before the feature map; default ``None`` = no
        scaling, as in the paper (unlike softmax attention's ``1 / sqrt(H)``).
      chunk_size: steps per chunk of the causal prefix sum.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype``. A query whose denominator is zero gives zeros.

    Raises:
      ValueError: bad shapes or an unknown ``feature_map``.

    Example:
      >>> import jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 128, 4, 16))
      >>> linear_attention(q, k, v, is_causal=True).shape
      (1, 128, 4, 16)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    chunk_size = _common.check_positive("chunk_size", chunk_size)
    fmap = _linear_feature_map(feature_map, scale)
    return _kernel_attention(fmap, query, key, value, dims, padding_mask, is_causal, chunk_size)


# ----------------------------------------------------------------------------- decoding


class KernelState(NamedTuple):
    """Recurrent state of causal kernel attention (Katharopoulos et al. 2020, sec. 3.4).

    The true sums are the stored ones times ``exp(log_scale)``; ``log_scale`` keeps
    FAVOR+ features in range while keys arrive one by one (0 for other kernels).

    Attributes:
      kv: ``[B, K, F, Hv]``, ``sum_s phi(k_s) v_s^T``.
      normalizer: ``[B, K, F]``, ``sum_s phi(k_s)``.
      log_scale: ``[B, K]``.
    """

    kv: jax.Array
    normalizer: jax.Array
    log_scale: jax.Array


def kernel_state_init(
    batch: int, num_kv_heads: int, num_features: int, value_dim: int
) -> KernelState:
    """The empty :class:`KernelState` (no key seen yet), all float32.

    ``num_features`` is F: ``features.shape[0]`` for Performer, H for
    ``feature_map="elu"``, the callable's output size otherwise.
    """
    return KernelState(
        kv=jnp.zeros((batch, num_kv_heads, num_features, value_dim), jnp.float32),
        normalizer=jnp.zeros((batch, num_kv_heads, num_features), jnp.float32),
        log_scale=jnp.full((batch, num_kv_heads), _common.MASK_VALUE, jnp.float32),
    )


def _decode_step(
    fmap: _FeatureMap, state: KernelState, query, key, value, dims, padding_mask, chunk_size
) -> tuple[jax.Array, KernelState]:
    expected = (dims.batch, dims.num_kv_heads, dims.value_dim)
    got = (state.kv.shape[0], state.kv.shape[1], state.kv.shape[3])
    if got != expected:
        raise ValueError(f"state has [B, K, Hv] = {got}, but query/key/value give {expected}")
    phi_q = fmap.query(_common.group_heads(query, dims.num_kv_heads).astype(jnp.float32))
    # Padded keys get zero features and do not set the offset: they add nothing to the state.
    phi_k, offset = fmap.key(key.astype(jnp.float32), padding_mask)
    # Bring the old sums and the new keys to a common offset (as online softmax does).
    log_scale = jnp.maximum(state.log_scale, offset)
    rescale_old = jnp.exp(state.log_scale - log_scale)[:, :, None, None]
    phi_k = phi_k * jnp.exp(offset - log_scale)[:, None, :, None]
    old = jnp.concatenate([state.kv, state.normalizer[..., None]], axis=-1) * rescale_old
    v1 = _with_ones(value.astype(jnp.float32))
    y = _causal_sums(phi_q, phi_k, v1, old, chunk_size)
    new = old + prefix.outer_sum(phi_k[:, :, :, None], v1[:, :, :, None])
    out = _common.ungroup_heads(_normalize(y)).astype(value.dtype)
    return out, KernelState(kv=new[..., :-1], normalizer=new[..., -1], log_scale=log_scale)


def performer_decode_step(
    state: KernelState,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    features: jax.Array,
    kernel: str = "softmax",
    padding_mask: jax.Array | None = None,
    scale: float | None = None,
    chunk_size: int = prefix.DEFAULT_CHUNK_SIZE,
) -> tuple[jax.Array, KernelState]:
    """Appends ``T`` new tokens to a causal Performer and returns their outputs.

    Equal (up to rounding) to the last ``T`` rows of :func:`performer_attention`
    with ``is_causal=True`` over every token so far; memory is O(1) in the
    number of past tokens.

    Args:
      state: from :func:`kernel_state_init` with F = ``features.shape[0]``, or a
        previous step.
      query: ``[B, T, N, H]``; key: ``[B, T, K, H]``; value: ``[B, T, K, Hv]``.
      features, kernel, scale: as in :func:`performer_attention`.
      padding_mask: bool ``[B, T]``, True = a real new token; padded ones contribute
        nothing to the outputs or the state (left-padded prompts).

    Returns:
      ``(out [B, T, N, Hv], new_state)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = make_performer_features(jax.random.key(0), 32, 8)
      >>> state = kernel_state_init(1, 2, 32, 8)
      >>> x = jnp.ones((1, 1, 2, 8))
      >>> out, state = performer_decode_step(state, x, x, x, features=w)
      >>> out.shape
      (1, 1, 2, 8)
    """
    dims = _common.check_qkv(query, key, value)
    scale = _common.resolve_scale(scale, dims.head_dim)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    fmap = _performer_feature_map(features, kernel, scale, dims.head_dim)
    return _decode_step(fmap, state, query, key, value, dims, padding_mask, chunk_size)


def linear_decode_step(
    state: KernelState,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    feature_map: str | FeatureMapFn = "elu",
    padding_mask: jax.Array | None = None,
    scale: float | None = None,
    chunk_size: int = prefix.DEFAULT_CHUNK_SIZE,
) -> tuple[jax.Array, KernelState]:
    """Appends ``T`` new tokens to a causal linear transformer (its RNN form).

    Equal (up to rounding) to the last ``T`` rows of :func:`linear_attention`
    with ``is_causal=True`` over every token so far; see :func:`performer_decode_step`
    (also for ``padding_mask``).

    Example:
      >>> import jax.numpy as jnp
      >>> state = kernel_state_init(1, 2, 8, 8)
      >>> x = jnp.ones((1, 1, 2, 8))
      >>> out, state = linear_decode_step(state, x, x, x)
      >>> out.shape
      (1, 1, 2, 8)
    """
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    fmap = _linear_feature_map(feature_map, scale)
    return _decode_step(fmap, state, query, key, value, dims, padding_mask, chunk_size)


def linear_num_features(feature_map: str | FeatureMapFn, head_dim: int) -> int:
    """F, the output size of ``feature_map`` on ``[head_dim]`` inputs (see kernel_state_init)."""
    fmap = _linear_feature_map(feature_map, None)
    return jax.eval_shape(fmap.query, jax.ShapeDtypeStruct((head_dim,), jnp.float32)).shape[-1]
