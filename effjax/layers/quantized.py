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

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

INT8_MAX = 127
QuantMode = Literal["dynamic", "weight_only"]
#: A model config's ``quantization`` values: float layers, or the int8 layers in either mode.
QUANTIZATIONS = ("none", "weight_only", "dynamic")


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


def quantize_array(
    x: jax.Array, num_output_axes: int = 1, num_stacked_axes: int = 0
) -> QuantizedArray:
    """Symmetric per-output-channel int8 quantization of ``x [stack..., in..., out...]``.

    The output channels are the last ``num_output_axes`` axes: 1 for a Dense kernel
    ``[in, out]``, 2 for a ``DenseGeneral`` kernel ``[D, N, H]`` with ``features=(N, H)``
    (``N * H`` channels, one per head and head dimension). The first
    ``num_stacked_axes`` axes stack independent kernels (experts ``[E, D, F]``, the
    blocks of a reversible stack ``[L, ...]``), each with its own channels: ``E * F``
    scales for ``[E, D, F]``. One scale per channel is ``max |x|`` over the input axes
    ``/ 127``.

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
    if not (num_output_axes >= 1 and 0 <= num_stacked_axes <= x.ndim - num_output_axes):
        raise ValueError(
            f"num_output_axes={num_output_axes} must be >= 1 and num_stacked_axes="
            f"{num_stacked_axes} >= 0, together at most x.ndim, for x of shape {x.shape}"
        )
    reduce_axes = tuple(range(num_stacked_axes, x.ndim - num_output_axes))
    absmax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=reduce_axes, keepdims=True)
    scale = symmetric_scale(absmax)
    return QuantizedArray(quantize_with_scale(x, scale), scale)


def _check_mode(mode: str) -> None:
    if mode not in ("dynamic", "weight_only"):
        raise ValueError(f"mode must be 'dynamic' or 'weight_only', got {mode!r}")


def _quantize_rows(x: jax.Array, num_axes: int) -> tuple[jax.Array, jax.Array]:
    """``x [..., in...]`` as int8 with one scale per row (``max|x|`` over the last
    ``num_axes`` axes ``/ 127``): ``(int8 [..., in...], float32 [...])``."""
    axes = tuple(range(x.ndim - num_axes, x.ndim))
    row_scale = symmetric_scale(jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axes))
    return quantize_with_scale(x, row_scale.reshape(row_scale.shape + (1,) * num_axes)), row_scale


def int8_matmul(
    x: jax.Array, kernel: QuantizedArray, *, mode: QuantMode, num_contract: int = 1
) -> jax.Array:
    """``x [..., in...] @ kernel [in..., out...] -> [..., out...]`` in float32, with an
    int8 kernel; the last ``num_contract`` axes of ``x`` contract with the first of the
    kernel (``DenseGeneral``'s ``axis``).

    ``mode="dynamic"`` quantizes each row of ``x`` (scale ``max|x_row| / 127``) and
    contracts int8 x int8 into int32; ``mode="weight_only"`` dequantises the kernel
    inside the matmul and keeps ``x`` in float. The kernel's scale must be per output
    channel (1 on the input axes), so that it factors out of the contraction.
    """
    _check_mode(mode)
    in_shape, out_shape = kernel.values.shape[:num_contract], kernel.values.shape[num_contract:]
    if not out_shape or x.ndim < num_contract or x.shape[x.ndim - num_contract :] != in_shape:
        raise ValueError(
            f"int8_matmul needs x [..., in] and a kernel [in, out], got x {x.shape} "
            f"and kernel {kernel.values.shape} (contracting {num_contract} axes)"
        )
    scale_in = kernel.scale.shape[:num_contract]
    if kernel.scale.ndim != kernel.values.ndim or any(d != 1 for d in scale_in):
        raise ValueError(
            f"kernel scale {kernel.scale.shape} must be [1, ..., 1, out...] (one per output "
            f"channel) for a kernel {kernel.values.shape} contracting {num_contract} axes"
        )
    contract = ((tuple(range(x.ndim - num_contract, x.ndim)), tuple(range(num_contract))), ((), ()))
    batch_ones = (1,) * (x.ndim - num_contract)
    if mode == "weight_only":
        return lax.dot_general(x.astype(jnp.float32), kernel.dequantize(jnp.float32), contract)
    x_q, row_scale = _quantize_rows(x, num_contract)
    acc = lax.dot_general(x_q, kernel.values, contract, preferred_element_type=jnp.int32)
    column_scale = jnp.broadcast_to(kernel.scale, kernel.values.shape)[(0,) * num_contract]
    row_scale = row_scale.reshape(row_scale.shape + (1,) * len(out_shape))
    return acc.astype(jnp.float32) * row_scale * column_scale.reshape(batch_ones + out_shape)


def _describe(value: Any) -> str:
    if isinstance(value, QuantizedArray):
        return f"an int8 QuantizedArray {tuple(value.values.shape)}"
    return f"{getattr(value, 'dtype', type(value).__name__)} {tuple(getattr(value, 'shape', ()))}"


_FLOAT_MODEL_REMEDY = (
    "build the model with quantization='weight_only' or 'dynamic' (EncoderConfig/"
    "DecoderConfig), or pass effjax.compress.dequantize_params(params)"
)


def check_param_kind(
    value: Any,
    *,
    path: Sequence[str],
    quantized: bool,
    model_hint: str,
    remedy: str = _FLOAT_MODEL_REMEDY,
) -> None:
    """Raises a ValueError naming the parameter at ``path`` when ``value`` is not int8
    (``quantized``) or is int8 (not ``quantized``): a float model applied to
    ``quantize_params`` output, or an int8 model to float parameters."""
    is_int8 = isinstance(value, QuantizedArray) and value.values.dtype == jnp.int8
    if is_int8 == quantized:
        return
    name = "/".join(path)
    if quantized:
        raise ValueError(
            f"parameter {name} is {_describe(value)} but {model_hint} expects an int8 "
            "QuantizedArray here: pass effjax.compress.quantize_params(params)"
        )
    raise ValueError(
        f"parameter {name} is {_describe(value)} but {model_hint} computes in float: {remedy}"
    )


_CORE_REMEDY = (
    "leave it float, quantizing only the Dense kernels and embedding tables "
    "(quantize_params(params, filter_fn=...) with a filter_fn that skips this path)"
)


def reject_int8_params(module: nn.Module, *, under: str | None = None, owner: str = "") -> None:
    """In a float module's call: a ValueError naming the first int8 parameter of its
    variables (flax's float layers would fail deep inside JAX on one); ``under`` limits
    the check to one submodule's parameters (an int8 model's float attention core),
    ``owner`` names what computes in float (default the module's class) and then says
    how to leave its parameters float."""
    if module.is_initializing():
        return
    params = module.variables.get("params", {})
    prefix = tuple(module.path)
    if under is not None:
        params, prefix = params.get(under, {}), (*prefix, under)
    leaves = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: isinstance(x, QuantizedArray)
    )[0]
    for key_path, leaf in leaves:
        if isinstance(leaf, QuantizedArray):
            names = tuple(str(getattr(k, "key", k)) for k in key_path)
            check_param_kind(
                leaf,
                path=(*prefix, *names),
                quantized=False,
                model_hint=owner or f"{type(module).__name__} (quantization='none')",
                **({"remedy": _CORE_REMEDY} if owner else {}),
            )


def kernel_param(
    module: nn.Module,
    name: str,
    shape: tuple[int, ...],
    init: Callable[..., jax.Array],
    *,
    quantized: bool,
    num_output_axes: int = 1,
    param_dtype: Any = jnp.float32,
) -> jax.Array | QuantizedArray:
    """``module.param(name)``: a float ``[in..., out...]`` array, or (``quantized``) its int8
    :class:`QuantizedArray` with one scale per output channel (the last
    ``num_output_axes`` axes); a parameter of the other kind is a ValueError naming it.
    ``init(key, shape, dtype)`` draws the float array (the int8 one quantizes it)."""
    if quantized:
        value = module.param(
            name, lambda key: quantize_array(init(key, shape, param_dtype), num_output_axes)
        )
    else:
        value = module.param(name, init, shape, param_dtype)
    hint = f"{type(module).__name__} ({'int8' if quantized else 'float'})"
    check_param_kind(value, path=(*module.path, name), quantized=quantized, model_hint=hint)
    return value


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


class QuantizedDense(nn.Module):
    """A Dense (or ``DenseGeneral``) layer with an int8 kernel (see the module docstring
    for the two modes).

    Its variables have the layout of :class:`flax.linen.Dense` (``features`` an int) or
    :class:`flax.linen.DenseGeneral` (``features`` a tuple, ``axis`` the contracted input
    axes) with the kernel replaced by a :class:`QuantizedArray`, so
    ``effjax.compress.quantize_params`` applied to the float layer's params gives this
    layer's params: ``kernel`` int8 ``[in..., out...]`` with one scale per output channel.

    Attributes:
      features: output size, an int or a tuple (``DenseGeneral``'s).
      mode: ``"dynamic"`` (int8 x int8 -> int32) or ``"weight_only"``.
      use_bias: add a float bias ``[features...]``.
      dtype: output dtype (default: the input's).
      kernel_init: initializer of the float kernel (quantized at init).
      axis: the trailing input axes contracted (``-1``, or ``(-2, -1)`` for an
        attention output projection ``[..., N, H] -> [..., D]``).
      bias_init, param_dtype: as flax's.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from effjax.compress import quantize_params
      >>> from effjax.layers import QuantizedDense
      >>> x = jnp.ones((2, 8))
      >>> params = nn.Dense(4).init(jax.random.key(0), x)["params"]
      >>> QuantizedDense(4).apply({"params": quantize_params(params)}, x).shape
      (2, 4)
      >>> heads = nn.DenseGeneral((2, 3)).init(jax.random.key(0), x)["params"]
      >>> per_head = quantize_params(heads, output_axes=lambda path, leaf: 2)  # 2 * 3 channels
      >>> QuantizedDense((2, 3)).apply({"params": per_head}, x).shape
      (2, 2, 3)
    """

    features: int | Sequence[int]
    mode: QuantMode = "dynamic"
    use_bias: bool = True
    dtype: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    axis: int | Sequence[int] = -1
    bias_init: Any = nn.initializers.zeros_init()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., in...] -> [..., features...]``."""
        features = _as_tuple(self.features)
        num_contract = len(_as_tuple(self.axis))
        if sorted(a % x.ndim for a in _as_tuple(self.axis)) != list(
            range(x.ndim - num_contract, x.ndim)
        ):
            raise ValueError(f"axis={self.axis} must be the trailing axes of x {x.shape}")
        in_shape = x.shape[x.ndim - num_contract :]

        def init(key, shape, dtype):  # fan-in over all input axes, as DenseGeneral's
            flat = (math.prod(in_shape), math.prod(features))
            return self.kernel_init(key, flat, dtype).reshape(shape)

        kernel = kernel_param(
            self,
            "kernel",
            in_shape + features,
            init,
            quantized=True,
            num_output_axes=len(features),
            param_dtype=self.param_dtype,
        )
        y = int8_matmul(x, kernel, mode=self.mode, num_contract=num_contract)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, features, self.param_dtype)
            y = y + bias.reshape((1,) * (y.ndim - len(features)) + features)
        return y.astype(self.dtype or x.dtype)


class QuantizedEmbed(nn.Module):
    """An embedding table stored in int8, with :class:`flax.linen.Embed`'s layout.

    ``embedding`` is a :class:`QuantizedArray` ``[num_embeddings, features]`` with one
    scale per feature (``quantize_params``' convention for a ``[V, D]`` matrix): a lookup
    is ``values[ids] * scale``. ``attend`` (a tied output head, ``[..., D] -> [..., V]``)
    folds the per-feature scale into the query, then multiplies by the int8 table as
    ``mode`` says (``"dynamic"``: int8 x int8 -> int32 with one scale per query row).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from effjax.compress import quantize_params
      >>> table = nn.Embed(10, 4).init(jax.random.key(0), jnp.zeros(2, jnp.int32))["params"]
      >>> QuantizedEmbed(10, 4).apply({"params": quantize_params(table)}, jnp.array([1, 2])).shape
      (2, 4)
    """

    num_embeddings: int
    features: int
    mode: QuantMode = "weight_only"
    dtype: Any = None
    embedding_init: Any = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)

    def setup(self):
        _check_mode(self.mode)
        self.embedding = kernel_param(
            self,
            "embedding",
            (self.num_embeddings, self.features),
            self.embedding_init,
            quantized=True,
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """``int [...] -> [..., features]``."""
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"QuantizedEmbed takes integer ids, got {inputs.dtype}")
        rows = jnp.take(self.embedding.values, inputs, axis=0).astype(jnp.float32)
        scale = self.embedding.scale.reshape((1,) * inputs.ndim + (self.features,))
        return (rows * scale).astype(self.dtype or jnp.float32)

    def attend(self, query: jax.Array) -> jax.Array:
        """``query [..., features] -> [..., num_embeddings]``: ``query @ table^T``."""
        scale = self.embedding.scale.reshape((1,) * (query.ndim - 1) + (self.features,))
        scaled = query.astype(jnp.float32) * scale  # the per-feature scale sits on the contraction
        contract = (((query.ndim - 1,), (1,)), ((), ()))
        if self.mode == "weight_only":
            values = self.embedding.values.astype(jnp.float32)
            out = lax.dot_general(scaled, values, contract)
        else:
            q, row_scale = _quantize_rows(scaled, 1)
            acc = lax.dot_general(
                q, self.embedding.values, contract, preferred_element_type=jnp.int32
            )
            out = acc.astype(jnp.float32) * row_scale[..., None]
        return out.astype(self.dtype or query.dtype)


def dense_layer(
    quantization: str,
    features: int | Sequence[int],
    *,
    axis: int | Sequence[int] = -1,
    **kwargs: Any,
) -> nn.Module:
    """The Dense layer of a model with ``quantization`` (:data:`QUANTIZATIONS`): flax's
    ``nn.Dense`` (int ``features``, ``axis=-1``) or ``nn.DenseGeneral`` for ``"none"``,
    :class:`QuantizedDense` in that mode otherwise; ``kwargs`` (``use_bias``, ``dtype``,
    ``kernel_init``, ``name``, ...) go to the layer. The one place effjax's models choose
    a Dense layer, so the quantization of a model is one config field.

    Example:
      >>> type(dense_layer("dynamic", 4)).__name__, type(dense_layer("none", (2, 3))).__name__
      ('QuantizedDense', 'DenseGeneral')
    """
    if quantization == "none":
        if isinstance(features, int) and axis == -1:
            return nn.Dense(features, **kwargs)
        return nn.DenseGeneral(features, axis=axis, **kwargs)
    check_quantization(quantization)
    return QuantizedDense(features, mode=quantization, axis=axis, **kwargs)


def embedding_layer(
    quantization: str, num_embeddings: int, features: int, **kwargs: Any
) -> nn.Module:
    """The embedding table of a model with ``quantization``: ``nn.Embed`` for ``"none"``,
    :class:`QuantizedEmbed` (its ``attend`` in that mode) otherwise."""
    if quantization == "none":
        return nn.Embed(num_embeddings, features, **kwargs)
    check_quantization(quantization)
    return QuantizedEmbed(num_embeddings, features, mode=quantization, **kwargs)


def check_quantization(quantization: str) -> None:
    """A ValueError unless ``quantization`` is one of :data:`QUANTIZATIONS`."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is not one of {QUANTIZATIONS}")
