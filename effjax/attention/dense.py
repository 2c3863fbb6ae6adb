"""Dense scaled dot-product attention: the reference every effjax variant is tested against.

:func:`dot_product_attention` takes every argument of :func:`jax.nn.dot_product_attention`
with its meaning (it passes jax's own tests in its place) and adds effjax's conventions:
``padding_mask``, bottom-right causal alignment, zeros for a query that sees no key.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from effjax.attention import _blockwise, _common, chunked, local, pallas
from effjax.attention import masks as masks_lib

# jax's own function, kept so that implementation="cudnn" reaches jax's cuDNN kernel even
# where jax.nn.dot_product_attention has been replaced by this module's function.
_jax_dot_product_attention = jax.nn.dot_product_attention

IMPLEMENTATIONS = (None, "xla", "chunked", "pallas", "cudnn")


#: Input dtypes and head dims jax's cuDNN flash attention takes (``check_layout`` and
#: ``check_is_flash_attention`` in ``jax._src.cudnn.fused_attention_stablehlo``; 256 dims
#: only on Hopper and later, which a pure rule cannot see, so 128).
CUDNN_DTYPES = ("float16", "bfloat16")
CUDNN_MAX_HEAD_DIM = 128


def _cudnn_fits(
    dtypes, head_dim, value_dim, q_len, kv_len, dense_mask, window, is_causal, key_padding
) -> bool:
    """jax's cuDNN kernel takes the call and means what effjax means by it: one half
    dtype, head dims equal, <= 128 and a multiple of 8; no dense mask or bias and no
    padding, sequence lengths or per-key mask (each can leave a query with no key, which
    cuDNN averages and effjax zeros); ``T == S`` when causal or windowed (jax aligns
    top-left, effjax bottom-right); a window only when causal (cuDNN's is left-only)."""
    names = {jnp.dtype(d).name for d in dtypes}
    return (
        len(names) == 1
        and names <= set(CUDNN_DTYPES)
        and value_dim == head_dim
        and head_dim <= CUDNN_MAX_HEAD_DIM
        and head_dim % 8 == 0
        and not (dense_mask or key_padding)
        and (q_len == kv_len or not (is_causal or window))
        and (is_causal or not window)
        and min(q_len, kv_len) > 0
    )


def default_implementation(
    backend: str,
    *,
    kv_len: int,
    q_len: int | None = None,
    dtypes: tuple[Any, ...] = ("float32",),
    head_dim: int = 64,
    value_dim: int | None = None,
    dense_mask: bool = False,
    window: bool = False,
    is_causal: bool = False,
    key_padding: bool = False,
    residual: bool = False,
) -> str:
    """What ``implementation=None`` runs, from the backend and the call's facts alone:

    * TPU: ``"pallas"`` (splash attention) when :func:`~effjax.attention.pallas.splash_fits`
      (one dtype of float32/bfloat16, equal head dims) with no dense ``mask``/``bias``
      and no ``return_residual``;
    * GPU: ``"cudnn"`` (jax's cuDNN flash attention) when the call is one it takes with
      effjax's meaning: one dtype of float16/bfloat16, head dims equal, <= 128 and a
      multiple of 8, no dense mask or bias, no ``padding_mask``, sequence lengths or
      per-key mask, ``T == S`` if causal or windowed, a window only if causal;
    * otherwise (CPU, and the calls above that miss a condition): ``"chunked"`` (exact,
      O(T + S) memory, faster than XLA's dense attention on CPU) for real inputs with no
      dense mask or bias and no window (which has its own O(T w) path) whose keys span
      more than one key block (``S > chunked.DEFAULT_BLOCK_K``: with a single block the
      chunked pass is the dense one plus loop overhead); else ``"xla"``.

    Args:
      backend: ``jax.default_backend()``: ``"cpu"``, ``"gpu"`` or ``"tpu"``.
      kv_len: ``S``; ``q_len``: ``T`` (default ``S``).
      dtypes: the dtypes of query, key and value (one for all if they agree).
      head_dim: ``H``; ``value_dim``: ``Hv`` (default ``H``).
      dense_mask: a dense ``[T, S]`` mask or a bias is given.
      window: ``local_window_size`` is given.
      is_causal: the call is causal.
      key_padding: ``padding_mask``, sequence lengths or a per-key mask is given.
      residual: ``return_residual=True``.

    Example:
      >>> default_implementation("cpu", kv_len=4096)
      'chunked'
      >>> default_implementation("cpu", kv_len=4096, dense_mask=True)
      'xla'
      >>> default_implementation("gpu", kv_len=4096, dtypes=("bfloat16",), is_causal=True)
      'cudnn'
      >>> default_implementation("tpu", kv_len=4096)
      'pallas'
    """
    q_len = kv_len if q_len is None else q_len
    value_dim = head_dim if value_dim is None else value_dim
    same_dims = value_dim == head_dim
    if pallas.splash_fits(backend, dtypes, same_dims) and not (dense_mask or residual):
        return "pallas"
    if backend == "gpu" and _cudnn_fits(
        dtypes, head_dim, value_dim, q_len, kv_len, dense_mask, window, is_causal, key_padding
    ):
        return "cudnn"
    real = not any(jnp.issubdtype(jnp.dtype(d), jnp.complexfloating) for d in dtypes)
    chunked_fits = real and not (dense_mask or window) and kv_len > chunked.DEFAULT_BLOCK_K
    return "chunked" if chunked_fits else "xla"


def _as_rank4(name: str, x, letters: str) -> jax.Array:
    """Prepends unit axes up to rank 4, as jax does for unbatched inputs and small masks."""
    x = jnp.asarray(x)
    if x.ndim > 4:
        raise ValueError(f"{name} must have rank <= 4 [{', '.join(letters)}], got shape {x.shape}")
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _check_inexact(**arrays: jax.Array) -> None:
    for name, x in arrays.items():
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            raise ValueError(
                f"{name} must be floating point (or complex), got dtype {x.dtype} "
                f"and shape {x.shape}; cast it first (integer attention would truncate)"
            )


def _check_logit_array(name: str, x, dims: _common.AttentionDims) -> jax.Array:
    """A mask or bias of rank <= 4, broadcastable to ``[B, N, T, S]`` (each axis 1 or full)."""
    x = _as_rank4(name, x, "BNTS")
    full = (dims.batch, dims.num_heads, dims.q_len, dims.kv_len)
    if any(s not in (1, f) for s, f in zip(x.shape, full, strict=True)):
        raise ValueError(
            f"{name} must be broadcastable to [B, N, T, S] = {full} "
            f"(each axis 1 or full), got {x.shape}"
        )
    return x


def _check_seq_lengths(name: str, lengths, batch: int) -> jax.Array | None:
    if lengths is None:
        return None
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be an int array of shape [B] = ({batch},), "
            f"got {lengths.dtype} {lengths.shape}"
        )
    return lengths


