"""A small Reformer decoder LM: LSH attention, reversible layers, chunked feed-forward.

(Kitaev, Kaiser & Levskaya, 2020, "Reformer: The Efficient Transformer".)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from effjax.layers import FeedForward, MultiHeadAttention, ReversibleStack


@dataclasses.dataclass(frozen=True)
class ReformerConfig:
    """Sizes and attention options of :class:`ReformerLM`.

    ``attention="lsh"`` uses ``num_hashes``/``num_buckets``/``chunk_size``;
    ``attention="dense"`` gives the same model (same parameters) with full
    attention, for evaluation against LSH.
    """

    vocab_size: int = 256
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 128
    max_len: int = 1024
    attention: str = "lsh"
    num_hashes: int = 2
    num_buckets: int = 8
    chunk_size: int = 32
    ff_chunk_size: int | None = 64
    dropout_rate: float = 0.0
    reversible: bool = True
    positions: str = "learned"  # or "sinusoidal" (fixed; lets a 1-layer model copy by offset)

    def attention_options(self) -> dict[str, Any]:
        if self.attention == "lsh":
            return {
                "num_hashes": self.num_hashes,
                "num_buckets": self.num_buckets,
                "chunk_size": self.chunk_size,
            }
        return {}


class _AttentionBranch(nn.Module):
    """F: LayerNorm -> causal multi-head attention -> dropout."""

    config: ReformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.config
        h = MultiHeadAttention(
            num_heads=c.num_heads,
            attention=c.attention,
            attention_options=c.attention_options(),
            is_causal=True,
            name="attention",
        )(nn.LayerNorm(name="norm")(x), deterministic=deterministic)
        return nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)


class _FeedForwardBranch(nn.Module):
    """G: LayerNorm -> chunked feed-forward (with output dropout)."""

    config: ReformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.config
        ff = FeedForward(
            d_ff=c.d_ff, chunk_size=c.ff_chunk_size, dropout_rate=c.dropout_rate, name="ff"
        )
        return ff(nn.LayerNorm(name="norm")(x), deterministic=deterministic)


class ReformerLM(nn.Module):
    """Decoder-only Reformer: ``tokens [B, T] -> logits [B, T, vocab]``.

    Token + learned position embeddings feed both halves of a
    :class:`~effjax.layers.ReversibleStack` whose F is causal LSH attention and
    whose G is a chunked feed-forward; the halves are concatenated, normalised and
    projected to the vocabulary (Kitaev et al. 2020, Sec. 4-5). Training needs the
    ``"attention"`` PRNG stream (fresh LSH rotations per step) and ``"dropout"``
    when ``dropout_rate > 0``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = ReformerLM(ReformerConfig(vocab_size=16, d_model=32, max_len=64))
      >>> tokens = jnp.zeros((2, 64), jnp.int32)
      >>> variables = model.init(jax.random.key(0), tokens)
      >>> model.apply(variables, tokens).shape
      (2, 64, 16)
    """

    config: ReformerConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
        c = self.config
        if tokens.ndim != 2 or tokens.shape[1] > c.max_len:
            raise ValueError(
                f"tokens must be [B, T] with T <= max_len={c.max_len}, got {tokens.shape}"
            )
        x = nn.Embed(c.vocab_size, c.d_model, name="embed")(tokens)
        positions = self.param("positions", nn.initializers.normal(0.02), (c.max_len, c.d_model))
        x = x + positions[None, : tokens.shape[1]]
        y1, y2 = ReversibleStack(
            f=lambda: _AttentionBranch(c),
            g=lambda: _FeedForwardBranch(c),
            num_layers=c.num_layers,
            reversible=c.reversible,
            name="layers",
        )(x, x, deterministic=deterministic)
        h = nn.LayerNorm(name="final_norm")(jnp.concatenate([y1, y2], axis=-1))
        return nn.Dense(c.vocab_size, name="logits")(h)

    def _positions(self, length: int) -> jax.Array:
        c = self.config
        if c.positions == "sinusoidal":
            return sinusoidal_positions(length, c.d_model)
        if c.positions != "learned":
            raise ValueError(f"positions must be 'learned' or 'sinusoidal', got {c.positions!r}")
        table = self.param("positions", nn.initializers.normal(0.02), (c.max_len, c.d_model))
        return table[:length]


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
    """Vaswani et al. (2017) position encodings, float32 [length, dim]."""
    freqs = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2) / dim))
    angles = jnp.arange(length)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[:, :dim]


def next_token_loss(
    logits: jax.Array, tokens: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean cross-entropy of ``logits[:, t]`` predicting ``tokens[:, t + 1]``.

    Args:
      logits: ``[B, T, V]``; tokens: int ``[B, T]``; weights: optional ``[B, T - 1]``
        per-target weights (e.g. only the second half of a copy task).
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    if weights is None:
        return jnp.mean(losses)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-9)
