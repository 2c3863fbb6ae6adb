"""The core of Transformer-XL's relative-position attention (Dai et al. 2019).

Not a registry variant: it is how a ``DecoderConfig(positions="relative")`` model (the
segment-recurrent Transformer-XL, ``mem_len``) attends, and it works in any
:class:`~effjax.layers.MultiHeadAttention` given as ``attention=RelativePositionCore()``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from effjax.attention.relative import (
    relative_distances,
    relative_position_attention,
    sinusoids,
)
from effjax.layers.cores.base import AttentionCore

#: The paper's code initialises ``u`` and ``v`` as N(0, 0.02^2).
_BIAS_INIT = nn.initializers.normal(0.02)


class RelativePositionCore(AttentionCore):
    """:func:`~effjax.attention.relative_position_attention` in a layer.

    Params: ``position_kernel`` ``W_R [N*H, N, H]`` projecting the sinusoidal distance
    embeddings ``R [S + T - 1, N*H]`` to ``r``, ``content_bias`` ``u [N, H]`` and
    ``position_bias`` ``v [N, H]``. None depends on the sequence or memory length, so a
    model trained with one memory length runs with another. Options: ``scale``.
    Keys may be longer than queries (``S = M + T``: a memory of ``M`` earlier positions
    before the segment); query ``i`` sits at key position ``i + S - T``.

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

    scale: float | None = None

    def prepare(self, query, key, value, deterministic):
        heads, head_dim = query.shape[2:]
        features = heads * head_dim
        kernel = self.param(
            "position_kernel",
            nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2)),
            (features, heads, head_dim),
        )
        embeddings = sinusoids(relative_distances(query.shape[1], key.shape[1]), features)
        return {
            **self.function_options(),
            "position_key": jnp.einsum("ld,dnh->lnh", embeddings, kernel),
            "content_bias": self.param("content_bias", _BIAS_INIT, (heads, head_dim)),
            "position_bias": self.param("position_bias", _BIAS_INIT, (heads, head_dim)),
        }