def _group_logit_array(x: jax.Array, dims: _common.AttentionDims) -> jax.Array:
    """[B|1, N|1, T|1, S|1] -> [B|1, K|1, G|1, T|1, S|1], matching the grouped logits."""
    b, n, t, s = x.shape
    if n == 1:
        return x[:, :, None]
    return x.reshape(b, dims.num_kv_heads, dims.groups, t, s)


@dataclasses.dataclass(frozen=True)
class _Call:
    """A validated call, in rank-4 form.

    ``key_valid [B, S]`` gathers everything that masks whole keys (``padding_mask``,
    ``key_value_seq_lengths``, a mask broadcast over heads and queries); ``query_valid
    [B, T]`` comes from ``query_seq_lengths``; ``mask``/``bias`` are what stays dense.
    """

    dims: _common.AttentionDims
    query: jax.Array
    key: jax.Array
    value: jax.Array
    bias: jax.Array | None
    mask: jax.Array | None
    key_valid: jax.Array | None
    query_valid: jax.Array | None
    is_causal: bool
    window: tuple[int, int] | None
    scale: float

    def facts(self, residual: bool) -> dict[str, Any]:
        """What :func:`default_implementation` decides on, for this call."""
        dims = self.dims
        return {
            "kv_len": dims.kv_len,
            "q_len": dims.q_len,
            "dtypes": (self.query.dtype, self.key.dtype, self.value.dtype),
            "head_dim": dims.head_dim,
            "value_dim": dims.value_dim,
            "dense_mask": self.mask is not None or self.bias is not None,
            "window": self.window is not None,
            "is_causal": self.is_causal,
            "key_padding": self.key_valid is not None or self.query_valid is not None,
            "residual": residual,
        }

    def dense_mask(self) -> jax.Array | None:
        """Everything that masks logits, broadcastable to ``[B, K, G, T, S]`` (None: nothing)."""
        dims = self.dims
        structural = None
        if self.is_causal:
            structural = masks_lib.causal_mask(dims.q_len, dims.kv_len)
        if self.window is not None:
            window = masks_lib.window_mask(dims.q_len, dims.kv_len, self.window)
            structural = masks_lib.combine(structural, window)
        return masks_lib.combine(
            None if self.mask is None else _group_logit_array(self.mask, dims),
            None if self.key_valid is None else self.key_valid[:, None, None, None, :],
            None if self.query_valid is None else self.query_valid[:, None, None, :, None],
            None if structural is None else structural[None, None, None],
        )


