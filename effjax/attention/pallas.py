"""Attention on JAX's Pallas splash-attention kernels (TPU; Pallas interpret mode elsewhere).

Splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) is the
block-sparse FlashAttention kernel JAX ships for TPUs: a static mask object is
reduced, at trace time, to a table of the ``[block_q, block_kv]`` tiles that hold any
visible key, and only those tiles are computed, forward and backward. effjax's
patterns map onto its mask objects as follows (bottom-right aligned like every
effjax function: query ``t`` sits at key position ``t + S - T``, the masks' offset):

================================  ===================================================
effjax                            splash attention
================================  ===================================================
dense                             ``FullMask``
``is_causal``                     ``CausalMask(offset=S - T)``
``window_size=(left, right)``     ``LocalMask(window_size=(left, right), offset=S - T)``
                                  (``right = 0`` when causal)
``padding_mask [B, S]``           ``SegmentIds``: queries in segment 1, real keys 1,
                                  padding keys 0 (also the keys padded to a block)
GQA/MQA (K < N)                   the MQA kernel per key/value head over its G heads
================================  ===================================================

Not mapped (refused with a ValueError, use ``implementation="xla"``): dilated
windows, a value head dimension different from the key's, data-dependent patterns
(Longformer global tokens given as a traced ``[B, T]`` mask, BigBird random blocks
drawn from a traced key, LSH buckets). A query that sees no key returns zeros,
as everywhere in effjax (splash itself would average the values there).

On TPU the kernel runs compiled; on CPU it runs in Pallas interpret mode (each
kernel step as ordinary XLA operations): exact, slow, and what the tests check
against the dense reference, forward and backward. A GPU Pallas kernel is not wired
in: on a GPU this function refuses (use ``"cudnn"`` or ``"chunked"``) unless asked for
interpret mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from effjax.attention import _common
from effjax.attention import masks as masks_lib

# Splash attention's tiles span whole TPU vector lanes (its backward pass needs both).
KV_BLOCK_MULTIPLE = 128
QUERY_BLOCK_MULTIPLE = 128
DEFAULT_BLOCK = 512


def _splash():
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel,
        splash_attention_mask,
    )

    return splash_attention_kernel, splash_attention_mask


def _check_block(name: str, value: int | None, length: int, multiple: int) -> int:
    """A block size: the default (``DEFAULT_BLOCK``, cut to the padded length) or a
    positive multiple of ``multiple``."""
    if value is None:
        return min(DEFAULT_BLOCK, _common.round_up(length, multiple))
    value = _common.check_positive(name, value)
    if value % multiple:
        raise ValueError(
            f"{name} must be a multiple of {multiple} for splash attention, got {value}"
        )
    return value


@functools.lru_cache(maxsize=64)
def _kernel(
    q_len: int,
    kv_len: int,
    padded: tuple[int, int],
    groups: int,
    is_causal: bool,
    window: tuple[int, int] | None,
    blocks: tuple[int, int],
    interpret: bool,
):
    """The splash MQA kernel of one static pattern (built once per pattern: building
    reduces the mask to its tile tables on the host)."""
    kernel_lib, mask_lib = _splash()
    shape, offset = padded, kv_len - q_len
    if window is not None:
        left, right = window
        head_mask = mask_lib.LocalMask(shape, (left, 0 if is_causal else right), offset)
    elif is_causal:
        head_mask = mask_lib.CausalMask(shape, offset=offset)
    else:
        head_mask = mask_lib.FullMask(shape)
    bq, bkv = blocks
    block_sizes = kernel_lib.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    return kernel_lib.make_splash_mqa_single_device(
        mask_lib.MultiHeadMask([head_mask] * groups),
        block_sizes=block_sizes,
        mask_value=_common.MASK_VALUE,
        interpret=interpret,
    )


def _row_has_key(
    key_valid: jax.Array, q_len: int, is_causal: bool, window: tuple[int, int] | None
) -> jax.Array:
    """bool ``[B, T]``: query ``t`` sees at least one real key, from prefix counts of
    ``key_valid [B, S]`` over the range of key positions its pattern allows."""
    s = key_valid.shape[1]
    pos = jnp.asarray(masks_lib.query_positions(q_len, s))
    lo, hi = jnp.zeros_like(pos), jnp.full_like(pos, s - 1)
    if window is not None:
        lo, hi = pos - window[0], pos + window[1]
    if is_causal:
        hi = jnp.minimum(hi, pos)
    lo, hi = jnp.clip(lo, 0, s), jnp.clip(hi + 1, 0, s)
    counts = jnp.pad(jnp.cumsum(key_valid, axis=1), ((0, 0), (1, 0)))
    return (counts[:, hi] - counts[:, lo]) > 0


def pallas_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    window_size: int | tuple[int, int] | None = None,
    block_q: int | None = None,
    block_kv: int | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    r""":math:`\mathrm{softmax}(s\,QK^T)\,V` on JAX's splash-attention Pallas kernel.

    Equals :func:`~effjax.attention.dot_product_attention` (and, with
    ``window_size``, :func:`~effjax.attention.local_attention`), forward and
    gradients, computing only the ``[block_q, block_kv]`` tiles the pattern
    touches (the kernel's block-sparse FlashAttention; see the module docstring for
    the mapping of each pattern). Lengths are padded to the blocks and sliced back.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]``; K divides N.
      value: ``[B, S, K, H]`` (the same head dimension as the key).
      padding_mask: optional bool ``[B, S]``; True = a real key.
      is_causal: bottom-right aligned: query ``t`` sees keys ``s <= t + (S - T)``.
      scale: logit scale, default ``1 / sqrt(H)``.
      window_size: optional ``w`` (= ``(w, w)``) or ``(left, right)``: query ``t``
        sees keys ``t + S - T - left .. t + S - T + right`` (right is 0 if causal).
      block_q: query tile, a multiple of 128 (default 512, cut to the padded length).
      block_kv: key tile, a multiple of 128 (default 512, cut to the padded length).
      interpret: run in Pallas interpret mode; default: on CPU (compiled on TPU).

    Returns:
      ``[B, T, N, H]`` in ``value.dtype``; a query that sees no key gives zeros.

    Raises:
      ValueError: at trace time, for wrong shapes or heads, a value head dimension
        unlike the key's, a bad window or block size.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.attention import dot_product_attention, pallas_attention
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 16, 2, 8))
      >>> out = pallas_attention(q, k, v, is_causal=True)  # interpret mode off TPU
      >>> bool(jnp.allclose(out, dot_product_attention(q, k, v, is_causal=True), atol=1e-5))
      True
    """
    dims = _common.check_qkv(query, key, value)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    if dims.value_dim != dims.head_dim:
        raise ValueError(
            "implementation='pallas' (splash attention) needs value and key head dims to "
            f"match: key {key.shape}, value {value.shape}"
        )
    window = None if window_size is None else masks_lib.normalize_window(window_size)
    bq = _check_block("block_q", block_q, dims.q_len, QUERY_BLOCK_MULTIPLE)
    bkv = _check_block("block_kv", block_kv, dims.kv_len, KV_BLOCK_MULTIPLE)
    if dims.empty:
        return _common.zeros_output(dims, value)
    backend = jax.default_backend()
    if interpret is None:
        interpret = backend != "tpu"
    if backend == "gpu" and interpret:
        raise ValueError(
            "implementation='pallas' runs TPU splash-attention kernels (interpret mode is for "
            "tests); on a GPU use implementation='cudnn' or 'chunked', or pass interpret=True"
        )
    scale = _common.resolve_scale(scale, dims.head_dim)

    tp, sp = _common.round_up(dims.q_len, bq), _common.round_up(dims.kv_len, bkv)
    kernel = _kernel(
        dims.q_len, dims.kv_len, (tp, sp), dims.groups, bool(is_causal), window, (bq, bkv),
        bool(interpret),
    )  # fmt: skip
    key_valid = padding_mask
    if key_valid is None:
        key_valid = jnp.ones((dims.batch, dims.kv_len), bool)
    kernel_lib, _ = _splash()
    segments = kernel_lib.SegmentIds(
        q=jnp.ones((dims.batch, tp), jnp.int32),
        kv=_common.pad_axis(key_valid, 1, sp, value=False).astype(jnp.int32),
    )

    # [B, T, K, G, H] -> [B, K, G, T, H]: the MQA kernel takes G heads over one key head.
    q = _common.group_heads(query * jnp.asarray(scale, query.dtype), dims.num_kv_heads)
    q = _common.pad_axis(jnp.moveaxis(q, 1, 3), 3, tp)
    k, v = (jnp.moveaxis(_common.pad_axis(x, 1, sp), 1, 2) for x in (key, value))
    per_kv_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
    out = jax.vmap(per_kv_head, in_axes=(0, 0, 0, 0))(q, k, v, segments)
    out = jnp.moveaxis(out[:, :, :, : dims.q_len], 3, 1)
    has_key = _row_has_key(key_valid, dims.q_len, bool(is_causal), window)
    out = jnp.where(has_key[:, :, None, None, None], out, 0)
    return _common.ungroup_heads(out).astype(value.dtype)
