"""Sliding-window (local) attention, optionally causal and dilated, in O(T * window).

Each query sees the keys within ``left`` positions before and ``right`` positions
after its own (Longformer's sliding window, Beltagy et al. 2020; ``local_window_size``
of :func:`jax.nn.dot_product_attention`). The sequence is cut into blocks of ``b``
queries; block ``i`` attends only to the band of key blocks that can hold its window,
so time and memory grow as ``T * (b + left + right)`` instead of ``T * S``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effjax.attention import _blockwise, _common, pallas
from effjax.attention import masks as masks_lib

#: The paths of :func:`local_attention` (``implementation=``); None picks by
#: :func:`default_implementation`.
IMPLEMENTATIONS = (None, "xla", "pallas")


def default_implementation(
    backend: str, *, dtypes: tuple = ("float32",), same_head_dims: bool = True, dilation: int = 1
) -> str:
    """What ``implementation=None`` runs: ``"pallas"`` (splash attention's ``LocalMask``)
    on a TPU for an undilated window when :func:`~effjax.attention.pallas.splash_fits`
    (one dtype of float32/bfloat16, equal head dims), else ``"xla"`` (the blockwise
    path; on CPU and GPU always: no GPU kernel is wired in).

    Example:
      >>> default_implementation("tpu"), default_implementation("tpu", dilation=2)
      ('pallas', 'xla')
    """
    fits = pallas.splash_fits(backend, dtypes, same_head_dims) and dilation == 1
    return "pallas" if fits else "xla"


# Query block size when none is given: large enough that a block's matmuls are efficient,
# small enough that the band of keys a block reads (b + left + right, rounded up to blocks)
# stays close to the window itself. Half the reach: a (128, 128) window reads 320 keys per
# query in blocks of 64 (1.25x its 257) against 384 in blocks of 128 (1.5x), and measured
# faster on CPU at T=4096 (blocks of 32 read 288 but their matmuls are too small).
_MIN_BLOCK = 32
_MAX_BLOCK = 128


def default_block_size(left: int, right: int) -> int:
    """Block size used when ``block_size`` is None: about half the window reach (a power
    of two), in [32, 128]."""
    reach = max(left, right, 1)
    return int(min(max((1 << (reach - 1).bit_length()) // 2, _MIN_BLOCK), _MAX_BLOCK))


def _slice_padded(x: jax.Array, axis: int, start: int, length: int, value=0) -> jax.Array:
    """``x[start : start + length]`` along ``axis``, with ``value`` where that leaves ``x``."""
    size = x.shape[axis]
    before, after = max(0, -start), max(0, start + length - size)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    x = jnp.pad(x, widths, constant_values=value)
    return jax.lax.slice_in_dim(x, start + before, start + before + length, axis=axis)


def _contiguous_window(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    key_valid: jax.Array | None,
    left: int,
    right: int,
    offset: int,
    block_size: int,
    scale: float,
) -> tuple[jax.Array, jax.Array]:
    """Undilated window: query ``t`` sits at key position ``t + offset`` and sees ``rel`` in
    ``[-left, right]``. ``query [B, T, K, G, H]``, ``key/value [B, S, K, H]``, ``key_valid
    [B, S]`` or None. Returns ``out [B, T, K, G, Hv]`` float32 and ``lse [B, T, K, G]``.

    Heads lead from the start (``[B, K, ...]``: the inputs are transposed once, the bands
    are cut in the layout both matmuls read), the logits are key-major ``[.., C, b]`` and,
    without ``key_valid``, the mask is built from iotas that XLA fuses into the softmax
    instead of a ``[B, Q, C, b]`` array read per head (timed against the previous layout
    in ``experiments/results/bench_cpu_sparsity_layout``).
    """
    batch, q_len, heads, groups = query.shape[:4]
    kv_len = key.shape[1]
    # Keys further than the sequence reaches can never be seen: clip so a huge window
    # costs no more than the sequence.
    left = min(left, max(q_len - 1 + offset, 0))
    right = min(right, max(kv_len - 1 - offset, 0))
    b = min(block_size, q_len)
    num_blocks = -(-q_len // b)
    before, after = -(-left // b), -(-right // b)
    width = before + 1 + after

    # Key block c of the band of query block q holds positions (q + c - before) * b + offset
    # + j: take that stretch of keys once, padded where it leaves [0, S).
    start = offset - before * b
    span = (num_blocks + width - 1) * b

    def band(x, fill=0):  # [B, K, S, ...] -> [B, K, Q, width * b, ...]
        x = _slice_padded(x, 2, start, span, value=fill)
        x = x.reshape(*x.shape[:2], num_blocks + width - 1, b, *x.shape[3:])
        return jnp.concatenate([x[:, :, c : c + num_blocks] for c in range(width)], axis=3)

    key_band, value_band = (band(jnp.moveaxis(x, 1, 2)) for x in (key, value))
    # Key-major mask [Q, C, b]: rel = key position - query position depends only on (band
    # slot, query j); the slot's key position on (block q, slot).
    slot = jnp.arange(width * b)
    rel = slot[:, None] - before * b - jnp.arange(b)[None, :]
    key_pos = start + jnp.arange(num_blocks)[:, None] * b + slot[None, :]
    mask = ((rel >= -left) & (rel <= right))[None] & ((key_pos >= 0) & (key_pos < kv_len))[
        :, :, None
    ]
    mask = mask[None, None, None]  # [1, 1, 1, Q, C, b]
    if key_valid is not None:
        valid_band = band(key_valid[:, None], fill=False)  # [B, 1, Q, C]
        mask = mask & valid_band[:, :, None, :, :, None]

    dtype = jnp.promote_types(jnp.result_type(query, key), jnp.float32)
    q = jnp.transpose(query, (0, 2, 3, 1, 4)).astype(dtype) * jnp.asarray(scale, dtype)
    q = _common.pad_axis(q, 3, num_blocks * b)
    q = q.reshape(batch, heads, groups, num_blocks, b, q.shape[-1])
    logits = jnp.einsum("bkgqih,bkqjh->bkgqji", q, key_band.astype(dtype))
    unnormalised, inverse, lse = _blockwise.unnormalised_softmax(logits, mask, axis=-2)
    value_band = value_band.astype(jnp.promote_types(unnormalised.dtype, value_band.dtype))
    out = jnp.einsum("bkgqji,bkqjh->bkgqih", unnormalised, value_band)
    out = out * inverse[..., None]
    out = out.reshape(batch, heads, groups, num_blocks * b, -1)[:, :, :, :q_len]
    lse = lse.reshape(batch, heads, groups, num_blocks * b)[:, :, :, :q_len]
    return jnp.transpose(out, (0, 3, 1, 2, 4)), jnp.transpose(lse, (0, 3, 1, 2))


def _split_residues(x: jax.Array, dilation: int) -> jax.Array:
    """``[B, d * L, ...] -> [B * d, L, ...]``: row ``B * r`` holds positions ``r, r + d, ...``."""
    b, n = x.shape[:2]
    x = x.reshape(b, n // dilation, dilation, *x.shape[2:])
    return jnp.moveaxis(x, 2, 1).reshape(b * dilation, n // dilation, *x.shape[3:])


def _merge_residues(x: jax.Array, dilation: int) -> jax.Array:
    """Inverse of :func:`_split_residues`."""
    bd, n = x.shape[:2]
    x = x.reshape(bd // dilation, dilation, n, *x.shape[2:])
    return jnp.moveaxis(x, 1, 2).reshape(bd // dilation, n * dilation, *x.shape[3:])


def window_attention_with_lse(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    key_valid: jax.Array | None,
    window: tuple[int, int],
    dilation: int,
    block_size: int | None,
    scale: float,
) -> tuple[jax.Array, jax.Array]:
    """Sliding-window attention on grouped heads, with the log-sum-exp of each row.

    ``query [B, T, K, G, H]``, ``key/value [B, S, K, H]``, ``key_valid`` bool ``[B, S]``
    (or None); positions bottom-right aligned. Returns ``out [B, T, K, G, Hv]`` float32
    and ``lse [B, T, K, G]``. Used by :func:`local_attention` and by Longformer's window path.

    A dilated window only links positions that are equal modulo ``d`` (after aligning
    the queries), so it is ``d`` undilated windows over the strided sub-sequences.
    """
    left, right = window
    q_len, kv_len = query.shape[1], key.shape[1]
    if block_size is None:
        block_size = default_block_size(left, right)
    if dilation == 1:
        return _contiguous_window(
            query, key, value, key_valid, left, right, kv_len - q_len, block_size, scale
        )

    # Prepend `lead` dummy queries so the key offset becomes a multiple of d; then the
    # query at (padded) index t shares its residue t mod d with every key it sees.
    lead = (kv_len - q_len) % dilation
    q_total = _common.round_up(q_len + lead, dilation)
    kv_total = _common.round_up(kv_len, dilation)
    query = _common.pad_axis(jnp.pad(query, [(0, 0), (lead, 0)] + [(0, 0)] * 3), 1, q_total)
    valid = jnp.ones((query.shape[0], kv_len), bool) if key_valid is None else key_valid
    sub_offset = (kv_len - q_len - lead) // dilation
    out, lse = _contiguous_window(
        _split_residues(query, dilation),
        _split_residues(_common.pad_axis(key, 1, kv_total), dilation),
        _split_residues(_common.pad_axis(value, 1, kv_total), dilation),
        _split_residues(_common.pad_axis(valid, 1, kv_total, value=False), dilation),
        left,
        right,
        sub_offset,
        block_size,
        scale,
    )
    out = _merge_residues(out, dilation)[:, lead : lead + q_len]
    lse = _merge_residues(lse, dilation)[:, lead : lead + q_len]
    return out, lse


def _check_dilation(dilation: int) -> int:
    return _common.check_positive("dilation", dilation)


def local_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    window_size: int | tuple[int, int],
    is_causal: bool = False,
    padding_mask: jax.Array | None = None,
    dilation: int = 1,
    scale: float | None = None,
    block_size: int | None = None,
    implementation: str | None = None,
) -> jax.Array:
    r"""Sliding-window attention: query ``t`` attends to keys ``p + j d``, ``-left <= j <= right``.

    ``p = t + S - T`` is the query's key position (bottom-right aligned, as for decoding
    against a cache) and ``d`` the dilation (Longformer, Beltagy et al. 2020, sec. 3.1).
    Equals :func:`~effjax.attention.dot_product_attention` with
    ``mask=local_mask(T, S, window_size, dilation=d, is_causal=is_causal)``, at
    O(T (b + left + right) H) time and memory instead of O(T S H): queries are taken in
    blocks of ``b`` and each block reads only the band of key blocks its window touches.
    Backward is plain autodiff of the blockwise computation, so it is linear too.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]``, K divides N (GQA/MQA).
      value: ``[B, S, K, Hv]``.
      window_size: ``w`` (= ``(w, w)``) or ``(left, right)``, in units of ``d``
        positions; a window longer than the sequence is clipped to it.
      is_causal: drop keys after the query (``right`` becomes 0).
      padding_mask: bool ``[B, S]``, True = a real key.
      dilation: ``d >= 1``, the stride between window keys.
      scale: logit scale, default ``1 / sqrt(H)``.
      block_size: query block ``b`` of the ``"xla"`` path; default about half the
        window reach, in [32, 128]. Any ``T`` works: the last block is padded internally.
      implementation: ``"xla"`` (the blockwise computation above), ``"pallas"``
        (JAX's splash-attention kernel with a ``LocalMask``, in interpret mode off TPU;
        no dilation, value and key head dims equal), or ``None``: the backend's best,
        :func:`default_implementation` (``"pallas"`` on a TPU where it fits, else ``"xla"``).

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype`` (float32 logits and softmax).

    Raises:
      ValueError: bad shapes, a negative window, ``dilation < 1``, ``block_size <= 0``
        or an implementation this function lacks.

    Example:
      >>> import jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 100, 4, 8))
      >>> local_attention(q, k, v, window_size=(16, 0)).shape
      (1, 100, 4, 8)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    left, right = masks_lib.normalize_window(window_size)
    dilation = _check_dilation(dilation)
    if block_size is not None:
        block_size = _common.check_positive("block_size", block_size)
    _common.check_implementation("local_attention", implementation, IMPLEMENTATIONS)
    if implementation is None:
        implementation = default_implementation(
            jax.default_backend(),
            dtypes=(query.dtype, key.dtype, value.dtype),
            same_head_dims=dims.value_dim == dims.head_dim,
            dilation=dilation,
        )
    if is_causal:
        right = 0
    if implementation == "pallas":
        pallas.check_undilated(dilation)
        return pallas.pallas_attention(
            query, key, value, padding_mask=padding_mask, is_causal=is_causal, scale=scale,
            window_size=(left, right),
        )  # fmt: skip
    if dims.empty:
        return _common.zeros_output(dims, value)
    out, _ = window_attention_with_lse(
        _common.group_heads(query, dims.num_kv_heads),
        key,
        value,
        key_valid=padding_mask,
        window=(left, right),
        dilation=dilation,
        block_size=block_size,
        scale=_common.resolve_scale(scale, dims.head_dim),
    )
    return _common.ungroup_heads(out).astype(value.dtype)


def local_mask(
    q_len: int,
    kv_len: int,
    window_size: int | tuple[int, int],
    *,
    dilation: int = 1,
    is_causal: bool = False,
) -> jax.Array:
    """The dense bool ``[T, S]`` mask :func:`local_attention` equals (its contract).

    Example:
      >>> local_mask(4, 4, (1, 0)).astype(int).tolist()
      [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    return masks_lib.window_mask(
        q_len, kv_len, window_size, dilation=_check_dilation(dilation), is_causal=is_causal
    )
