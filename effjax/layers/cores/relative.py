"""The core of Transformer-XL's relative-position attention (Dai et al. 2019).

Not a registry variant: it is how a ``DecoderConfig(positions="relative")`` model (the
segment-recurrent Transformer-XL, ``mem_len``) attends, and it works in any
:class:`~effjax.layers.MultiHeadAttention` given as ``attention=RelativePositionCore()``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from effjax.attention.relative import (
    relative_distances,
    relative_position_attention,
    sinusoids,
)
from effjax.layers.cores.dense import DenseCore

#: The paper's code initialises ``u`` and ``v`` as N(0, 0.02^2).
_BIAS_INIT = nn.initializers.normal(0.02)


def _position_key(kernel: jax.Array, q_len: int, kv_len: int, shift=0) -> jax.Array:
    """``r [S + T - 1, N, H] = W_R R_d`` for :func:`relative_distances` plus ``shift``."""
    distances = relative_distances(q_len, kv_len) + shift
    return jnp.einsum("ld,dnh->lnh", sinusoids(distances, kernel.shape[0]), kernel)


class RelativePositionCore(DenseCore):
    """:func:`~effjax.attention.relative_position_attention` in a layer.

    Params: ``position_kernel`` ``W_R [N*H, N, H]`` projecting the sinusoidal distance
    embeddings ``R [S + T - 1, N*H]`` to ``r``, ``content_bias`` ``u [N, H]`` and
    ``position_bias`` ``v [N, H]``. None depends on the sequence or memory length, so a
    model trained with one memory length runs with another. Options: ``scale``,
    ``implementation`` (``"xla"`` only: the position terms are a dense bias).
    Keys may be longer than queries (``S = M + T``: a memory of ``M`` earlier positions
    before the segment); query ``i`` sits at key position ``i + S - T``.

    Decoding keeps dense attention's full key/value cache (:class:`DenseCore`); the ``T``
    new queries sit at cache positions ``index + t``, so their distance rows are those of
    the end-aligned layout shifted by ``index + T - L`` (``L`` cache slots), and cached
    decoding computes what a full causal pass over the same tokens computes.

    Example:
      >>> import jax
      >>> from effjax.layers import MultiHeadAttention
      >>> layer = MultiHeadAttention(num_heads=2, attention=RelativePositionCore(),
      ...                            is_causal=True)
      >>> x = jnp.ones((1, 4, 8))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> sorted(variables["params"]["core"])
      ['content_bias', 'position_bias', 'position_kernel']
    """

    function = staticmethod(relative_position_attention)
    implementations = ("xla",)

    def prepare(self, query, key, value, deterministic):
        heads, head_dim = query.shape[2:]
        kernel = self.param(
            "position_kernel",
            nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2)),
            (heads * head_dim, heads, head_dim),
        )
        return {
            **self.function_options(),
            "position_key": _position_key(kernel, query.shape[1], key.shape[1]),
            "content_bias": self.param("content_bias", _BIAS_INIT, (heads, head_dim)),
            "position_bias": self.param("position_bias", _BIAS_INIT, (heads, head_dim)),
        }

    def cached_options(self, kwargs, query, index, cache_length):
        # relative_position_attention puts query t at key position L - T + t; it is at
        # index + t, so every distance grows by index + T - L.
        kernel = self.get_variable("params", "position_kernel")
        shift = index + query.shape[1] - cache_length
        key = _position_key(kernel, query.shape[1], cache_length, shift)
        return {**kwargs, "position_key": key}