def _prepare(
    query,
    key,
    value,
    bias,
    mask,
    *,
    scale,
    is_causal,
    query_seq_lengths,
    key_value_seq_lengths,
    local_window_size,
    padding_mask,
) -> _Call:
    query = _as_rank4("query", query, "BTNH")
    key = _as_rank4("key", key, "BSKH")
    value = _as_rank4("value", value, "BSKH")
    _check_inexact(query=query, key=key, value=value)
    dims = _common.check_qkv(query, key, value)

    if padding_mask is not None and jnp.ndim(padding_mask) == 1 and dims.batch == 1:
        padding_mask = jnp.asarray(padding_mask)[None]  # unbatched inputs: [S]
    key_valid = _common.check_padding_mask(padding_mask, dims)
    kv_lengths = _check_seq_lengths("key_value_seq_lengths", key_value_seq_lengths, dims.batch)
    if kv_lengths is not None:
        key_valid = masks_lib.combine(
            key_valid, jnp.arange(dims.kv_len)[None] < kv_lengths[:, None]
        )
    q_lengths = _check_seq_lengths("query_seq_lengths", query_seq_lengths, dims.batch)
    query_valid = None if q_lengths is None else jnp.arange(dims.q_len)[None] < q_lengths[:, None]

    if bias is not None:
        bias = _check_logit_array("bias", bias, dims)
    if mask is not None:
        mask = _check_logit_array("mask", mask, dims)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be bool (True = attend), got dtype {mask.dtype}")
        if mask.shape[1:3] == (1, 1):
            # The same for every head and query: it masks whole keys, which the O(T w)
            # local path can take as it takes padding.
            per_key = jnp.broadcast_to(mask[:, 0, 0], (dims.batch, dims.kv_len))
            key_valid, mask = masks_lib.combine(key_valid, per_key), None

    window = None
    if local_window_size is not None:
        window = masks_lib.normalize_window(local_window_size)
    return _Call(
        dims=dims,
        query=query,
        key=key,
        value=value,
        bias=bias,
        mask=mask,
        key_valid=key_valid,
        query_valid=query_valid,
        is_causal=_common.check_static_bool("is_causal", is_causal),
        window=window,
        scale=_common.resolve_scale(scale, dims.head_dim),
    )


