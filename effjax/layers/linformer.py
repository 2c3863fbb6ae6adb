"""Learned Linformer projections owned by :class:`~effjax.layers.MultiHeadAttention`.

The ``"linformer"`` prepare hook creates the sequence projections ``[k, max_len]``
of Wang et al. 2020 (sec. 4, "Additional Efficiency Techniques") and slices
their leading ``S`` columns for an input of length ``S <= max_len`` (a longer
input raises ValueError). Layer-only options (consumed here):

``proj_dim`` (k) and ``max_len``, required unless ``sharing="layerwise"``.

``sharing``, what one projection serves (default ``"headwise"``):

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
  ...     attention_options={"proj_dim": 16, "max_len": 64, "sharing": "key_value"})
  >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 48, 16)))
  >>> variables["params"]["proj"].shape
  (16, 64)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from effjax.attention import _common
from effjax.layers.variants import register_layer_hooks

SHARING_MODES = ("none", "headwise", "key_value", "layerwise")


def linformer_projection_init(rng: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Initialiser of a projection ``[..., k, max_len]``: normal with std ``1/sqrt(max_len)``.

    Each projected row is then a random average of the sequence with about the
    scale of one key (LeCun normal over the sequence axis).
    """
    return nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)(rng, shape, dtype)


def _leading_columns(proj: jax.Array, seq_len: int, max_len: int) -> jax.Array:
    if seq_len > max_len:
        raise ValueError(
            f"linformer input length S={seq_len} exceeds max_len={max_len} "
            f"(projection shape {tuple(proj.shape)})"
        )
    return proj[..., :seq_len]


def linformer_prepare(module, query, key, value, options: dict, deterministic: bool) -> dict:
    """Prepare hook of ``"linformer"``: the layer's projections (see module docstring)."""
    sharing = options.pop("sharing", "headwise")
    if sharing not in SHARING_MODES:
        raise ValueError(f"sharing must be one of {SHARING_MODES}, got {sharing!r}")
    seq_len, num_kv_heads = key.shape[1], key.shape[2]
    if sharing == "layerwise":
        if "projection" not in options:
            raise ValueError(
                "sharing='layerwise' needs attention_options['projection'] [k, max_len], "
                "a parameter owned by the model and passed to every layer"
            )
        proj = jnp.asarray(options.pop("projection"))
        if proj.ndim != 2:
            raise ValueError(f"projection must have shape [k, max_len], got {proj.shape}")
        proj = _leading_columns(proj, seq_len, proj.shape[1])
        return {"proj_k": proj, "proj_v": proj}

    for name in ("proj_dim", "max_len"):
        if name not in options:
            raise ValueError(f"linformer needs attention_options[{name!r}] (sharing={sharing!r})")
    proj_dim = _common.check_positive("proj_dim", options.pop("proj_dim"))
    max_len = _common.check_positive("max_len", options.pop("max_len"))
    dtype = module.param_dtype
    if sharing == "key_value":
        proj = module.param("proj", linformer_projection_init, (proj_dim, max_len), dtype)
        proj = _leading_columns(proj, seq_len, max_len)
        return {"proj_k": proj, "proj_v": proj}
    shape = (proj_dim, max_len) if sharing == "headwise" else (num_kv_heads, proj_dim, max_len)
    proj_k = module.param("proj_k", linformer_projection_init, shape, dtype)
    proj_v = module.param("proj_v", linformer_projection_init, shape, dtype)
    return {
        "proj_k": _leading_columns(proj_k, seq_len, max_len),
        "proj_v": _leading_columns(proj_v, seq_len, max_len),
    }


register_layer_hooks("linformer", prepare=linformer_prepare)
