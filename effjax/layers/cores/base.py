"""The attention core: what :class:`~effjax.layers.MultiHeadAttention` delegates to a variant.

A core is a Flax linen module whose dataclass fields are the variant's options
(with the paper's defaults). :class:`~effjax.layers.MultiHeadAttention` projects
the inputs to ``query [B, T, N, H]``, ``key``/``value [B, S, K, H]`` and calls

``core(query, key, value, padding_mask=, global_mask=, is_causal=, deterministic=, decode=)``

which returns ``[B, T, N, H]``. Everything variant-specific lives in the core:

* options, checked when the core is built (:meth:`AttentionCore.from_options`
  names unknown or missing options and lists the valid ones);
* variables (Linformer projections, Performer features) created in
  :meth:`AttentionCore.prepare`, which returns the keyword arguments of the pure
  function;
* randomness through one helper, :func:`attention_rng`: an ``rng`` given as an
  option is used as it is; otherwise training (``deterministic=False``) draws from
  the ``"attention"`` stream and evaluation uses ``fold_in(key(0), crc32(path))``,
  fixed and different for each layer;
* the decoding cache (:meth:`AttentionCore.decode_step`, helpers
  :meth:`AttentionCore.advance_cache` and :meth:`AttentionCore.poison_if_full`,
  which poison the output with NaN once the cache is full);
* shared-QK (:attr:`AttentionCore.shares_qk`: keys are the queries) and cores that
  read neither (:attr:`AttentionCore.uses_query_key`: no query/key projections);
* per-step upkeep (:meth:`AttentionCore.upkeep`, a pure function of the
  non-trainable collections that the train loop calls for every registered core), fed by
  the collections a training forward pass writes (:attr:`AttentionCore.step_collections`,
  which the train loop applies as mutable: routing's k-means statistics).

Adding a variant means writing its pure function, a subclass of this module, and
one ``register`` call (see CONTRIBUTING.md).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from effjax.layers import LocalCore, MultiHeadAttention
  >>> layer = MultiHeadAttention(num_heads=2, attention=LocalCore(window_size=4))
  >>> x = jnp.ones((1, 16, 8))
  >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
  (1, 16, 8)
"""

from __future__ import annotations

import dataclasses
import inspect
import zlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from effjax.attention import registry

#: Fields of every flax module that are not options.
_MODULE_FIELDS = ("parent", "name")


def evaluation_key(module: nn.Module) -> jax.Array:
    """``fold_in(key(0), crc32(module path))``: fixed, and different for each layer."""
    path = "/".join(str(name) for name in module.path)
    return jax.random.fold_in(jax.random.key(0), zlib.crc32(path.encode()))


def attention_rng(module: nn.Module, deterministic: bool, rng: jax.Array | None = None):
    """The PRNG key of a randomised core (LSH rotations, BigBird's random blocks).

    ``rng`` (a user-given option) wins; else training draws from the ``"attention"``
    stream (``rngs={"attention": key}``, a new pattern every step) and evaluation uses
    :func:`evaluation_key`, so evaluation is repeatable.
    """
    if rng is not None:
        return rng
    if deterministic:
        return evaluation_key(module)
    return module.make_rng("attention")


class PackedCache(NamedTuple):
    """A decoding cache whose rows hold their real tokens left-aligned (see
    :meth:`AttentionCore.pack_cache`).

    Attributes:
      key: ``[B, L, K, H]``, row ``b``'s real tokens in order from slot 0.
      value: ``[B, L, K, Hv]``.
      valid: bool ``[B, L]``, the slots written so far.
      positions: int32 ``[B, T]``, the slot of each new token (a padded new token: a
        slot of its row, in range; its output means nothing).
      real: bool ``[B, T]``, the new tokens that are real.
      full: bool scalar, the new tokens overflow the cache (see
        :meth:`AttentionCore.advance_cache`).
    """

    key: jax.Array
    value: jax.Array
    valid: jax.Array
    positions: jax.Array
    real: jax.Array
    full: jax.Array


