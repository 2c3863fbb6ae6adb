"""Small public helpers shared by attention variants, layers and compression code.

Everything here is pure numpy/JAX (no Flax) and safe to use from any package:

* :func:`check_static_int`, :func:`check_positive`, :func:`check_static_bool`:
  validate static int options and flags (ValueError naming the option; a traced value
  is refused with the fix).
* :func:`round_up`, :func:`pad_axis`: pad a length to a block or chunk size.
* :func:`masked_softmax` and :data:`MASK_VALUE`: float32 softmax with a finite
  fill, so fully-masked rows give zeros (never NaN), forward and backward.
* :func:`gather_rows`: per batch element, the rows at given positions (global
  tokens, expert slots).

Example:
  >>> import jax.numpy as jnp
  >>> from effjax.attention import helpers
  >>> helpers.round_up(10, 4)
  12
  >>> helpers.pad_axis(jnp.ones((2, 3)), 1, 4).shape
  (2, 4)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: A finite fill for masked logits: exp(MASK_VALUE - max) underflows to exactly 0 in
#: float32, while gradients through it stay finite (-inf would give NaN for rows with no key).
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def _refuse_traced(name: str, value, kind: str) -> None:
    """ValueError with the fix when ``value`` is traced (an argument of a jitted function):
    static options choose shapes and code paths, so they must be known at trace time."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{name} must be a static Python {kind}, got a traced value "
            f"({type(value).__name__}); under jax.jit pass it in static_argnames or close over it"
        )


def check_static_int(name: str, value: int, minimum: int = 0) -> int:
    """``value`` as a Python int ``>= minimum``, else ValueError naming ``name``.

    A traced value (an argument of a jitted function) is refused with the fix, since
    such options set shapes and must be known at trace time.
    """
    _refuse_traced(name, value, "int")
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        bound = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def check_static_bool(name: str, value: bool) -> bool:
    """``value`` as a Python bool, else ValueError naming ``name``.

    For flags such as ``is_causal`` that choose the computation: a traced value (an
    argument of a jitted function) is refused with the fix instead of JAX's
    ``TracerBoolConversionError`` from deep inside the variant.

    >>> check_static_bool("is_causal", True)
    True
    """
    _refuse_traced(name, value, "bool")
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_positive(name: str, value: int) -> int:
    """``value`` as an int if it is a positive static int, else ValueError naming ``name``.

    >>> check_positive("block_size", 64)
    64
    """
    return check_static_int(name, value, 1)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ``>= n``."""
    return -(-n // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, new_len: int, value=0) -> jax.Array:
    """Pads ``x`` with ``value`` at the end of ``axis`` up to length ``new_len``."""
    extra = new_len - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def masked_softmax(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Float32 softmax over the last axis; masked entries and rows with no key give 0.

    Args:
      logits: ``[..., S]`` any float dtype.
      mask: bool broadcastable to ``logits`` (True = keep), or None.
    """
    logits = logits.astype(jnp.float32)
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    weights = jax.nn.softmax(jnp.where(mask, logits, MASK_VALUE), axis=-1)
    return jnp.where(mask, weights, 0.0)


def gather_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """Row ``index[b, m]`` of batch element ``b``: ``x [B, T, ...]``, ``index`` int ``[B, M]``
    in ``[0, T)`` -> ``[B, M, ...]``.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(6).reshape(2, 3)
      >>> gather_rows(x, jnp.array([[2, 0], [1, 1]])).tolist()
      [[2, 0], [4, 4]]
    """
    if index.ndim != 2 or x.ndim < 2 or index.shape[0] != x.shape[0]:
        raise ValueError(
            f"gather_rows needs x [B, T, ...] and index [B, M], got x of shape {x.shape} and "
            f"index of shape {index.shape}"
        )
    return jax.vmap(lambda rows, picks: rows[picks])(x, index)
