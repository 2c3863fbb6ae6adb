"""Position-wise feed-forward, optionally over sequence chunks (Kitaev et al. 2020, Sec. 4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from effjax.attention import helpers
from effjax.layers.quantized import QuantizedArray, int8_matmul, kernel_param

Dtype = Any
Activation = Callable[[jax.Array], jax.Array]


def gelu_erf(x: jax.Array) -> jax.Array:
    """The exact GELU ``x * (1 + erf(x / sqrt(2))) / 2``, written as PyTorch's ``gelu`` and
    transformers' ``hidden_act="gelu"`` compute it. ``jax.nn.gelu(approximate=False)`` is
    the same function through ``erfc``, which XLA:CPU expands to two polynomials, an
    ``exp`` and divisions (its fusion took ~1.5x the time of this one at ``[4096, 3072]``).

    Example:
      >>> import jax.numpy as jnp
      >>> float(gelu_erf(jnp.float32(1.0)))  # doctest: +ELLIPSIS
      0.841...
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


#: Activations by Hugging Face ``hidden_act`` name. "gelu" is the exact (erf) GELU.
ACTIVATIONS: dict[str, Activation] = {
    "gelu": gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Activation:
    """The activation function named ``name`` (Hugging Face spelling)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"hidden_act={name!r} is not supported; known: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class _Affine(nn.Module):
    """The ``kernel [D_in, D_out]`` and ``bias [D_out]`` of one projection, laid out as
    ``nn.Dense``'s, returned rather than applied so the chunked path can close over them;
    the kernel is an int8 :class:`~effjax.layers.QuantizedArray` when ``quantized``."""

    features: int
    kernel_init: Callable[..., jax.Array]
    param_dtype: Dtype
    quantized: bool = False

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array | QuantizedArray, jax.Array]:
        shape = (in_features, self.features)
        kernel = kernel_param(
            self,
            "kernel",
            shape,
            self.kernel_init,
            quantized=self.quantized,
            param_dtype=self.param_dtype,
        )
        bias = self.param("bias", nn.initializers.zeros_init(), shape[1:], self.param_dtype)
        return kernel, bias


class FeedForward(nn.Module):
    r"""``FF(x) = act(x W_i + b_i) W_o + b_o``, position by position, ``[B, T, D] -> [B, T, D]``.

    Every position is independent, so with ``chunk_size`` the sequence is cut into
    chunks of that many positions, padded at the end, and the chunks go through
    ``lax.map`` with ``jax.checkpoint``: the ``[B, chunk, d_ff]`` hidden activation
    exists one chunk at a time, forward and backward, instead of ``[B, T, d_ff]``
    (the Reformer's chunked feed-forward). Outputs and gradients equal the
    unchunked layer's (``chunk_size=None``) up to float rounding.

    Parameters are laid out as two ``nn.Dense`` layers, ``intermediate`` (``D -> d_ff``)
    and ``output`` (``d_ff -> D``), each with ``kernel`` and ``bias``: BERT's names, which
    effjax.models' Hugging Face loader maps checkpoints to.

    Attributes:
      d_ff: hidden size.
      chunk_size: positions per chunk, or None for one pass.
      activation: hidden activation, a function or a Hugging Face ``hidden_act`` name
        (:data:`ACTIVATIONS`; default flax's tanh-approximate gelu).
      dropout_rate: dropout on the output (per position, so chunking leaves it unchanged).
      dtype: computation dtype (default the input's); param_dtype: parameter dtype.
      kernel_init: initializer of both kernels (biases start at zero).
      quantization: ``"none"``, or ``"weight_only"`` / ``"dynamic"``: int8 kernels (the
        ``effjax.compress.quantize_params`` layout) multiplied by
        :func:`~effjax.layers.quantized.int8_matmul` in that mode.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> ff = FeedForward(d_ff=64, chunk_size=16)
      >>> x = jnp.ones((2, 50, 32))
      >>> variables = ff.init(jax.random.key(0), x)
      >>> ff.apply(variables, x).shape
      (2, 50, 32)
    """

    d_ff: int
    chunk_size: int | None = None
    activation: str | Activation = nn.gelu
    dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    quantization: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Applies the feed-forward to ``x [B, T, D]``."""
        if x.ndim != 3:
            raise ValueError(f"x must be [B, T, D], got shape {x.shape}")
        d_model = x.shape[-1]
        quantized = self.quantization != "none"
        affine = lambda n, name: _Affine(  # noqa: E731
            n, self.kernel_init, self.param_dtype, quantized, name=name
        )
        w_in, b_in = affine(self.d_ff, "intermediate")(d_model)
        w_out, b_out = affine(d_model, "output")(self.d_ff)
        dtype = self.dtype or x.dtype
        w_in, w_out = (w if quantized else w.astype(dtype) for w in (w_in, w_out))
        b_in, b_out = b_in.astype(dtype), b_out.astype(dtype)
        x = x.astype(dtype)
        act = activation(self.activation) if isinstance(self.activation, str) else self.activation

        def matmul(h, w):
            if quantized:
                return int8_matmul(h, w, mode=self.quantization).astype(dtype)
            return h @ w

        def feed_forward(h):
            hidden = act(matmul(h, w_in) + b_in[None, None])
            return matmul(hidden, w_out) + b_out[None, None]

        if self.chunk_size is None:
            out = feed_forward(x)
        else:
            out = _chunked(feed_forward, x, helpers.check_positive("chunk_size", self.chunk_size))
        if self.dropout_rate > 0.0:
            out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        return out


def _chunked(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk_size: int) -> jax.Array:
    """``fn`` over ``[B, chunk, D]`` pieces of ``x [B, T, D]``, one at a time and rematerialised."""
    b, t, d = x.shape
    padded = helpers.round_up(t, chunk_size)
    chunks = helpers.pad_axis(x, 1, padded).reshape(b, padded // chunk_size, chunk_size, d)
    out = jax.lax.map(jax.checkpoint(fn), chunks.swapaxes(0, 1))
    return out.swapaxes(0, 1).reshape(b, padded, -1)[:, :t]
