"""Symmetric per-channel int8 quantization of parameter pytrees, QAT and calibration.

Post-training: :func:`quantize_params` turns the selected float leaves into
:class:`~effjax.layers.QuantizedArray` (int8 values + float32 per-output-channel
scales, ``scale = max|w| / 127``), :func:`dequantize_params` turns them back. The
output channels are those of the layer: the last axis of a Dense kernel ``[in, out]``,
the last two of an attention projection ``DenseGeneral`` kernel ``[D, N, H]``
(:func:`kernel_output_axes`), each expert's own for the stacked expert kernels
``[E, D, F]`` of a mixture of experts and each block's own for the ``[L, ...]``
kernels of a reversible stack (:func:`kernel_stacked_axes`).
The int8 tree is an ordinary pytree: orbax saves it as int8 arrays, about a
quarter of the float32 checkpoint.

Quantization-aware training (Jacob et al. 2018): :func:`fake_quant` rounds in the
forward pass and lets the gradient through unchanged (the straight-through
estimator of Bengio et al. 2013), so ``loss(fake_quant_params(params))`` trains
float weights that survive int8 rounding.

Calibration: :func:`calibrate_scale` picks a static activation scale from
samples, by absmax or by a percentile of ``|x|`` (which ignores rare outliers,
as in Wu et al. 2020, "Integer Quantization for Deep Learning Inference").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from effjax.compress._tree import FilterFn, Path, kernel_stacked_axes, path_names, selection
from effjax.layers.quantized import (
    QuantizedArray,
    quantize_array,
    quantize_with_scale,
    symmetric_scale,
)

OutputAxesFn = Callable[[Path, jax.Array], int]

# Modules whose kernels are DenseGeneral [D, N, H] with features=(N, H): effjax's attention
# projections and flax's MultiHeadDotProductAttention use these names.
_HEAD_PROJECTIONS = ("query", "key", "value")


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def kernel_output_axes(path: Path, leaf: jax.Array) -> int:
    """How many trailing axes of a kernel are output channels, as its layer defines them.

    2 for a 3-d ``kernel`` of a ``query``/``key``/``value`` projection (``[D, N, H]``: one
    channel per head and head dimension); 1 for everything else (Dense ``[in, out]``,
    the attention output ``[N, H, D]``, embedding tables ``[V, D]``). Leading axes that
    stack copies of the kernel (:func:`kernel_stacked_axes`) are not counted:
    ``[L, D, N, H]`` in a reversible stack is a projection too.

    Example:
      >>> import jax.numpy as jnp
      >>> kernel_output_axes(("layers_0", "attention", "query", "kernel"), jnp.zeros((8, 2, 4)))
      2
      >>> kernel_output_axes(("layers_0", "attention", "out", "kernel"), jnp.zeros((2, 4, 8)))
      1
    """
    is_head_projection = len(path) >= 2 and path[-1] == "kernel" and path[-2] in _HEAD_PROJECTIONS
    layer_ndim = leaf.ndim - kernel_stacked_axes(path, leaf)
    return 2 if is_head_projection and layer_ndim == 3 else 1


def _map_chosen(fn, params: Any, filter_fn: FilterFn | None, caller: str) -> Any:
    """``fn(path, leaf)`` on the leaves ``filter_fn`` chooses; the others unchanged."""
    chosen = selection(params, filter_fn, caller=caller)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf, pick: fn(path_names(path), leaf) if pick else leaf, params, chosen
    )


def quantize_params(
    params: Any,
    *,
    filter_fn: FilterFn | None = None,
    output_axes: OutputAxesFn = kernel_output_axes,
    stacked_axes: OutputAxesFn = kernel_stacked_axes,
) -> Any:
    """int8-quantizes the leaves chosen by ``filter_fn`` (default: float arrays with ndim >= 2).

    Args:
      params: a pytree of arrays (e.g. flax ``variables["params"]``); Dense kernels ``[in, out]``.
      filter_fn: ``(path: tuple[str, ...], leaf) -> bool``.
      output_axes: ``(path, leaf) -> int``, the number of trailing output axes of a leaf
        (one scale per output channel); default :func:`kernel_output_axes`.
      stacked_axes: ``(path, leaf) -> int``, the number of leading axes that stack
        independent kernels (each its own scales); default :func:`kernel_stacked_axes`.

    Returns:
      The same structure with each chosen leaf ``w [stack..., in..., out...]`` replaced by
      ``QuantizedArray(values=int8 like w, scale=float32 [stack..., 1, ..., 1, out...])``;
      other leaves unchanged. ``|w - values * scale| <= scale / 2`` element-wise.

    Example:
      >>> import jax.numpy as jnp
      >>> from effjax.compress import quantize_params, dequantize_params
      >>> q = quantize_params({"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)})
      >>> q["kernel"].values.dtype, q["bias"].dtype
      (dtype('int8'), dtype('float32'))
    """
    return _map_chosen(
        lambda path, leaf: quantize_array(leaf, output_axes(path, leaf), stacked_axes(path, leaf)),
        params,
        filter_fn,
        "quantize_params",
    )


def dequantize_params(qparams: Any, dtype: Any = jnp.float32) -> Any:
    """Replaces every :class:`QuantizedArray` leaf by ``values * scale`` in ``dtype``."""
    return jax.tree_util.tree_map(
        lambda leaf: leaf.dequantize(dtype) if _is_quantized(leaf) else leaf,
        qparams,
        is_leaf=_is_quantized,
    )


def fake_quant(x: jax.Array, scale: jax.Array | None = None) -> jax.Array:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through estimator).

    ``fake_quant(x) = x + stop_gradient(round(x / s) * s - x)``, so its value is the
    int8 grid point and ``d fake_quant / dx = 1``.

    Args:
      x: ``[..., out]``.
      scale: the int8 step, broadcastable to ``x`` (same rank); default the per-channel
        weight scale ``max|x| / 127`` over all axes but the last (not differentiated).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.compress import fake_quant
      >>> float(jax.grad(lambda w: fake_quant(w).sum())(jnp.array([[0.3]]))[0, 0])
      1.0
    """
    if scale is None:
        scale = jax.lax.stop_gradient(quantize_array(x).scale)
    elif jnp.ndim(scale) not in (0, x.ndim):
        raise ValueError(
            f"scale must be a scalar or have x's rank {x.ndim}, got {jnp.shape(scale)}"
        )
    rounded = quantize_with_scale(x, scale).astype(x.dtype) * scale
    return x + jax.lax.stop_gradient(rounded - x)


def fake_quant_params(
    params: Any,
    *,
    filter_fn: FilterFn | None = None,
    output_axes: OutputAxesFn = kernel_output_axes,
    stacked_axes: OutputAxesFn = kernel_stacked_axes,
) -> Any:
    """:func:`fake_quant` on the leaves :func:`quantize_params` would quantize (for QAT),
    with the same per-output-channel scales.

    Train with ``loss(fake_quant_params(params), batch)``: the forward pass sees the
    int8 weights, the gradient updates the float ones.
    """

    def one(path, leaf):
        quantized = quantize_array(leaf, output_axes(path, leaf), stacked_axes(path, leaf))
        scale = jax.lax.stop_gradient(quantized.scale)
        return fake_quant(leaf, scale)

    return _map_chosen(one, params, filter_fn, "fake_quant_params")


def calibrate_scale(
    samples: jax.Array,
    *,
    method: Literal["absmax", "percentile"] = "absmax",
    percentile: float = 99.99,
) -> jax.Array:
    """A static per-tensor activation scale from calibration samples.

    ``absmax``: ``max|x| / 127`` (nothing clips). ``percentile``:
    ``percentile(|x|, p) / 127`` (the top ``100 - p`` percent clip to +-127, which
    buys resolution for the rest).

    Args:
      samples: activations of any shape (e.g. ``[batches, T, D]`` stacked).
      method: ``"absmax"`` or ``"percentile"``.
      percentile: in ``(0, 100]``, for ``method="percentile"``.

    Returns:
      A float32 scalar; quantize with ``fake_quant(x, scale)`` or ``round(x / scale)``.
    """
    magnitudes = jnp.abs(jnp.asarray(samples, jnp.float32))
    if method == "absmax":
        return symmetric_scale(jnp.max(magnitudes))
    if method == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        return symmetric_scale(jnp.percentile(magnitudes, percentile))
    raise ValueError(f"method must be 'absmax' or 'percentile', got {method!r}")
