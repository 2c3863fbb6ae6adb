"""Attention on JAX's Pallas splash-attention kernels (TPU; Pallas interpret mode elsewhere).

Splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) is the
block-sparse FlashAttention kernel JAX ships for TPUs: a static mask object is
reduced, at trace time, to a table of the ``[block_q, block_kv]`` tiles that hold any
visible key, and only those tiles are computed, forward and backward. effjax's
patterns map onto its mask objects as follows (bottom-right aligned like every
effjax function: query ``t`` sits at key position ``t + S - T``, the masks' offset):

==================================  =================================================
effjax                              splash attention
==================================  =================================================
dense                               ``FullMask``
``is_causal``                       ``CausalMask(offset=S - T)``
``window_size=(left, right)``       ``LocalMask(window_size=(left, right), offset=S - T)``
(dense, ``local_attention``)        (``right = 0`` when causal)
Longformer (``global_local``)       the ``M`` global keys are prepended to the keys:
                                    ``PrefixColumns(M) | LocalMask(offset=M)``; the
                                    global keys' own columns and padding are segment
                                    ids, the ``M`` global rows are computed in XLA
BigBird (``block_sparse``)          ``BlockPattern``, the block-level mask of
                                    :func:`~effjax.attention.block_sparse_mask`
                                    (one per key/value head with ``per_head``)
``padding_mask [B, S]``             ``SegmentIds``: queries in segment 1, real keys 1,
                                    padding keys 0 (also the keys padded to a block)
GQA/MQA (K < N)                     the MQA kernel per key/value head over its G heads
==================================  =================================================

Splash masks are static: BigBird's random blocks are drawn from a concrete ``rng``
at trace time, so a layer on this path uses one fixed pattern per layer (see
:class:`~effjax.layers.BlockSparseCore`). Not mapped (refused with a ValueError, use
``implementation="xla"``): dilated windows, a value head dimension different from
the key's, causal Longformer (its global columns' causal cut depends on the traced
global positions), BigBird patterns drawn from a traced key, LSH buckets. A query
that sees no key returns zeros, as everywhere in effjax (splash itself would
average the values there).

On TPU the kernel runs compiled; on CPU it runs in Pallas interpret mode (each
kernel step as ordinary XLA operations): exact, slow, and what the tests check
against the dense reference, forward and backward. A GPU Pallas kernel is not wired
in: on a GPU this function refuses (use ``"cudnn"`` or ``"chunked"``) unless asked for
interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention import _common
from effjax.attention import masks as masks_lib

# Splash attention's tiles span whole TPU vector lanes (its backward pass needs both).
KV_BLOCK_MULTIPLE = 128
QUERY_BLOCK_MULTIPLE = 128
DEFAULT_BLOCK = 512


#: The input dtypes splash attention runs on a TPU (float16 has no TPU matmul unit).
SPLASH_DTYPES = ("float32", "bfloat16")


def splash_fits(backend: str, dtypes: tuple[str, ...], same_head_dims: bool) -> bool:
    """Whether ``implementation=None`` may pick splash attention: on a TPU, for query, key
    and value of one dtype in :data:`SPLASH_DTYPES` and equal key/value head dims. The
    pattern's own conditions (no dilation, ...) are checked by each family's selector.

    Example:
      >>> splash_fits("tpu", ("bfloat16",), True), splash_fits("cpu", ("float32",), True)
      (True, False)
    """
    names = {jnp.dtype(d).name for d in dtypes}
    return backend == "tpu" and len(names) == 1 and names <= set(SPLASH_DTYPES) and same_head_dims


def _splash():
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel,
        splash_attention_mask,
    )

    return splash_attention_kernel, splash_attention_mask


def check_block(name: str, value: int | None, length: int, multiple: int) -> int:
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


def check_same_head_dims(dims: _common.AttentionDims, key, value) -> None:
    if dims.value_dim != dims.head_dim:
        raise ValueError(
            "implementation='pallas' (splash attention) needs value and key head dims to "
            f"match: key {key.shape}, value {value.shape}"
        )


def check_undilated(dilation: int) -> None:
    if dilation != 1:
        raise ValueError(
            f"implementation='pallas' has no dilated window (got dilation={dilation}): "
            "splash attention's LocalMask is contiguous; use implementation='xla'"
        )


@dataclasses.dataclass(frozen=True)
class PrefixColumns:
    """Static pattern: every query sees the first ``prefix`` keys (Longformer's global keys,
    gathered in front of the sequence). ``shape = (T, S)``; indexed like a numpy mask."""

    shape: tuple[int, int]
    prefix: int

    def __getitem__(self, idx: tuple[slice, slice]) -> np.ndarray:
        rows, cols = (np.arange(n)[i] for n, i in zip(self.shape, idx, strict=True))
        return np.broadcast_to(cols[None, :] < self.prefix, (rows.size, cols.size))


@functools.cache
def _pattern_mask_type():
    """A splash ``Mask`` wrapping an effjax pattern (anything with ``shape`` and numpy
    indexing by two slices), so the kernel reads the same description the reference
    expands."""
    _, mask_lib = _splash()

    class PatternMask(mask_lib.Mask):
        def __init__(self, pattern):
            self.pattern = pattern

        @property
        def shape(self):
            return tuple(self.pattern.shape)

        def __getitem__(self, idx):
            return self.pattern[idx]

        def __eq__(self, other):
            return isinstance(other, PatternMask) and self.pattern == other.pattern

        def __hash__(self):
            return hash(self.pattern)

    return PatternMask


def _head_mask(spec: tuple):
    """The splash mask of a hashable spec ``(kind, padded shape, ...)``."""
    _, mask_lib = _splash()
    kind, shape, *args = spec
    if kind == "full":
        return mask_lib.FullMask(shape)
    if kind == "causal":
        return mask_lib.CausalMask(shape, offset=args[0])
    if kind == "local":
        window, offset = args
        return mask_lib.LocalMask(shape, window, offset)
    if kind == "prefix_local":
        prefix, window = args
        prefix_mask = _pattern_mask_type()(PrefixColumns(shape, prefix))
        return mask_lib.LogicalOr(prefix_mask, mask_lib.LocalMask(shape, window, prefix))
    if kind == "pattern":
        return _pattern_mask_type()(args[0])
    raise AssertionError(kind)


@functools.lru_cache(maxsize=64)
def _kernel(spec: Hashable, groups: int, blocks: tuple[int, int], interpret: bool):
    """The splash MQA kernel of one static pattern (built once per pattern: building
    reduces the mask to its tile tables on the host). Built outside any trace, so its
    tables are constants that a later trace can reuse."""
    kernel_lib, mask_lib = _splash()
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
    with jax.ensure_compile_time_eval():
        return kernel_lib.make_splash_mqa_single_device(
            mask_lib.MultiHeadMask([_head_mask(spec)] * groups),
            block_sizes=block_sizes,
            mask_value=_common.MASK_VALUE,
            interpret=interpret,
        )


def resolve_interpret(interpret: bool | None) -> bool:
    """Interpret mode off TPU by default; a GPU needs it asked for (tests only)."""
    backend = jax.default_backend()
    if interpret is None:
        interpret = backend != "tpu"
    if backend == "gpu" and interpret:
        raise ValueError(
            "implementation='pallas' runs TPU splash-attention kernels (interpret mode is for "
            "tests); on a GPU use implementation='cudnn' or 'chunked', or pass interpret=True"
        )
    return bool(interpret)


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Tile sizes and the lengths padded to them."""

    block_q: int
    block_kv: int
    q_len: int
    kv_len: int

    @classmethod
    def of(cls, q_len: int, kv_len: int, block_q: int | None, block_kv: int | None) -> Tiles:
        bq = check_block("block_q", block_q, q_len, QUERY_BLOCK_MULTIPLE)
        bkv = check_block("block_kv", block_kv, kv_len, KV_BLOCK_MULTIPLE)
        return cls(bq, bkv, _common.round_up(q_len, bq), _common.round_up(kv_len, bkv))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.q_len, self.kv_len)


