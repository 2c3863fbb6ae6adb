"""Attention variants by name, so a config can say ``attention="local"``.

Example:
  >>> import effjax.attention as ea
  >>> ea.get("dense") is ea.dot_product_attention
  True
  >>> @ea.register("my_dense")
  ... def my_dense(query, key, value, **kwargs):
  ...     return ea.dot_product_attention(query, key, value, **kwargs)
  >>> "my_dense" in ea.available()
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, overload

import jax


class AttentionFn(Protocol):
    """``fn(query [B,T,N,H], key [B,S,K,H], value [B,S,K,Hv], **options) -> [B,T,N,Hv]``."""

    def __call__(
        self, query: jax.Array, key: jax.Array, value: jax.Array, /, **kwargs
    ) -> jax.Array: ...


_REGISTRY: dict[str, AttentionFn] = {}


@overload
def register(name: str, fn: AttentionFn, *, overwrite: bool = False) -> AttentionFn: ...
@overload
def register(
    name: str, fn: None = None, *, overwrite: bool = False
) -> Callable[[AttentionFn], AttentionFn]: ...


def register(name, fn=None, *, overwrite=False):
    """Registers ``fn`` under ``name``; usable as ``register(name, fn)`` or ``@register(name)``.

    Raises:
      ValueError: ``name`` is taken and ``overwrite`` is False.
    """

    def _add(f: AttentionFn) -> AttentionFn:
        if not overwrite and name in _REGISTRY and _REGISTRY[name] is not f:
            raise ValueError(f"attention {name!r} is already registered; pass overwrite=True")
        _REGISTRY[name] = f
        return f

    return _add if fn is None else _add(fn)


def get(name: str) -> AttentionFn:
    """The attention function registered as ``name``.

    Raises:
      ValueError: unknown ``name``; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown attention {name!r}; registered: {', '.join(available())}"
        ) from None


def available() -> tuple[str, ...]:
    """Registered names, sorted."""
    return tuple(sorted(_REGISTRY))


def resolve(attention: str | AttentionFn) -> AttentionFn:
    """A registered name or an attention function -> the function."""
    return get(attention) if isinstance(attention, str) else attention
