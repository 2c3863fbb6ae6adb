r"""Linformer: attention over a low-rank projection of the sequence (Wang et al. 2020).

"Linformer: Self-Attention with Linear Complexity" projects the ``S`` keys and
values along the sequence axis to ``k`` rows, ``K' = E K``, ``V' = F V`` with
learned ``E, F [k, S]``, and attends over those::

  out = softmax(s Q (E K)^T) (F V)        time O(T k H + k S H), memory O((T + S) k)

The projections belong to the model (:mod:`effjax.layers.linformer` owns them);
this function takes them as arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effjax.attention import _common
from effjax.attention.dense import dot_product_attention


def _check_projection(name: str, proj, dims: _common.AttentionDims) -> jax.Array:
    shape = tuple(jnp.shape(proj))
    per_head = len(shape) == 3 and shape[0] == dims.num_kv_heads
    if not (len(shape) == 2 or per_head) or shape[-1] != dims.kv_len:
        raise ValueError(
            f"{name} must have shape [k, S] or [K, k, S] with S = {dims.kv_len}, "
            f"K = {dims.num_kv_heads}, got {shape}"
        )
    return jnp.asarray(proj)


def _project(proj: jax.Array, x: jax.Array) -> jax.Array:
    """``[k, S]`` or ``[K, k, S]`` on the sequence axis: ``[B, S, K, H] -> [B, k, K, H]``."""
    x = x.astype(jnp.float32)
    proj = proj.astype(jnp.float32)
    if proj.ndim == 2:
        return jnp.einsum("ps,bskh->bpkh", proj, x)
    return jnp.einsum("kps,bskh->bpkh", proj, x)


def linformer_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    proj_k: jax.Array,
    proj_v: jax.Array,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    r"""Linformer attention :math:`\mathrm{softmax}(s\,Q(EK)^T)(FV)` (Wang et al. 2020).

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]`` (K divides N).
      value: ``[B, S, K, Hv]``.
      proj_k: E, ``[k, S]`` shared by all heads, or ``[K, k, S]``, one per key/value head.
      proj_v: F, same shapes as ``proj_k`` (pass the same array for key-value sharing).
      padding_mask: bool ``[B, S]``, True = a real key. Padded keys and values are
        zeroed before the projection, so their contents never reach the output.
      is_causal: must be False: a projection of the whole sequence mixes future
        positions into every projected row, so Linformer has no causal form.
      scale: logit scale, default ``1 / sqrt(H)``.

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype``; a batch row whose keys are all padded
      gives zeros. With ``E = F = I_S`` this is dense attention.

    Raises:
      ValueError: ``is_causal=True``, bad shapes, or projections whose last axis is not S.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 512, 4, 16))
      >>> e = jax.random.normal(jax.random.key(0), (64, 512)) / 512 ** 0.5
      >>> linformer_attention(q, k, v, proj_k=e, proj_v=e).shape
      (1, 512, 4, 16)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    if is_causal:
        raise ValueError(
            "is_causal=True is not supported by linformer_attention: projecting the sequence "
            f"axis (key {tuple(key.shape)}) mixes future positions into every projected key"
        )
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    proj_k = _check_projection("proj_k", proj_k, dims)
    proj_v = _check_projection("proj_v", proj_v, dims)
    if padding_mask is not None:
        real = padding_mask[:, :, None, None]
        key = jnp.where(real, key, jnp.zeros((), key.dtype))
        value = jnp.where(real, value, jnp.zeros((), value.dtype))
    projected_key = _project(proj_k, key)
    projected_value = _project(proj_v, value)
    out = dot_product_attention(query, projected_key, projected_value, scale=scale)
    return out.astype(value.dtype)