def splash_grouped(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    key_valid: jax.Array,
    specs: tuple[Hashable, ...],
    tiles: Tiles,
    scale: float,
    interpret: bool,
) -> jax.Array:
    """Splash attention on grouped heads under static mask specs (see :func:`_head_mask`).

    ``query [B, T, K, G, H]``, ``key/value [B, S, K, H]``, ``key_valid`` bool ``[B, S]``;
    ``specs`` holds one spec for every key/value head or one for all, each of shape
    ``tiles.shape``. Returns ``[B, T, K, G, H]``; rows that see no key are left as
    splash computes them (the caller zeros them).
    """
    kernel_lib, _ = _splash()
    q_len = query.shape[1]
    tp, sp = tiles.shape
    segments = kernel_lib.SegmentIds(
        q=jnp.ones((query.shape[0], tp), jnp.int32),
        kv=_common.pad_axis(key_valid, 1, sp, value=False).astype(jnp.int32),
    )
    # [B, T, K, G, H] -> [B, K, G, T, H]: the MQA kernel takes G heads over one key head.
    q = _common.pad_axis(jnp.moveaxis(query * jnp.asarray(scale, query.dtype), 1, 3), 3, tp)
    k, v = (jnp.moveaxis(_common.pad_axis(x, 1, sp), 1, 2) for x in (key, value))
    blocks = (tiles.block_q, tiles.block_kv)

    def run(spec, q, k, v):  # q [B, K', G, Tp, H], k/v [B, K', Sp, H]
        kernel = _kernel(spec, query.shape[3], blocks, interpret)
        per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
        return jax.vmap(per_head, in_axes=(0, 0, 0, 0))(q, k, v, segments)

    if len(specs) == 1:
        out = run(specs[0], q, k, v)
    else:  # One kernel per key/value head (each its own static pattern).
        heads = [
            run(spec, q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1])
            for h, spec in enumerate(specs)
        ]
        out = jnp.concatenate(heads, axis=1)
    return jnp.moveaxis(out[:, :, :, :q_len], 3, 1)


