"""Gradient-based subword tokenization, GBST (Charformer, Tay et al. 2021, Sec. 2).

A byte-level model learns its own soft subwords: byte embeddings are pooled into blocks
of every candidate size, each block is scored, every byte takes a softmax mixture of
the blocks that cover it, and the sequence is mean-pooled by the downsampling rate, so
the transformer that follows runs on ``L / d_s`` positions instead of ``L`` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_FILL = -1e9  # finite fill for masked logits (never -inf: no NaN in fully masked rows)


def masked_block_mean(x: jax.Array, mask: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Mean of the real positions of each block of ``block`` positions.

    ``x [B, L, D]``, ``mask float [B, L]`` (1 = real) -> ``([B, ceil(L / block), D],
    [B, ceil(L / block)])``: the means (zero for a block with no real position) and
    whether each block holds a real position. The end is padded as masked positions.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(5.0).reshape(1, 5, 1)
      >>> mean, real = masked_block_mean(x, jnp.array([[1.0, 1, 1, 0, 1]]), 2)
      >>> mean[0, :, 0].tolist(), real[0].tolist()
      ([0.5, 2.0, 4.0], [True, True, True])
    """
    b, length, d = x.shape
    blocks = -(-length // block)
    pad = blocks * block - length
    x = jnp.pad(x * mask[..., None], ((0, 0), (0, pad), (0, 0))).reshape(b, blocks, block, d)
    mask = jnp.pad(mask, ((0, 0), (0, pad))).reshape(b, blocks, block)
    count = jnp.sum(mask, axis=-1)
    mean = jnp.sum(x, axis=2) / jnp.maximum(count, 1.0)[..., None]
    return mean, count > 0


class GBST(nn.Module):
    r"""Charformer's GBST: byte embeddings ``[B, L, D] -> [B, ceil(L / d_s), D]``.

    With ``X`` the (optionally convolved) byte embeddings (Tay et al. 2021, Sec. 2.1):

    1. For every block size ``b`` in ``block_sizes``, the blocks ``X_{b,i}`` are the
       means of ``b`` consecutive non-overlapping bytes, scored ``p_{b,i} = X_{b,i} w``
       by one shared linear map ``w [D]``; block representations and scores are repeated
       back to byte resolution (every byte gets the block of each size it falls in).
    2. Each byte mixes its candidate blocks: ``P = softmax_b(p)`` ``[L, M]``, optionally
       calibrated across positions, ``P <- softmax(P P^T) P`` (Sec. 2.1.3), and
       ``X_hat_i = sum_b P_{i,b} X_{b,i}``.
    3. ``X_hat`` is mean-pooled with stride ``downsample_rate`` (Sec. 2.2).

    Offsets (Sec. 2.1.1): with ``offset_conv`` the bytes first pass a depthwise 1-D
    convolution over the next ``max(block_sizes)`` bytes, so a block sees bytes past its
    fixed boundary. Padding bytes (``padding_mask`` False) take no part in any mean nor in
    the calibration; a pooled position is real when its window holds a real byte.

    Attributes:
      block_sizes: candidate block sizes (the paper's ``b in {1, 2, 3, 4}``).
      downsample_rate: ``d_s``, the stride of the final mean pooling.
      offset_conv: the depthwise convolution before the blocks.
      score_calibration: the ``softmax(P P^T) P`` step (O(L^2 M) time and memory).
      dtype: computation dtype (default the input's); param_dtype: parameter dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> gbst = GBST(block_sizes=(1, 2, 4), downsample_rate=2)
      >>> x = jnp.ones((2, 9, 16))
      >>> variables = gbst.init(jax.random.key(0), x)
      >>> y, mask = gbst.apply(variables, x)
      >>> y.shape, mask.shape
      ((2, 5, 16), (2, 5))
    """

    block_sizes: Sequence[int] = (1, 2, 3, 4)
    downsample_rate: int = 2
    offset_conv: bool = True
    score_calibration: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def _check(self, x: jax.Array, padding_mask: jax.Array | None) -> None:
        if x.ndim != 3:
            raise ValueError(f"x must be [B, L, D] byte embeddings, got shape {x.shape}")
        if padding_mask is not None and padding_mask.shape != x.shape[:2]:
            raise ValueError(
                f"padding_mask must be [B, L] = {x.shape[:2]}, got shape {padding_mask.shape}"
            )
        if not self.block_sizes or any(b < 1 for b in self.block_sizes):
            raise ValueError(f"block_sizes must be positive integers, got {self.block_sizes}")
        if self.downsample_rate < 1:
            raise ValueError(f"downsample_rate must be >= 1, got {self.downsample_rate}")

    @nn.compact
    def __call__(
        self, x: jax.Array, padding_mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Latent subwords of ``x [B, L, D]``; ``padding_mask`` bool ``[B, L]`` (True = real).

        Returns ``(y [B, ceil(L / d_s), D], mask bool [B, ceil(L / d_s)])``.
        """
        self._check(x, padding_mask)
        b, length, d = x.shape
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        mask = jnp.ones((b, length), dtype) if padding_mask is None else padding_mask.astype(dtype)
        if self.offset_conv:
            width = max(self.block_sizes)
            conv = nn.Conv(
                d,
                (width,),
                padding=[(0, width - 1)],  # byte i sees bytes i .. i + width - 1
                feature_group_count=d,
                dtype=dtype,
                param_dtype=self.param_dtype,
                name="offset_conv",
            )
            x = conv(x * mask[..., None])
        scorer = nn.Dense(
            1, use_bias=False, dtype=dtype, param_dtype=self.param_dtype, name="score"
        )
        candidates, scores = [], []
        for size in self.block_sizes:
            blocks, _ = masked_block_mean(x, mask, size)
            candidates.append(jnp.repeat(blocks, size, axis=1)[:, :length])
            scores.append(jnp.repeat(scorer(blocks)[..., 0], size, axis=1)[:, :length])
        candidates = jnp.stack(candidates, axis=2)  # [B, L, M, D]
        probs = jax.nn.softmax(jnp.stack(scores, axis=-1).astype(jnp.float32), axis=-1)
        if self.score_calibration:
            probs = _calibrate(probs, mask)
        latent = jnp.sum(candidates * probs.astype(dtype)[..., None], axis=2)
        pooled, pooled_mask = masked_block_mean(latent, mask, self.downsample_rate)
        return pooled, pooled_mask


def _calibrate(probs: jax.Array, mask: jax.Array) -> jax.Array:
    """``softmax(P P^T) P`` over the real positions: ``[B, L, M] -> [B, L, M]`` (float32)."""
    logits = jnp.einsum("bim,bjm->bij", probs, probs)
    logits = jnp.where(mask[:, None, :] > 0, logits, _FILL)
    return jnp.einsum("bij,bjm->bim", jax.nn.softmax(logits, axis=-1), probs)
