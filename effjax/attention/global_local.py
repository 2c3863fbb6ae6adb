"""Longformer attention: a sliding window plus global tokens (Beltagy et al. 2020).

Global tokens (``global_mask`` bool ``[B, T]``) attend to every token, and every
token attends to them. The result is computed in three parts, never with a dense mask:

1. the window path: :func:`~effjax.attention.local.window_attention_with_lse` over
   the non-global keys (so a key in both sets is not counted twice);
2. the global-key path: every query against the ``M`` gathered global keys;
3. the global-query path: the ``M`` gathered global queries against every key,
   whose rows replace the others.

Parts 1 and 2 cover disjoint key sets and are merged with their log-sum-exps. Cost
O(T (w + M)) with ``w`` the window, instead of O(T^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention import _blockwise, _common, pallas
from effjax.attention import masks as masks_lib
from effjax.attention.local import window_attention_with_lse

#: The paths of :func:`global_local_attention` (``implementation=``); None picks by
#: :func:`default_implementation`.
IMPLEMENTATIONS = (None, "xla", "pallas")


def default_implementation(
    backend: str,
    *,
    dtypes: tuple = ("float32",),
    same_head_dims: bool = True,
    dilation: int = 1,
    is_causal: bool = False,
) -> str:
    """What ``implementation=None`` runs: ``"pallas"`` (window and global keys in one
    splash-attention kernel) on a TPU for a non-causal, undilated pattern when
    :func:`~effjax.attention.pallas.splash_fits` (one dtype of float32/bfloat16, equal
    head dims), else ``"xla"`` (on CPU and GPU always).

    Example:
      >>> default_implementation("tpu"), default_implementation("tpu", is_causal=True)
      ('pallas', 'xla')
    """
    fits = pallas.splash_fits(backend, dtypes, same_head_dims)
    return "pallas" if fits and dilation == 1 and not is_causal else "xla"


def _resolve_max_global(global_mask: jax.Array, max_global_tokens: int | None) -> int:
    """The static number ``M`` of global slots: given, or counted from a concrete mask."""
    try:
        count = int(np.max(np.sum(np.asarray(global_mask), axis=1), initial=0))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        count = None
    if max_global_tokens is None:
        if count is None:
            raise ValueError(
                "global_mask is traced (e.g. under jit): pass max_global_tokens, a static "
                "bound on the number of global tokens per row"
            )
        return count
    max_global_tokens = _common.check_static_int("max_global_tokens", max_global_tokens)
    if count is not None and count > max_global_tokens:
        raise ValueError(
            f"global_mask has {count} global tokens in a row, more than "
            f"max_global_tokens={max_global_tokens}"
        )
    return max_global_tokens


def _check_global_qkv(global_qkv, query, key, value):
    """``global_qkv`` as a triple shaped like ``(query, key, value)``; default: those."""
    if global_qkv is None:
        return query, key, value
    if len(global_qkv) != 3:
        raise ValueError(
            f"global_qkv must be (query_global, key_global, value_global), got {len(global_qkv)} "
            "arrays"
        )
    for name, given, like in zip(
        ("query_global", "key_global", "value_global"), global_qkv, (query, key, value), strict=True
    ):
        if given.shape != like.shape:
            raise ValueError(
                f"global_qkv: {name} has shape {given.shape}, must be {like.shape} like "
                f"{name.split('_')[0]}"
            )
    return global_qkv


def _xla_rows(q, key, value, window_keys, slot_pos, slot_key, window, is_causal, dilation,
              block_size, scale):  # fmt: skip
    """Every row over its window and the global keys, ``[B, T, K, G, Hv]`` float32: the
    window path over the non-global keys (1) and every query against the gathered
    global keys (2), merged by their log-sum-exps."""
    window_out, window_lse = window_attention_with_lse(
        q,
        key,
        value,
        key_valid=window_keys,
        window=window,
        dilation=dilation,
        block_size=block_size,
        scale=scale,
    )
    if slot_pos.shape[1] == 0:
        return window_out
    global_keys = _common.gather_rows(key, slot_pos).astype(jnp.float32)
    global_values = _common.gather_rows(value, slot_pos).astype(jnp.float32)
    key_mask = slot_key[:, None, :]
    if is_causal:
        key_mask = key_mask & (slot_pos[:, None, :] <= np.arange(q.shape[1])[None, :, None])
    logits = jnp.einsum("btkgh,bmkh->btkgm", q.astype(jnp.float32), global_keys) * scale
    weights, lse = _blockwise.softmax_with_lse(logits, key_mask[:, :, None, None, :])
    global_key_out = jnp.einsum("btkgm,bmkh->btkgh", weights, global_values)
    out, _ = _blockwise.merge_normalised([(window_out, window_lse), (global_key_out, lse)])
    return out


def _pallas_rows(q, key, value, window_keys, slot_pos, slot_key, window, scale):
    """As :func:`_xla_rows` (not causal, undilated) in one splash kernel: the M global
    keys are gathered in front of the keys, so the static mask is ``PrefixColumns(M) |
    LocalMask(offset=M)``; which slots and window keys are real is the segment ids."""
    q_len, num_slots = q.shape[1], slot_pos.shape[1]
    tiles = pallas.Tiles.of(q_len, num_slots + key.shape[1], None, None)
    keys, values = (
        jnp.concatenate([_common.gather_rows(x, slot_pos), x], axis=1) for x in (key, value)
    )
    out = pallas.splash_grouped(
        q,
        keys,
        values,
        key_valid=jnp.concatenate([slot_key, window_keys], axis=1),
        specs=(("prefix_local", tiles.shape, num_slots, window),),
        tiles=tiles,
        scale=scale,
        interpret=pallas.resolve_interpret(None),
    )
    has_key = pallas.window_row_has_key(window_keys, q_len, False, window)
    return pallas.zero_empty_rows(out, has_key | jnp.any(slot_key, axis=1)[:, None])


def _check_pallas(is_causal: bool, dilation: int, dims, key, value) -> None:
    if is_causal:
        raise ValueError(
            "global_local_attention: implementation='pallas' is not causal (the causal cut "
            "of the global columns depends on the traced global positions); use 'xla'"
        )
    pallas.check_undilated(dilation)
    pallas.check_same_head_dims(dims, key, value)


def global_local_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    window_size: int | tuple[int, int],
    global_mask: jax.Array,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    dilation: int = 1,
    scale: float | None = None,
    max_global_tokens: int | None = None,
    block_size: int | None = None,
    global_qkv: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    implementation: str | None = None,
) -> jax.Array:
    r"""Longformer self-attention: sliding window :math:`\cup` global rows and columns.

    Query ``t`` sees key ``s`` when ``s`` is in ``t``'s window (see
    :func:`~effjax.attention.local_attention`), or ``s`` is global, or ``t`` is global;
    with ``is_causal`` only keys ``s <= t`` of that set are kept (a global token then
    sees every earlier token and is seen by every later one). Equals
    :func:`~effjax.attention.dot_product_attention` with
    ``mask=global_local_mask(global_mask, window_size, ...)``.

    Global tokens are gathered into ``M`` static slots: the first ``M`` flagged tokens
    of each row, in order. ``M`` is ``max_global_tokens`` or, when ``global_mask`` is
    concrete, its largest row count. A concrete mask with more flags than ``M`` raises;
    under ``jit`` a traced mask cannot be checked, and flags beyond the first ``M`` of a
    row then act as ordinary (local) tokens.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, T, K, H]`` (self-attention: same length as ``query``).
      value: ``[B, T, K, Hv]``.
      window_size: ``w`` or ``(left, right)``, as for local attention.
      global_mask: bool ``[B, T]``, True = a global token.
      padding_mask: bool ``[B, T]``, True = a real key.
      is_causal: keep only keys at or before the query.
      dilation: window dilation ``d >= 1``.
      scale: logit scale, default ``1 / sqrt(H)``.
      max_global_tokens: static bound ``M``; required when ``global_mask`` is traced.
      block_size: query block of the window path (see ``local_attention``).
      global_qkv: optional ``(query_global, key_global, value_global)``, shaped like
        ``(query, key, value)``: the global queries' rows are computed from these
        instead (a global token's query against every token's global key and value).
        Longformer's checkpoints carry these separate projections for the global
        attention (Beltagy et al. 2020, §3.1, "linear projections for global
        attention"); windowed rows, including their view of the global keys, keep
        ``query``/``key``/``value``.
      implementation: ``"xla"`` (the three parts above), ``"pallas"`` (parts 1 and 2
        in one splash-attention kernel, the global keys gathered in front of the keys;
        interpret mode off TPU; not causal, no dilation, value and key head dims
        equal), or ``None``: :func:`default_implementation` (``"pallas"`` on a TPU where
        it fits, else ``"xla"``). Part 3 is XLA on both.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype``. Cost O(T (left + right + M) H).

    Raises:
      ValueError: bad shapes, ``T != S``, a bad window, a ``global_mask`` that is not
        bool ``[B, T]``, more global tokens than ``max_global_tokens``, or an
        implementation this function (or its options) lacks.

    Example:
      >>> import jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 64, 4, 8))
      >>> g = jnp.zeros((1, 64), bool).at[:, 0].set(True)  # a [CLS] token
      >>> global_local_attention(q, k, v, window_size=8, global_mask=g).shape
      (1, 64, 4, 8)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    _common.check_self_attention("global_local_attention", query, key, dims)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    global_mask = _common.check_token_mask("global_mask", global_mask, dims.batch, dims.q_len, "T")
    num_slots = _resolve_max_global(global_mask, max_global_tokens)
    left, right = masks_lib.normalize_window(window_size)
    dilation = _common.check_positive("dilation", dilation)
    if block_size is not None:
        block_size = _common.check_positive("block_size", block_size)
    global_query, global_key, global_value = _check_global_qkv(global_qkv, query, key, value)
    scale = _common.resolve_scale(scale, dims.head_dim)
    _common.check_implementation("global_local_attention", implementation, IMPLEMENTATIONS)
    if implementation is None:
        implementation = default_implementation(
            jax.default_backend(),
            dtypes=(query.dtype, key.dtype, value.dtype),
            same_head_dims=dims.value_dim == dims.head_dim,
            dilation=dilation,
            is_causal=is_causal,
        )
    if implementation == "pallas":
        _check_pallas(is_causal, dilation, dims, key, value)
    if is_causal:
        right = 0
    if dims.empty:
        return _common.zeros_output(dims, value)

    q = _common.group_heads(query, dims.num_kv_heads)
    key_valid = jnp.ones((dims.batch, dims.kv_len), bool) if padding_mask is None else padding_mask
    # Only the first M flags of a row are global; the rest (possible only with a traced
    # mask) are ordinary tokens, so the window path must keep them as keys.
    global_mask = global_mask & (jnp.cumsum(global_mask, axis=1) <= num_slots)
    # Slots: the positions of the first M global tokens of each row (stable sort keeps order).
    slot_pos = jnp.argsort(~global_mask, axis=1, stable=True)[:, :num_slots]
    slot_used = _common.gather_rows(global_mask, slot_pos)
    # Rows seen by a slot's key: a used global token that is a real key.
    slot_key = slot_used & _common.gather_rows(key_valid, slot_pos)
    window_keys = key_valid & ~global_mask  # a global key is seen through its slot only
    if implementation == "pallas":
        out = _pallas_rows(q, key, value, window_keys, slot_pos, slot_key, (left, right), scale)
    else:
        out = _xla_rows(
            q, key, value, window_keys, slot_pos, slot_key, (left, right), is_causal,
            dilation, block_size, scale,
        )  # fmt: skip
    if num_slots == 0:
        return _common.ungroup_heads(out).astype(value.dtype)
    positions = jnp.arange(dims.q_len)

    # 3. Global queries against every key; their rows replace the merged ones.
    global_queries = _common.group_heads(
        _common.gather_rows(global_query, slot_pos), dims.num_kv_heads
    )
    global_queries = global_queries.astype(jnp.float32)
    logits = jnp.einsum("bmkgh,bskh->bkgms", global_queries, global_key.astype(jnp.float32))
    logits = logits * scale
    query_mask = key_valid[:, None, :]
    if is_causal:
        query_mask = query_mask & (positions[None, None, :] <= slot_pos[:, :, None])
    weights, _ = _blockwise.softmax_with_lse(logits, query_mask[:, None, None])
    global_query_out = jnp.einsum("bkgms,bskh->bmkgh", weights, global_value.astype(jnp.float32))
    # Unused slots scatter out of range and are dropped.
    target = jnp.where(slot_used, slot_pos, dims.q_len)
    out = jax.vmap(lambda o, t, g: o.at[t].set(g, mode="drop"))(out, target, global_query_out)
    return _common.ungroup_heads(out).astype(value.dtype)


def global_local_mask(
    global_mask: jax.Array,
    window_size: int | tuple[int, int],
    *,
    dilation: int = 1,
    is_causal: bool = False,
) -> jax.Array:
    """The dense bool ``[B, 1, T, T]`` mask :func:`global_local_attention` equals (its contract).

    ``window | global rows | global columns``, and with ``is_causal`` also ``s <= t``.

    Example:
      >>> import jax.numpy as jnp
      >>> g = jnp.array([[True, False, False, False]])
      >>> global_local_mask(g, (1, 0))[0, 0].astype(int).tolist()
      [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]]
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    global_mask = jnp.asarray(global_mask)
    if global_mask.ndim != 2 or global_mask.dtype != jnp.bool_:
        raise ValueError(
            f"global_mask must be bool [B, T], got {global_mask.dtype} {global_mask.shape}"
        )
    seq_len = global_mask.shape[1]
    window = masks_lib.window_mask(seq_len, seq_len, window_size, dilation=dilation)
    mask = window[None, None] | masks_lib.global_tokens_mask(global_mask)
    if is_causal:
        mask = mask & masks_lib.causal_mask(seq_len, seq_len)[None, None]
    return mask