def window_row_has_key(
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


def zero_empty_rows(out: jax.Array, has_key: jax.Array) -> jax.Array:
    """``out [B, T, K, G, H]`` with zeros where ``has_key [B, T]`` is False."""
    return jnp.where(has_key[:, :, None, None, None], out, 0)


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
    check_same_head_dims(dims, key, value)
    window = None if window_size is None else masks_lib.normalize_window(window_size)
    tiles = Tiles.of(dims.q_len, dims.kv_len, block_q, block_kv)
    if dims.empty:
        return _common.zeros_output(dims, value)
    interpret = resolve_interpret(interpret)
    offset = dims.kv_len - dims.q_len
    if window is not None:
        spec = ("local", tiles.shape, (window[0], 0 if is_causal else window[1]), offset)
    elif is_causal:
        spec = ("causal", tiles.shape, offset)
    else:
        spec = ("full", tiles.shape)
    key_valid = padding_mask
    if key_valid is None:
        key_valid = jnp.ones((dims.batch, dims.kv_len), bool)
    out = splash_grouped(
        _common.group_heads(query, dims.num_kv_heads),
        key,
        value,
        key_valid=key_valid,
        specs=(spec,),
        tiles=tiles,
        scale=_common.resolve_scale(scale, dims.head_dim),
        interpret=interpret,
    )
    out = zero_empty_rows(out, window_row_has_key(key_valid, dims.q_len, bool(is_causal), window))
    return _common.ungroup_heads(out).astype(value.dtype)
