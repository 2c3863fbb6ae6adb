"""Structured pruning: whole attention heads and feed-forward neurons, masked or removed.

Works on the parameter layout of :class:`effjax.layers.MultiHeadAttention`
(``query``/``key``/``value`` kernels ``[D, N, H]``, biases ``[N, H]``; ``out``
kernel ``[N, H, D]``) and on a feed-forward pair of Dense layers (``in`` kernel
``[D, F]``, bias ``[F]``; ``out`` kernel ``[F, D]``).

Importance (one number per head / neuron):

- magnitude: the L1 norm of all weights that belong to the unit;
- gradient (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"):
  ``|dL/d xi|`` for a gate ``xi`` multiplying the unit's output at ``xi = 1``,
  which equals ``|sum(W_out[unit] * dL/dW_out[unit])|`` exactly (the gate and the
  output kernel's rows scale the same product). Sum it over batches.

Masking zeroes a unit's weights (same shapes, usable inside training);
removal slices them out, giving a smaller model with the same outputs: units
are independent until the output projection, where a zeroed row adds nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_QKV = ("query", "key", "value")


def _projections(params: Any) -> tuple[str, ...]:
    """The head projections a layer has (shared-QK has no key; Gaussian only a value)."""
    return tuple(name for name in _QKV if name in params)


def _check_attention_params(params: Any) -> int:
    num_heads = params["out"]["kernel"].shape[0]
    for name in _projections(params):
        kernel = params[name]["kernel"]
        if kernel.ndim != 3 or kernel.shape[1] != num_heads:
            raise ValueError(
                f"head pruning needs {name} kernel [D, N, H] with N={num_heads} heads (no GQA), "
                f"got {name} kernel {kernel.shape} and out kernel {params['out']['kernel'].shape}"
            )
    return num_heads


def head_importance(params: Any, grads: Any | None = None) -> jax.Array:
    """``[N]`` importance of each attention head: L1 magnitude, or Michel et al.'s gate gradient.

    Args:
      params: a MultiHeadAttention's params (``query``, ``key``, ``value``, ``out``).
      grads: the loss gradient with the same structure; given, the importance is
        ``|sum(out_kernel[n] * grad_out_kernel[n])|``; absent, it is the L1 norm of the
        head's query/key/value/out weights (and biases).
    """
    _check_attention_params(params)
    if grads is not None:
        product = params["out"]["kernel"] * grads["out"]["kernel"]
        return jnp.abs(jnp.sum(product, axis=(1, 2)))
    total = jnp.sum(jnp.abs(params["out"]["kernel"]), axis=(1, 2))
    for name in _projections(params):
        total = total + jnp.sum(jnp.abs(params[name]["kernel"]), axis=(0, 2))
        if "bias" in params[name]:
            total = total + jnp.sum(jnp.abs(params[name]["bias"]), axis=1)
    return total


def neuron_importance(in_params: Any, out_params: Any, out_grads: Any | None = None) -> jax.Array:
    """``[F]`` importance of each feed-forward neuron (see :func:`head_importance`).

    Args:
      in_params: ``{"kernel": [D, F], "bias": [F]}``; out_params: ``{"kernel": [F, D], ...}``.
      out_grads: gradient of ``out_params``; given, the importance is
        ``|sum_d W_out[f, d] * G_out[f, d]|``, else the L1 norm of the neuron's weights.
    """
    if out_grads is not None:
        return jnp.abs(jnp.sum(out_params["kernel"] * out_grads["kernel"], axis=1))
    total = jnp.sum(jnp.abs(in_params["kernel"]), axis=0) + jnp.sum(
        jnp.abs(out_params["kernel"]), axis=1
    )
    if "bias" in in_params:
        total = total + jnp.abs(in_params["bias"])
    return total


def keep_top(importance: jax.Array, num_keep: int) -> np.ndarray:
    """Bool ``[U]``: True for the ``num_keep`` most important units (ties keep the lower index)."""
    importance = np.asarray(importance)
    if not 1 <= num_keep <= importance.shape[0]:
        raise ValueError(f"num_keep must be in [1, {importance.shape[0]}], got {num_keep}")
    order = np.argsort(-importance, kind="stable")
    keep = np.zeros(importance.shape, bool)
    keep[order[:num_keep]] = True
    return keep


def _zero_units(x: jax.Array, keep: jax.Array, axis: int) -> jax.Array:
    shape = [1] * x.ndim
    shape[axis] = keep.shape[0]
    return jnp.where(jnp.reshape(keep, shape), x, jnp.zeros_like(x))


def mask_heads(params: Any, keep: jax.Array) -> Any:
    """MultiHeadAttention params with the heads where ``keep [N]`` is False zeroed (same shapes)."""
    _check_attention_params(params)
    keep = jnp.asarray(keep, bool)
    masked = {name: dict(params[name]) for name in params}
    for name in _projections(params):
        masked[name]["kernel"] = _zero_units(params[name]["kernel"], keep, axis=1)
        if "bias" in params[name]:
            masked[name]["bias"] = _zero_units(params[name]["bias"], keep, axis=0)
    masked["out"]["kernel"] = _zero_units(params["out"]["kernel"], keep, axis=0)
    return masked


def remove_heads(params: Any, keep: np.ndarray) -> Any:
    """MultiHeadAttention params with only the heads where ``keep [N]`` is True.

    Use them with ``MultiHeadAttention(num_heads=keep.sum(), qkv_features=keep.sum() * H,
    out_features=D)``; outputs equal those of :func:`mask_heads`'s params in the full layer.
    ``keep`` must be concrete (it sets shapes).
    """
    _check_attention_params(params)
    index = np.flatnonzero(np.asarray(keep))
    pruned = {name: dict(params[name]) for name in params}
    for name in _projections(params):
        pruned[name]["kernel"] = params[name]["kernel"][:, index]
        if "bias" in params[name]:
            pruned[name]["bias"] = params[name]["bias"][index]
    pruned["out"]["kernel"] = params["out"]["kernel"][index]
    return pruned


def mask_neurons(in_params: Any, out_params: Any, keep: jax.Array) -> tuple[Any, Any]:
    """Feed-forward params with the neurons where ``keep [F]`` is False zeroed (same shapes)."""
    keep = jnp.asarray(keep, bool)
    new_in = dict(in_params, kernel=_zero_units(in_params["kernel"], keep, axis=1))
    if "bias" in in_params:
        new_in["bias"] = _zero_units(in_params["bias"], keep, axis=0)
    new_out = dict(out_params, kernel=_zero_units(out_params["kernel"], keep, axis=0))
    return new_in, new_out


def remove_neurons(in_params: Any, out_params: Any, keep: np.ndarray) -> tuple[Any, Any]:
    """Feed-forward params keeping only the neurons where ``keep [F]`` is True.

    The hidden width becomes ``keep.sum()``; ``keep`` must be concrete.
    """
    index = np.flatnonzero(np.asarray(keep))
    new_in = dict(in_params, kernel=in_params["kernel"][:, index])
    if "bias" in in_params:
        new_in["bias"] = in_params["bias"][index]
    new_out = dict(out_params, kernel=out_params["kernel"][index])
    return new_in, new_out
