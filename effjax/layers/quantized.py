"""int8 weights and the Dense layer that multiplies with them.

The storage convention (effjax's, for every compressed model): symmetric, per
output channel, the output channel being the last axis of a kernel:

    scale[j] = max_i |w[i, j]| / 127,    q[i, j] = round(w[i, j] / scale[j])  (int8)

so ``|w - q * scale| <= scale / 2`` element-wise. :class:`QuantizedDense` runs a
matmul on such a kernel in one of two modes:

``"dynamic"``
  Activations are quantized on the fly, per row (per token), with the same
  symmetric rule; the product runs as int8 x int8 -> int32
  (``lax.dot_general(..., preferred_element_type=jnp.int32)``) and the int32
  result is rescaled by ``row_scale * column_scale``. Both scales factor out of
  the contraction, so this is exact up to the two roundings (the recipe of
  Jacob et al. 2018 and torch's ``quantize_dynamic``, with per-row scales).
``"weight_only"``
  The int8 kernel is dequantised inside the jitted matmul (XLA fuses the
  convert and multiply into the dot's operand), so only int8 weights are read
  from memory: the recipe of weight-only LLM inference (LLM.int8, AWQ, ...).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

INT8_MAX = 127
QuantMode = Literal["dynamic", "weight_only"]


class QuantizedArray(NamedTuple):
    """An int8 array with its float32 per-channel scale.

    Attributes:
      values: int8, the shape of the original array.
      scale: float32, the original shape with every input axis set to 1 (``[1, ..., 1,
        out...]``: one scale per output channel), so ``values * scale`` broadcasts
        without rank promotion.
    """

    values: jax.Array
    scale: jax.Array

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        """``values * scale`` in ``dtype``."""
        return (self.values.astype(jnp.float32) * self.scale).astype(dtype)


def symmetric_scale(absmax: jax.Array) -> jax.Array:
    """``absmax / 127`` in float32: the int8 step of ``[-absmax, absmax] -> [-127, 127]``."""
    return jnp.asarray(absmax, jnp.float32) / INT8_MAX


def quantize_with_scale(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``clip(round(x / scale), -127, 127)`` as int8; a zero scale gives 0 (an all-zero channel)."""
    safe = jnp.where(scale > 0, scale, 1.0)
    q = jnp.round(jnp.asarray(x, jnp.float32) / safe)
    return jnp.clip(q, -INT8_MAX, INT8_MAX).astype(jnp.int8)


def quantize_array(x: jax.Array, num_output_axes: int = 1) -> QuantizedArray:
    """Symmetric per-output-channel int8 quantization of ``x [in..., out...]``.

    The output channels are the last ``num_output_axes`` axes: 1 for a Dense kernel
    ``[in, out]``, 2 for a ``DenseGeneral`` kernel ``[D, N, H]`` with ``features=(N, H)``
    (``N * H`` channels, one per head and head dimension). One scale per channel is
    ``max |x|`` over the input axes ``/ 127``.

    Example:
      >>> import jax.numpy as jnp
      >>> from effjax.layers.quantized import quantize_array
      >>> qa = quantize_array(jnp.array([[1.0, -0.5], [-2.0, 0.25]]))
      >>> qa.values.tolist()
      [[64, -127], [-127, 64]]
      >>> bool(jnp.all(jnp.abs(qa.dequantize() - jnp.array([[1.0, -0.5], [-2.0, 0.25]]))
      ...          <= qa.scale / 2))
      True
    """
    if not 1 <= num_output_axes <= x.ndim:
        raise ValueError(
            f"num_output_axes={num_output_axes} must be in [1, x.ndim] for x of shape {x.shape}"
        )
    reduce_axes = tuple(range(x.ndim - num_output_axes))
    absmax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=reduce_axes, keepdims=True)
    scale = symmetric_scale(absmax)
    return QuantizedArray(quantize_with_scale(x, scale), scale)


def int8_matmul(x: jax.Array, kernel: QuantizedArray, *, mode: QuantMode) -> jax.Array:
    """``x [..., in] @ kernel [in, out] -> [..., out]`` in float32, with an int8 kernel.

    ``mode="dynamic"`` quantizes each row of ``x`` (scale ``max|x_row| / 127``) and
    contracts int8 x int8 into int32; ``mode="weight_only"`` dequantises the kernel
    inside the matmul and keeps ``x`` in float.
    """
    if kernel.values.ndim != 2 or x.shape[-1] != kernel.values.shape[0]:
        raise ValueError(
            f"int8_matmul needs x [..., in] and a kernel [in, out], got x {x.shape} "
            f"and kernel {kernel.values.shape}"
        )
    contract = (((x.ndim - 1,), (0,)), ((), ()))
    if mode == "weight_only":
        return lax.dot_general(x.astype(jnp.float32), kernel.dequantize(jnp.float32), contract)
    if mode == "dynamic":
        row_scale = symmetric_scale(jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1, keepdims=True))
        x_q = quantize_with_scale(x, row_scale)
        acc = lax.dot_general(x_q, kernel.values, contract, preferred_element_type=jnp.int32)
        column_scale = kernel.scale.reshape((1,) * (x.ndim - 1) + kernel.scale.shape[-1:])
        return acc.astype(jnp.float32) * row_scale * column_scale
    raise ValueError(f"mode must be 'dynamic' or 'weight_only', got {mode!r}")


class QuantizedDense(nn.Module):
    """A Dense layer with an int8 kernel (see the module docstring for the two modes).

    Its variables have the layout of :class:`flax.linen.Dense` with the kernel
    replaced by a :class:`QuantizedArray`, so ``effjax.compress.quantize_params``
    applied to a trained ``nn.Dense``'s params gives this layer's params.

    Attributes:
      features: output size.
      mode: ``"dynamic"`` (int8 x int8 -> int32) or ``"weight_only"``.
      use_bias: add a float bias.
      dtype: output dtype (default: the input's).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from effjax.compress import quantize_params
      >>> from effjax.layers import QuantizedDense
      >>> x = jnp.ones((2, 8))
      >>> params = nn.Dense(4).init(jax.random.key(0), x)["params"]
      >>> QuantizedDense(4).apply({"params": quantize_params(params)}, x).shape
      (2, 4)
    """

    features: int
    mode: QuantMode = "dynamic"
    use_bias: bool = True
    dtype: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., in] -> [..., features]``."""
        kernel = self.param(
            "kernel",
            lambda key: quantize_array(self.kernel_init(key, (x.shape[-1], self.features))),
        )
        y = int8_matmul(x, kernel, mode=self.mode)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
            y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
        return y.astype(self.dtype or x.dtype)
