"""One registry of attention variants: name -> pure function, layer core, benchmark spec.

``effjax.attention`` registers each pure function under its short name, so a
config can say ``attention="local"``; ``effjax.layers`` attaches to the same entry
the variant's *core* (the Flax module that owns its options, variables, randomness
and decoding cache) and its benchmark spec. This module stores them without
knowing what they are (no Flax here). A name is registered once: a second
registration, or a second core or spec for the same name, raises.

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

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, overload

import jax


class AttentionFn(Protocol):
    """``fn(query [B,T,N,H], key [B,S,K,H], value [B,S,K,Hv], **options) -> [B,T,N,Hv]``."""

    def __call__(
        self, query: jax.Array, key: jax.Array, value: jax.Array, /, **kwargs
    ) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Variant:
    """A registered attention variant.

    Attributes:
      name: the registry name.
      fn: the pure attention function.
      core: the layer core class (an ``effjax.layers.AttentionCore`` subclass), or
        None: the layer then wraps ``fn`` generically.
      bench: the benchmark spec (an ``effjax.layers.BenchSpec``), or None: the
        benchmark runs ``fn`` with no options and unknown useful FLOPs.
    """

    name: str
    fn: AttentionFn
    core: Any = None
    bench: Any = None


_REGISTRY: dict[str, Variant] = {}


@overload
def register(name: str, fn: AttentionFn, *, core: Any = None, bench: Any = None) -> AttentionFn: ...
@overload
def register(
    name: str, fn: None = None, *, core: Any = None, bench: Any = None
) -> Callable[[AttentionFn], AttentionFn]: ...


def register(name, fn=None, *, core=None, bench=None):
    """Registers ``fn`` under ``name``; usable as ``register(name, fn)`` or ``@register(name)``.

    ``core`` and ``bench`` may be given here or attached later with :func:`attach`.

    Raises:
      ValueError: ``name`` is already registered, or ``fn`` is registered under another name.
    """

    def _add(f: AttentionFn) -> AttentionFn:
        if name in _REGISTRY:
            raise ValueError(f"attention {name!r} is already registered")
        other = find(f)
        if other is not None:
            raise ValueError(f"this function is already registered as {other.name!r}")
        _REGISTRY[name] = Variant(name, f, core, bench)
        return f

    return _add if fn is None else _add(fn)


def attach(name: str, *, core: Any = None, bench: Any = None) -> None:
    """Attaches the layer ``core`` and/or benchmark ``bench`` spec to the variant ``name``.

    Raises:
      ValueError: unknown ``name``, or it already has a core (spec) and one is given.
    """
    entry = variant(name)
    for field, value in (("core", core), ("bench", bench)):
        if value is not None and getattr(entry, field) is not None:
            raise ValueError(f"attention {name!r} already has a {field}")
    _REGISTRY[name] = dataclasses.replace(
        entry, core=core or entry.core, bench=bench or entry.bench
    )


def variant(name: str) -> Variant:
    """The registry entry of ``name``.

    Raises:
      ValueError: unknown ``name``; the message lists the registered names.
    """
    if not isinstance(name, str):
        raise ValueError(f"attention name must be a str, got {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown attention {name!r}; registered: {', '.join(available())}"
        ) from None


def find(fn: Callable) -> Variant | None:
    """The entry whose function is ``fn`` (the same object), or None."""
    return next((v for v in _REGISTRY.values() if v.fn is fn), None)


def get(name: str) -> AttentionFn:
    """The attention function registered as ``name`` (ValueError listing names if unknown)."""
    return variant(name).fn


def available() -> tuple[str, ...]:
    """Registered names, sorted."""
    return tuple(sorted(_REGISTRY))


def resolve(attention: str | AttentionFn) -> AttentionFn:
    """A registered name or an attention function -> the function."""
    return get(attention) if isinstance(attention, str) else attention
