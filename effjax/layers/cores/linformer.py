"""The core of Linformer attention (``attention="linformer"``): learned projections.

The core owns the sequence projections ``[k, max_len]`` of Wang et al. 2020
(sec. 4, "Additional Efficiency Techniques") and slices their leading ``S``
columns for an input of length ``S <= max_len`` (a longer input raises).
``max_len`` defaults to the length seen at init. ``sharing`` says what one
projection serves (default ``"headwise"``):

=============  ======================================================================
``"none"``     one E and one F per key/value head (GQA: per K head, not per query
               head): params ``proj_k``, ``proj_v`` ``[K, k, max_len]``.
``"headwise"`` one E and one F shared by all heads of the layer: ``proj_k``,
               ``proj_v`` ``[k, max_len]``.
``"key_value"`` one projection for keys and values, all heads: ``proj`` ``[k, max_len]``.
``"layerwise"`` one projection for keys, values, all heads and all layers. A layer
               cannot own a parameter shared with its siblings, so the model owns it
               and passes it in: ``attention_options={"sharing": "layerwise",
               "projection": p}`` with ``p = self.param(...)`` ``[k, max_len]`` created
               by the parent module (see :func:`linformer_projection_init`); the
               gradients of all layers add up in that one parameter.
=============  ======================================================================

Example:
  >>> import jax, jax.numpy as jnp
  >>> from effjax.layers import MultiHeadAttention
  >>> layer = MultiHeadAttention(num_heads=2, attention="linformer",
  ...     attention_options={"proj_dim": 16, "sharing": "key_value"})
  >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 48, 16)))
  >>> variables["params"]["core"]["proj"].shape
  (16, 48)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from effjax.attention import benchspec, linformer_attention, registry
from effjax.attention.helpers import check_positive
from effjax.layers.cores.base import AttentionCore

SHARING_MODES = ("none", "headwise", "key_value", "layerwise")


def linformer_projection_init(rng: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Initialiser of a projection ``[..., k, max_len]``: normal with std ``1/sqrt(max_len)``.

    Each projected row is then a random average of the sequence with about the
    scale of one key (LeCun normal over the sequence axis).
    """
    return nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)(rng, shape, dtype)


def _leading_columns(proj: jax.Array, seq_len: int) -> jax.Array:
    if seq_len > proj.shape[-1]:
        raise ValueError(
            f"linformer input length S={seq_len} exceeds max_len={proj.shape[-1]} "
            f"(projection shape {tuple(proj.shape)})"
        )
    return proj[..., :seq_len]


class LinformerCore(AttentionCore):
    """:func:`~effjax.attention.linformer_attention` in a layer (see the module docstring).

    Options: ``proj_dim`` (k, 256 as in the paper), ``max_len`` (default: the init
    input's length), ``sharing`` ("headwise"), ``projection`` (layerwise sharing's
    array), ``param_dtype``, ``scale``. Linformer has no causal form.
    """

    function = staticmethod(linformer_attention)
    layer_options = ("proj_dim", "max_len", "sharing", "projection", "param_dtype")

    proj_dim: int = 256
    max_len: int | None = None
    sharing: str = "headwise"
    projection: jax.Array | None = None
    param_dtype: jnp.dtype = jnp.float32
    scale: float | None = None

    def check(self):
        if self.sharing not in SHARING_MODES:
            raise ValueError(f"sharing must be one of {SHARING_MODES}, got {self.sharing!r}")
        check_positive("proj_dim", self.proj_dim)
        if self.max_len is not None:
            check_positive("max_len", self.max_len)

    def prepare(self, query, key, value, deterministic):
        options = self.function_options()
        seq_len, num_kv_heads = key.shape[1], key.shape[2]
        if self.sharing == "layerwise":
            if self.projection is None:
                raise ValueError(
                    "sharing='layerwise' needs attention_options['projection'] [k, max_len], "
                    "a parameter owned by the model and passed to every layer"
                )
            proj = jnp.asarray(self.projection)
            if proj.ndim != 2:
                raise ValueError(f"projection must have shape [k, max_len], got {proj.shape}")
            proj = _leading_columns(proj, seq_len)
            return {**options, "proj_k": proj, "proj_v": proj}
        max_len = self.max_len or seq_len
        if self.sharing == "key_value":
            shape = (self.proj_dim, max_len)
            proj = self.param("proj", linformer_projection_init, shape, self.param_dtype)
            proj = _leading_columns(proj, seq_len)
            return {**options, "proj_k": proj, "proj_v": proj}
        shape = (self.proj_dim, max_len)
        if self.sharing == "none":
            shape = (num_kv_heads, *shape)
        proj_k = self.param("proj_k", linformer_projection_init, shape, self.param_dtype)
        proj_v = self.param("proj_v", linformer_projection_init, shape, self.param_dtype)
        return {
            **options,
            "proj_k": _leading_columns(proj_k, seq_len),
            "proj_v": _leading_columns(proj_v, seq_len),
        }


BENCH_K = 256


def _bench_options(rng, shape: benchspec.Shape):
    kk, kv = jax.random.split(rng)
    proj_shape = (min(BENCH_K, shape.seq_len), shape.seq_len)
    scale = shape.seq_len**-0.5
    return {
        "proj_k": jax.random.normal(kk, proj_shape) * scale,
        "proj_v": jax.random.normal(kv, proj_shape) * scale,
    }


def _bench_flops(shape: benchspec.Shape, options) -> float:
    k = min(BENCH_K, shape.seq_len)
    projections = 2 * 2.0 * shape.batch * shape.num_kv_heads * k * shape.seq_len * shape.head_dim
    return projections + benchspec.pairs_flops(shape, k)


BENCH = benchspec.BenchSpec(_bench_options, _bench_flops, benchspec.fixed(k=BENCH_K))

registry.attach("linformer", core=LinformerCore, bench=BENCH)