def _compute_dtype(*arrays: jax.Array) -> Any:
    """float32 for half-precision inputs, otherwise the inputs' own (float64, complex)."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _dense_weights(call: _Call, precision=None) -> tuple[jax.Array, jax.Array]:
    """Softmax weights ``[B, K, G, T, S]`` and log-sum-exp ``[B, K, G, T]``, at least float32."""
    dtype = _compute_dtype(call.query, call.key)
    q = _common.group_heads(call.query, call.dims.num_kv_heads).astype(dtype)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, call.key.astype(dtype), precision=precision)
    logits = logits * jnp.asarray(call.scale, dtype)
    if call.bias is not None:
        logits = logits + _group_logit_array(call.bias, call.dims).astype(dtype)
    mask = call.dense_mask()
    return _blockwise.softmax_with_lse(logits, True if mask is None else mask)


def _local_path(call: _Call) -> tuple[jax.Array, jax.Array]:
    """``local_window_size`` without a dense mask or bias: O(T w), never a [T, S] array."""
    left, right = call.window
    out, lse = local.window_attention_with_lse(
        _common.group_heads(call.query, call.dims.num_kv_heads),
        call.key,
        call.value,
        key_valid=call.key_valid,
        window=(left, 0 if call.is_causal else right),
        dilation=1,
        block_size=None,
        scale=call.scale,
    )
    return _finish_grouped(call, out, lse)


def _finish_grouped(call: _Call, out: jax.Array, lse: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Zeros the queries past ``query_seq_lengths``; ``[B, T, K, G, .]`` -> ``[B, T, N, .]``."""
    if call.query_valid is not None:
        valid = call.query_valid[:, :, None, None]
        out = jnp.where(valid[..., None], out, 0.0)
        lse = jnp.where(valid, lse, _common.MASK_VALUE)
    return _common.ungroup_heads(out), lse.reshape((*lse.shape[:2], call.dims.num_heads))


def _chunked_path(call: _Call) -> tuple[jax.Array, jax.Array]:
    """No dense mask, bias or window: exact FlashAttention in O(T + S) memory (chunked.py)."""
    out, lse = chunked.chunked_attention_with_lse(
        _common.group_heads(call.query, call.dims.num_kv_heads),
        call.key,
        call.value,
        key_valid=call.key_valid,
        is_causal=call.is_causal,
        scale=call.scale,
    )
    return _finish_grouped(call, out, lse)


def _pallas_path(call: _Call) -> tuple[jax.Array, None]:
    """No dense mask or bias: JAX's splash-attention kernels (pallas.py)."""
    out = pallas.pallas_attention(
        call.query,
        call.key,
        call.value,
        padding_mask=call.key_valid,
        is_causal=call.is_causal,
        scale=call.scale,
        window_size=call.window,
    )
    if call.query_valid is not None:
        out = jnp.where(call.query_valid[:, :, None, None], out, 0.0)
    return out, None


def _run_path(call: _Call, implementation: str, return_residual: bool):
    """``(out [B, T, N, Hv], lse [B, T, N] or None)`` from the implementation asked for."""
    dense_mask = call.mask is not None or call.bias is not None
    dtype = jnp.result_type(call.query, call.key, call.value)
    real = not jnp.issubdtype(dtype, jnp.complexfloating)
    if implementation == "xla":
        use_local = call.window is not None and not dense_mask
        return _local_path(call) if use_local else _dense_path(call)
    limits = {"chunked": dense_mask or call.window is not None or not real, "pallas": dense_mask}
    if limits[implementation] or (implementation == "pallas" and return_residual):
        raise ValueError(
            f"implementation={implementation!r} takes no dense mask or bias"
            + (", no local_window_size and real inputs" if implementation == "chunked" else "")
            + (" and no return_residual" if implementation == "pallas" else "")
            + f" (got mask {None if call.mask is None else call.mask.shape}, bias "
            f"{None if call.bias is None else call.bias.shape}, local_window_size "
            f"{call.window}, dtype {call.query.dtype})"
        )
    return _chunked_path(call) if implementation == "chunked" else _pallas_path(call)