class AttentionCore(nn.Module):
    """Base class of attention cores (see the module docstring).

    Subclasses set the class attributes and declare options as fields:

    Attributes:
      function: the variant's pure attention function (set by subclasses).
      takes_global_mask: the pure function takes ``global_mask`` (Longformer), all False
        when the layer gets none; other cores ignore a layer's ``global_mask`` (their
        pattern has no global tokens).
      layer_options: option fields consumed by the core itself, not passed to ``function``.
      step_collections: non-trainable collections the core writes in a training forward
        pass (``deterministic=False``) for its :meth:`upkeep` to consume; a train step
        applies the model with them mutable and hands the result to the upkeep.
      implementations: the values of ``function``'s ``implementation=`` argument
        (``"xla"``, ``"pallas"``, ...) for a core with an ``implementation`` option;
        checked when the core is built.
    """

    function: ClassVar[Callable[..., jax.Array] | None] = None
    takes_global_mask: ClassVar[bool] = False
    layer_options: ClassVar[tuple[str, ...]] = ()
    implementations: ClassVar[tuple[str | None, ...]] = ()
    step_collections: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ options

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _MODULE_FIELDS)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None) -> AttentionCore:
        """An unbound core from a mapping of options; unknown or missing names -> ValueError."""
        options = dict(options or {})
        valid = cls.option_names()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for attention core {cls.__name__}; "
                f"valid options: {', '.join(valid) or '(none)'}"
            )
        try:
            return cls(**options, parent=None)
        except TypeError as e:  # a required option is missing
            raise ValueError(
                f"{cls.__name__}: {e}; valid options: {', '.join(valid) or '(none)'}"
            ) from None

    def __post_init__(self):
        implementation = getattr(self, "implementation", None)
        if implementation not in (*self.implementations, None):
            raise ValueError(
                f"{type(self).__name__}: implementation must be one of "
                f"{self.implementations}, got {implementation!r}"
            )
        self.check()
        super().__post_init__()

    def check(self) -> None:
        """Validates the options at construction (ValueError naming the option)."""

    def function_options(self) -> dict[str, Any]:
        """Options passed to :attr:`function` unchanged: every field but ``layer_options``,
        leaving out those set to None (the function's own default applies)."""
        names = [n for n in self.option_names() if n not in self.layer_options]
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def extra_projections(self) -> Mapping[str, str]:
        """Extra per-head projections of the layer's inputs this core needs, as
        ``{parameter name: "query" | "key" | "value"}`` (each made like that projection:
        its heads and its input). The layer passes them back as ``projections=``.
        Default: none."""
        return {}

    def projection_arguments(self, projections: Mapping[str, jax.Array]) -> dict[str, Any]:
        """Keyword arguments of :attr:`function` made from :meth:`extra_projections`."""
        return {}

    @property
    def shares_qk(self) -> bool:
        """Keys are the queries (Reformer's shared-QK): the layer has no key projection."""
        return False

    @property
    def uses_query_key(self) -> bool:
        """The output depends on the queries and keys (default True). A core that reads
        only their shapes (hard-coded Gaussian attention, a pure random synthesizer) says
        False: the layer then builds no query/key projections and passes zero stand-ins of
        the projected shapes."""
        return True

    # ------------------------------------------------------------------ the call

    def prepare(
        self, query: jax.Array, key: jax.Array, value: jax.Array, deterministic: bool
    ) -> dict[str, Any]:
        """Keyword arguments of :attr:`function`: options, variables, keys (override to add)."""
        return self.function_options()

    @nn.compact
    def __call__(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        *,
        padding_mask: jax.Array | None = None,
        global_mask: jax.Array | None = None,
        is_causal: bool = False,
        deterministic: bool = True,
        decode: bool = False,
        projections: Mapping[str, jax.Array] | None = None,
    ) -> jax.Array:
        """``[B, T, N, H]`` attention of the projected inputs (see the module docstring).

        ``projections`` holds the extra projections the core asked for
        (:meth:`extra_projections`), by name.
        """
        kwargs = self.prepare(query, key, value, deterministic)
        kwargs.update(self.projection_arguments(projections or {}))
        if self.takes_global_mask:
            # No global tokens by default; a numpy mask stays concrete under jit, so its
            # (zero) count of global tokens is static.
            kwargs["global_mask"] = (
                np.zeros(query.shape[:2], bool) if global_mask is None else global_mask
            )
        if decode:
            if not is_causal:
                raise ValueError("decode=True requires is_causal=True")
            if padding_mask is not None and tuple(padding_mask.shape) != key.shape[:2]:
                raise ValueError(
                    "with decode=True, padding_mask must be bool [B, T] = "
                    f"{list(key.shape[:2])} (the new tokens), got shape {padding_mask.shape}"
                )
            return self.decode_step(query, key, value, kwargs, padding_mask=padding_mask)
        return self.attend(
            query,
            key,
            value,
            kwargs,
            padding_mask=padding_mask,
            global_mask=global_mask,
            is_causal=is_causal,
            deterministic=deterministic,
        )

    def attend(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        kwargs: dict[str, Any],
        *,
        padding_mask: jax.Array | None,
        global_mask: jax.Array | None,
        is_causal: bool,
        deterministic: bool,
    ) -> jax.Array:
        """The full (not decoding) pass: :attr:`function` with ``kwargs`` (options,
        variables, keys and extra projections). Override for a core that computes more
        than one function call; it runs inside the compact ``__call__``, so it may make
        variables."""
        # Through the class: a plain function stored as a class attribute is not a method.
        return type(self).function(
            query, key, value, padding_mask=padding_mask, is_causal=is_causal, **kwargs
        )

    # ------------------------------------------------------------------ decoding

    def decode_step(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        kwargs: dict[str, Any],
        *,
        padding_mask: jax.Array | None = None,
    ) -> jax.Array:
        """One causal step of ``T`` new tokens against the ``"cache"`` collection.

        At init (no cache yet) it receives the full-length input, allocates a cache for
        that length and returns the full causal pass. ``padding_mask`` (bool ``[B, T]``,
        None = all real) marks the new tokens that are real: a padded token is never
        seen as a key, in this step or any later one (left-padded prompts of different
        lengths, see :func:`effjax.models.generate`). Cores without a cache raise.
        """
        raise ValueError(
            f"attention core {type(self).__name__} has no decoding cache; decode=True needs "
            "a variant whose core implements decode_step"
        )

    def advance_cache(self, num_new: int) -> tuple[jax.Array, jax.Array] | None:
        """Counts ``num_new`` tokens into the cache: ``(index, full)`` or None at init.

        Keeps ``cache_index`` (tokens seen) and ``cache_length`` (the init input's length,
        the most tokens the cache was built for) in the ``"cache"`` collection. Returns
        None while initialising (the caller allocates its cache and runs the full pass);
        otherwise the first new position and whether these tokens overflow the cache.
        An exception cannot report a full cache under ``jit``: callers pass their output
        through :meth:`poison_if_full`, so an overflowing step returns NaN (the
        documented poison value), never silently wrong numbers.
        """
        ready = self.has_variable("cache", "cache_index")
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        length = self.variable("cache", "cache_length", lambda: jnp.array(num_new, jnp.int32))
        if not ready:
            return None
        start = index.value
        index.value = start + num_new
        return start, start + num_new > length.value

    def pack_cache(
        self, key: jax.Array, value: jax.Array, padding_mask: jax.Array | None
    ) -> PackedCache | None:
        """Writes the real new tokens of each row after that row's earlier ones.

        The cache (``cached_key``, ``cached_value`` ``[B, L, K, H]``, ``cached_count``
        int32 ``[B]``, with ``L`` the init input's length) holds each row's real tokens
        from slot 0 on, padded tokens never written: a left-padded row's cache is the
        cache of that row alone, so a core whose output depends on token positions
        (blocks, position tables) decodes each row as if alone. Returns None at init
        (the caller runs the full pass), else the :class:`PackedCache` after the write.
        """
        batch, num_new = key.shape[:2]
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        count = self.variable("cache", "cached_count", jnp.zeros, (batch,), jnp.int32)
        position = self.advance_cache(num_new)
        if position is None:
            return None
        length = cached_key.value.shape[1]
        real = jnp.ones((batch, num_new), bool) if padding_mask is None else padding_mask
        slots = count.value[:, None] + jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1
        write = jnp.where(real, slots, length)  # padded tokens: out of range, dropped
        rows = jnp.arange(batch)[:, None]
        cached_key.value = cached_key.value.at[rows, write].set(key, mode="drop")
        cached_value.value = cached_value.value.at[rows, write].set(value, mode="drop")
        count.value = count.value + jnp.sum(real, axis=1, dtype=jnp.int32)
        valid = jnp.arange(length)[None, :] < count.value[:, None]
        positions = jnp.clip(slots, 0, length - 1)
        return PackedCache(
            cached_key.value, cached_value.value, valid, positions, real, position[1]
        )

    def decode_by_full_pass(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        kwargs: dict[str, Any],
        *,
        padding_mask: jax.Array | None = None,
    ) -> jax.Array:
        """A :meth:`decode_step` that reruns the full causal pass over the cache.

        The new queries are placed at their slots of a length-``L`` buffer, :meth:`attend`
        runs causally over the :meth:`pack_cache` keys and values (unwritten slots
        padded), and the rows of the new queries are returned. Row ``t`` of the output is
        therefore row ``t`` of the full causal pass over ``L`` tokens, for any core whose
        causal row ``t`` depends on positions ``<= t`` alone. Exact but not incremental:
        each step costs a full pass over ``L`` tokens.
        """
        cache = self.pack_cache(key, value, padding_mask)
        if cache is None:
            return self.attend_causally(query, key, value, kwargs, padding_mask)
        batch, length = cache.valid.shape
        rows = jnp.arange(batch)[:, None]
        write = jnp.where(cache.real, cache.positions, length)
        queries = jnp.zeros((batch, length, *query.shape[2:]), query.dtype)
        queries = queries.at[rows, write].set(query, mode="drop")
        out = self.attend_causally(queries, cache.key, cache.value, kwargs, cache.valid)
        return self.poison_if_full(out[rows, cache.positions], cache.full)

    def attend_causally(self, query, key, value, kwargs, padding_mask) -> jax.Array:
        """:meth:`attend`, causal and deterministic (what decoding computes), no global mask."""
        return self.attend(
            query,
            key,
            value,
            kwargs,
            padding_mask=padding_mask,
            global_mask=None,
            is_causal=True,
            deterministic=True,
        )

    @staticmethod
    def poison_if_full(out: jax.Array, full: jax.Array) -> jax.Array:
        """``out``, or NaN everywhere when ``full`` (see :meth:`advance_cache`)."""
        return jnp.where(full, jnp.asarray(jnp.nan, out.dtype), out)

    # ------------------------------------------------------------------ upkeep

    @classmethod
    def upkeep(
        cls, collections: Mapping[str, Any], *, rng: jax.Array, step, num_steps: int | None
    ) -> Mapping[str, Any]:
        """Per-step upkeep of the non-trainable ``collections`` after update ``step``
        (1-based) of ``num_steps`` (None: unknown). Pure and jittable; default: none."""
        return collections


