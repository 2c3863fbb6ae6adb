"""Compact attention-mask descriptions and their dense expansion.

Efficient variants never build a ``[T, S]`` array: they describe which keys a
query sees compactly (a window ``(left, right)``, a dilation, global-token flags
``[B, T]``, a padding mask ``[B, S]``, block tables ``[..., T/b, r]``). The
functions here turn those descriptions into the dense bool masks that
:func:`effjax.attention.dot_product_attention` takes, so tests can check
``variant(q, k, v, ...) == dot_product_attention(q, k, v, mask=dense_mask)``.
The dense expansions cost O(T S) memory: use them in tests and small examples.

Conventions: True = attend. Positions are bottom-right aligned when ``T != S``:
query ``t`` sits at key position ``t + (S - T)`` (as in decoding against a cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention import _common


def combine(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of broadcastable bool masks, skipping ``None``; ``None`` if all are."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def query_positions(q_len: int, kv_len: int) -> np.ndarray:
    """Key-axis position of each query, bottom-right aligned: ``t + (S - T)``. int [T]."""
    return np.arange(q_len) + (kv_len - q_len)


def causal_mask(q_len: int, kv_len: int) -> jax.Array:
    """Dense causal mask bool [T, S]: query ``t`` sees keys ``s <= t + (S - T)``.

    Example:
      >>> causal_mask(2, 3).astype(int).tolist()
      [[1, 1, 0], [1, 1, 1]]
    """
    rel = np.arange(kv_len)[None, :] - query_positions(q_len, kv_len)[:, None]
    return jnp.asarray(rel <= 0)


def normalize_window(window_size: int | tuple[int, int]) -> tuple[int, int]:
    """``w -> (w, w)``; checks ``(left, right)`` are non-negative ints.

    ``left`` keys before and ``right`` keys after the query's own position are seen
    (the query's own key is always in the window), as ``local_window_size`` in
    :func:`jax.nn.dot_product_attention`.
    """
    if isinstance(window_size, (tuple, list)) and len(window_size) == 2:
        left, right = window_size
    else:
        left = right = window_size
    return (
        _common.check_static_int("window_size", left),
        _common.check_static_int("window_size", right),
    )


def window_mask(
    q_len: int,
    kv_len: int,
    window_size: int | tuple[int, int],
    *,
    dilation: int = 1,
    is_causal: bool = False,
) -> jax.Array:
    """Dense sliding-window mask bool [T, S].

    Query ``t`` (at key position ``p = t + S - T``) sees key ``p + j * dilation`` for
    ``-left <= j <= right`` (Longformer's dilated window); ``is_causal`` drops ``j > 0``.

    Example:
      >>> window_mask(4, 4, (1, 0)).astype(int).tolist()
      [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    """
    left, right = normalize_window(window_size)
    dilation = _common.check_positive("dilation", dilation)
    if is_causal:
        right = 0
    rel = np.arange(kv_len)[None, :] - query_positions(q_len, kv_len)[:, None]
    seen = (rel >= -left * dilation) & (rel <= right * dilation) & (rel % dilation == 0)
    return jnp.asarray(seen)


def global_tokens_mask(global_mask: jax.Array) -> jax.Array:
    """Longformer global tokens bool [B, T] -> bool [B, 1, T, T] (self-attention).

    A global token attends to every token, and every token attends to it.
    """
    g = jnp.asarray(global_mask)
    return jnp.logical_or(g[:, None, :, None], g[:, None, None, :])


def block_indices_to_block_mask(indices: jax.Array, num_kv_blocks: int) -> jax.Array:
    """Block table int [..., Tb, r] (key-block ids per query block) -> bool [..., Tb, Sb].

    Entries outside ``[0, num_kv_blocks)`` are ignored, so ``-1`` can mark unused slots.
    """
    hits = jax.nn.one_hot(indices, num_kv_blocks, dtype=jnp.int32)
    return jnp.sum(hits, axis=-2) > 0


def block_mask_to_dense(
    block_mask: jax.Array, block_size: int, q_len: int, kv_len: int
) -> jax.Array:
    """Block-level mask bool [..., Tb, Sb] -> token-level bool [..., T, S].

    Query ``t`` and key ``s`` are in blocks ``t // block_size`` and ``s // block_size``;
    trailing positions past ``T`` or ``S`` in the last blocks are cut off.
    """
    dense = jnp.repeat(jnp.repeat(block_mask, block_size, axis=-2), block_size, axis=-1)
    return dense[..., :q_len, :kv_len]


class BlockPattern:
    """A static pattern of whole blocks, indexed like a bool numpy array of ``shape``.

    Token ``(t, s)`` is seen when block ``(t // b, s // b)`` of ``block_mask`` bool
    ``[Tb, Sb]`` is (and, with ``is_causal``, ``s <= t``); positions past the blocks are
    not seen. Evaluated one slice at a time (``pattern[rows, cols]`` with two slices), so
    a kernel can read the tiles it needs without a dense ``[T, S]`` array; BigBird's
    ``"pallas"`` path hands it to splash attention.

    Example:
      >>> import numpy as np
      >>> p = BlockPattern(np.eye(2, dtype=bool), 2, (4, 4))
      >>> p[:, :].astype(int).tolist()
      [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """

    def __init__(
        self,
        block_mask: np.ndarray,
        block_size: int,
        shape: tuple[int, int],
        *,
        is_causal: bool = False,
    ):
        self.block_mask = np.asarray(block_mask, bool)
        self.block_size = _common.check_positive("block_size", block_size)
        self.shape = tuple(shape)
        self.is_causal = bool(is_causal)

    def _key(self):
        return (self.block_mask.shape, self.block_mask.tobytes(), self.block_size, self.shape,
                self.is_causal)  # fmt: skip

    def __eq__(self, other) -> bool:
        return isinstance(other, BlockPattern) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __getitem__(self, idx: tuple[slice, slice]) -> np.ndarray:
        rows, cols = (np.arange(n)[i] for n, i in zip(self.shape, idx, strict=True))
        q_blocks, k_blocks = self.block_mask.shape
        rb, cb = rows // self.block_size, cols // self.block_size
        inside = (rb < q_blocks)[:, None] & (cb < k_blocks)[None, :]
        seen = self.block_mask[np.minimum(rb, q_blocks - 1)][:, np.minimum(cb, k_blocks - 1)]
        seen = seen & inside
        if self.is_causal:
            seen = seen & (cols[None, :] <= rows[:, None])
        return seen