def _dense_path(call: _Call) -> tuple[jax.Array, jax.Array]:
    weights, lse = _dense_weights(call)
    value = call.value.astype(jnp.promote_types(weights.dtype, call.value.dtype))
    out = jnp.einsum("bkgts,bskh->btkgh", weights, value)
    lse = jnp.moveaxis(lse, -1, 1)  # [B, K, G, T] -> [B, T, K, G]
    return _common.ungroup_heads(out), lse.reshape((*lse.shape[:2], call.dims.num_heads))


def _cudnn(query, key, value, bias, mask, *, padding_mask, **kwargs):
    """jax's cuDNN flash attention, for the calls whose meaning it shares with effjax."""
    t, s = jnp.shape(query)[-3], jnp.shape(key)[-3]
    if padding_mask is not None or (kwargs["is_causal"] and t != s):
        raise ValueError(
            "implementation='cudnn' runs jax's cuDNN kernel, which has no padding_mask and "
            f"aligns is_causal top-left: pass key_value_seq_lengths, and T == S when causal "
            f"(got query {jnp.shape(query)}, key {jnp.shape(key)}, "
            f"padding_mask {None if padding_mask is None else jnp.shape(padding_mask)})"
        )
    return _jax_dot_product_attention(
        query, key, value, bias, mask, implementation="cudnn", **kwargs
    )


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    implementation: str | None = None,
    return_residual: bool = False,
    padding_mask: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Scaled dot-product attention :math:`\mathrm{softmax}(s\,QK^T + B)\,V` (Vaswani et al. 2017).

    A drop-in for :func:`jax.nn.dot_product_attention`: the same arguments, positional
    ``bias`` and ``mask``, the same results and gradients for every call jax accepts,
    except where effjax deliberately differs (each difference is tested):

    * ``is_causal`` and ``local_window_size`` are bottom-right aligned when ``T != S``:
      query ``t`` sits at key position ``t + S - T`` (jax aligns them top-left), so a
      few new queries attend correctly to a longer key cache.
    * A query that sees no key returns zeros with zero gradient, and its residual is
      the finite fill ``-0.7 * finfo(float32).max`` (jax averages every value there).
    * Logits and softmax run in at least float32 and ``value`` may have its own head
      dimension; complex inputs get the complex softmax ``exp(z) / sum exp(z)``
      (jax drops the imaginary part); integer inputs are refused.
    * ``local_window_size`` without a dense ``mask`` or ``bias`` is computed by
      :func:`~effjax.attention.local_attention` in O(T w) time and memory; with one,
      the call is O(T S) anyway and the window joins the dense mask.

    The dense path builds the full ``[B, N, T, S]`` logits, so it costs O(T S) time and
    memory: it is the reference every efficient variant is tested against.

    Shape letters: B batch, T query length, S key length, N query heads,
    K key/value heads (K divides N: GQA, MQA for K = 1), H head dimension.

    Args:
      query: ``[B, T, N, H]``, or ``[T, N, H]`` unbatched.
      key: ``[B, S, K, H]`` or ``[S, K, H]``.
      value: ``[B, S, K, Hv]`` or ``[S, K, Hv]``.
      bias: float, any rank <= 4 broadcastable to ``[B, N, T, S]`` (leading axes are
        added), added to the scaled logits.
      mask: bool, any rank <= 4 broadcastable to ``[B, N, T, S]``; True = attend.
      scale: logit scale, default ``1 / sqrt(H)``.
      is_causal: query ``t`` sees keys ``s <= t + (S - T)``.
      query_seq_lengths: int ``[B]``: queries ``t >= len[b]`` return zeros.
      key_value_seq_lengths: int ``[B]``: keys ``s >= len[b]`` are masked.
      local_window_size: ``w`` (= ``(w, w)``) or ``(left, right)``: query ``t`` sees keys
        within ``left`` before and ``right`` after its position.
      implementation: ``"xla"`` (effjax's computation in XLA operations),
        ``"chunked"`` (exact FlashAttention in pure JAX, O(T + S) memory; no dense
        ``mask``/``bias`` or window), ``"pallas"`` (JAX's splash-attention kernels, in
        interpret mode off TPU; no dense ``mask``/``bias``), ``"cudnn"`` (jax's cuDNN
        kernel on a GPU, with jax's conventions; no ``padding_mask``), or ``None``:
        the best path for the backend and the call, by :func:`default_implementation`
        (TPU: ``"pallas"``; GPU: ``"cudnn"`` for half-precision calls it takes with
        effjax's meaning; else ``"chunked"`` for more than 512 keys without a dense
        mask, bias or window, and ``"xla"``).
      return_residual: also return the log-sum-exp of each row's logits, ``[B, T, N]``
        in ``key.dtype`` with no gradient (FlashAttention-2, sec. 3.1.1), as jax does.
      padding_mask: bool ``[B, S]`` (``[S]`` unbatched); True = a real key.

    Returns:
      ``[B, T, N, Hv]`` (``[T, N, Hv]`` unbatched) in ``value.dtype``, and with
      ``return_residual`` the pair ``(output, lse)``.

    Raises:
      ValueError: at trace time, for wrong ranks, mismatched shapes or heads, non-float
        inputs, a non-bool mask, bad sequence lengths or an unknown ``implementation``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.attention import dot_product_attention
      >>> q = k = v = jnp.ones((2, 16, 4, 8))
      >>> dot_product_attention(q, k, v, is_causal=True).shape
      (2, 16, 4, 8)
      >>> out, lse = dot_product_attention(q[0], k[0], v[0], return_residual=True)
      >>> out.shape, lse.shape
      ((16, 4, 8), (16, 4))
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    cudnn = functools.partial(
        _cudnn,
        query,
        key,
        value,
        bias,
        mask,
        padding_mask=padding_mask,
        scale=scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        return_residual=return_residual,
    )
    if implementation == "cudnn":
        return cudnn()
    call = _prepare(
        query,
        key,
        value,
        bias,
        mask,
        scale=scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        padding_mask=padding_mask,
    )
    if implementation is None:
        facts = call.facts(return_residual)
        implementation = default_implementation(jax.default_backend(), **facts)
        if implementation == "cudnn":
            return cudnn()
    out, lse = _run_path(call, implementation, return_residual)
    out_shape = (*jnp.shape(query)[:-1], call.dims.value_dim)
    out = out.reshape(out_shape).astype(call.value.dtype)
    if not return_residual:
        return out
    lse = jax.lax.stop_gradient(lse).reshape(out_shape[:-1]).astype(call.key.dtype)
    return out, lse


def dot_product_attention_weights(
    query: jax.Array,
    key: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    padding_mask: jax.Array | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """The attention weights :func:`dot_product_attention` applies to the values.

    ``softmax(scale * q k^T + bias)`` under every mask, ``[B, N, T, S]`` (``[N, T, S]``
    unbatched) in at least float32 (complex for complex inputs); rows with no key are 0.
    Arguments as in :func:`dot_product_attention`; ``precision`` is passed to the
    ``q k^T`` einsum. Used by the flax ``attention_fn`` adapter, which needs the
    weights to sow and to drop out.

    Example:
      >>> import jax.numpy as jnp
      >>> q = k = jnp.ones((3, 2, 4))  # unbatched [T, N, H]
      >>> w = dot_product_attention_weights(q, k, is_causal=True)  # [N, T, S]
      >>> (w[0] * 6).round().astype(int).tolist()  # weights 1, 1/2, 1/3 in sixths
      [[6, 0, 0], [3, 3, 0], [2, 2, 2]]
    """
    call = _prepare(
        query,
        key,
        key,
        bias,
        mask,
        scale=scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        padding_mask=padding_mask,
    )
    weights, _ = _dense_weights(call, precision)
    _b, k, g, t, s = weights.shape
    return weights.reshape((*jnp.shape(query)[:-3], k * g, t, s))