class FunctionCore(AttentionCore):
    """The generic core of a plain attention function: ``fn(q, k, v, **options)``.

    Used for a function that is not registered, or registered without a core: it
    gets the layer's ``padding_mask`` and ``is_causal``, its ``global_mask`` when given
    and the function accepts one, and the ``options`` as they are; it has no
    variables, no randomness and no cache.
    """

    fn: Callable[..., jax.Array] | None = None
    options: Mapping[str, Any] = FrozenDict()

    def attend(
        self, query, key, value, kwargs, *, padding_mask, global_mask, is_causal, deterministic
    ):
        extra = {}
        if global_mask is not None and _accepts(self.fn, "global_mask"):
            extra["global_mask"] = global_mask
        return self.fn(
            query,
            key,
            value,
            padding_mask=padding_mask,
            is_causal=is_causal,
            **self.options,
            **extra,
        )


def _accepts(fn: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature (some builtins): pass nothing extra
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def build_core(
    attention: str | Callable | AttentionCore, options: Mapping[str, Any] | None = None
) -> AttentionCore:
    """An unbound core for ``attention`` (registry name, function or core) and ``options``.

    A registered function gets its registered core, exactly as its name does.

    Raises:
      ValueError: unknown name, invalid options, or options given with a core instance.
    """
    options = dict(options or {})
    if isinstance(attention, AttentionCore):
        if options:
            raise ValueError(
                f"attention is a core instance ({type(attention).__name__}); give its options "
                f"to the core, not attention_options (got {sorted(options)})"
            )
        return attention
    if isinstance(attention, str):
        entry = registry.variant(attention)
    elif callable(attention):
        entry = registry.find(attention)
    else:
        raise ValueError(
            f"attention must be a registry name, a core or a function, got {attention!r}"
        )
    if entry is not None and entry.core is not None:
        return entry.core.from_options(options)
    fn = attention if entry is None else entry.fn
    return FunctionCore(fn=fn, options=FrozenDict(options), parent=None)
