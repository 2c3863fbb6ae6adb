"""The cores of kernel attention: Performer (``"performer"``) and linear (``"linear"``).

Performer keeps its random features ``[F, H]`` in the non-trainable
``"random_features"`` collection (variable ``features``, beside its redraw
schedule ``redraw_interval``), drawn from the ``"params"`` rng at init, so
evaluation is deterministic. :meth:`PerformerCore.upkeep` redraws them every
``redraw_interval`` training steps (Choromanski et al. 2020, sec. 4.2), never
after the last step, so a trained model is evaluated with the features it
trained with. Both cores decode with the recurrent state of
:class:`effjax.attention.KernelState` in the ``"cache"`` collection (``kv``,
``normalizer``, ``log_scale``): O(1) memory per generated token.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from effjax.layers import MultiHeadAttention
  >>> layer = MultiHeadAttention(num_heads=2, attention="performer",
  ...                            attention_options={"num_features": 32})
  >>> x = jnp.ones((1, 8, 16))
  >>> variables = layer.init(jax.random.key(0), x)
  >>> variables["random_features"]["core"]["features"].shape
  (32, 8)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from effjax.attention import benchspec, registry
from effjax.attention import kernel as kernel_lib
from effjax.attention.helpers import check_positive
from effjax.layers.cores.base import AttentionCore

RANDOM_FEATURES = "random_features"


class _RecurrentCore(AttentionCore):
    """Decoding with a :class:`~effjax.attention.KernelState` in the ``"cache"`` collection;
    padded new tokens (``padding_mask``) add nothing to the state."""

    step_function: ClassVar[Callable[..., tuple[jax.Array, kernel_lib.KernelState]] | None] = None

    def state_features(self, kwargs: Mapping[str, Any], head_dim: int) -> int:
        """F, the feature count of the recurrent state."""
        raise NotImplementedError

    def decode_step(self, query, key, value, kwargs, *, padding_mask=None):
        batch, _, num_kv_heads, value_dim = value.shape
        empty = kernel_lib.kernel_state_init(
            batch, num_kv_heads, self.state_features(kwargs, query.shape[-1]), value_dim
        )
        cached = [
            self.variable("cache", name, lambda x=x: x)
            for name, x in zip(kernel_lib.KernelState._fields, empty, strict=True)
        ]
        position = self.advance_cache(query.shape[1])
        if position is None:
            return type(self).function(
                query, key, value, is_causal=True, padding_mask=padding_mask, **kwargs
            )
        state = kernel_lib.KernelState(*(v.value for v in cached))
        out, state = type(self).step_function(
            state, query, key, value, padding_mask=padding_mask, **kwargs
        )
        for variable, x in zip(cached, state, strict=True):
            variable.value = x
        return self.poison_if_full(out, position[1])


class PerformerCore(_RecurrentCore):
    """:func:`~effjax.attention.performer_attention` (FAVOR+) in a layer.

    Options: ``num_features`` (F, 256 as in the paper's experiments), ``orthogonal``
    (True: block-orthogonal features, FAVOR+), ``kernel`` ("softmax" or "relu"),
    ``redraw_interval`` (1000 training steps; 0 = never), ``scale``, ``chunk_size``,
    and ``features``: a fixed ``[F, H]`` array instead of the layer's own variable.
    """

    function = staticmethod(kernel_lib.performer_attention)
    step_function = staticmethod(kernel_lib.performer_decode_step)
    layer_options = ("num_features", "orthogonal", "redraw_interval", "features")

    num_features: int = 256
    orthogonal: bool = True
    kernel: str = "softmax"
    redraw_interval: int = 1000
    scale: float | None = None
    chunk_size: int | None = None
    features: jax.Array | None = None

    def check(self):
        check_positive("num_features", self.num_features)
        if not isinstance(self.redraw_interval, int) or self.redraw_interval < 0:
            raise ValueError(f"redraw_interval must be an int >= 0, got {self.redraw_interval!r}")
        if self.kernel not in kernel_lib.PERFORMER_KERNELS:
            raise ValueError(
                f"kernel must be one of {kernel_lib.PERFORMER_KERNELS}, got {self.kernel!r}"
            )

    def state_features(self, kwargs, head_dim):
        return kwargs["features"].shape[0]

    def prepare(self, query, key, value, deterministic):
        options = self.function_options()
        if self.features is not None:
            return {**options, "features": self.features}
        if not self.is_initializing() and not self.has_variable(RANDOM_FEATURES, "features"):
            raise ValueError(
                f"performer attention needs the {RANDOM_FEATURES!r} collection returned by "
                "init; pass all variables to apply, not only params"
            )
        features = self.variable(
            RANDOM_FEATURES,
            "features",
            lambda: kernel_lib.make_performer_features(
                self.make_rng("params"), self.num_features, query.shape[-1], self.orthogonal
            ),
        )
        self.variable(
            RANDOM_FEATURES, "redraw_interval", lambda: jnp.array(self.redraw_interval, jnp.int32)
        )
        return {**options, "features": features.value}

    @classmethod
    def upkeep(cls, collections, *, rng, step, num_steps):
        """Redraws every layer's features after update ``step`` when its
        ``redraw_interval`` divides ``step``, unless ``step`` is the last (``num_steps``)."""
        if RANDOM_FEATURES not in collections:
            return collections
        last = False if num_steps is None else jnp.asarray(step) >= num_steps
        return redraw_performer_features(collections, rng, step, keep=last)


def redraw_performer_features(
    variables: Mapping[str, Any],
    rng: jax.Array,
    step: int | jax.Array,
    redraw_interval: int | None = None,
    *,
    orthogonal: bool = True,
    keep: bool | jax.Array = False,
) -> dict[str, Any]:
    """New variables whose Performer features are redrawn every ``redraw_interval`` steps.

    Choromanski et al. 2020 (sec. 4.2) redraw the random features periodically during
    training. Every ``features [F, H]`` in the ``"random_features"`` collection is
    replaced by :func:`~effjax.attention.make_performer_features` of the same shape,
    drawn from ``fold_in(fold_in(rng, step), layer index)``, when ``step > 0``, the
    interval divides ``step`` and ``keep`` is False; otherwise the variables come back
    unchanged. The interval is ``redraw_interval`` or, when None, each layer's own
    (its ``redraw_interval`` variable; 0 = never). Pure and jittable (``step`` and
    ``keep`` may be traced).

    Args:
      variables: the layer's or model's variables (with a ``"random_features"`` collection).
      rng: base PRNG key.
      step: training step (updates done).
      redraw_interval: positive int, or None for each layer's own.
      orthogonal: draw block-orthogonal features (as the layer does by default).
      keep: True keeps every feature (the train loop passes "this was the last step").

    Returns:
      A dict of collections, the others untouched.

    Example:
      >>> # inside a train step: variables = redraw_performer_features(variables, key, step)
    """
    if redraw_interval is not None:
        check_positive("redraw_interval", redraw_interval)
    if RANDOM_FEATURES not in variables:
        raise ValueError(
            f"variables have no {RANDOM_FEATURES!r} collection (got {sorted(variables)}); "
            "init a layer with attention='performer' first"
        )
    step = jnp.asarray(step)
    step_rng = jax.random.fold_in(rng, step)
    counter = iter(range(1 << 30))

    def redraw(node):
        if "features" not in node:
            return {name: redraw(child) for name, child in node.items()}
        old = node["features"]
        interval = node.get("redraw_interval") if redraw_interval is None else redraw_interval
        interval = jnp.asarray(0 if interval is None else interval)
        due = (step > 0) & (interval > 0) & (step % jnp.maximum(interval, 1) == 0)
        new = kernel_lib.make_performer_features(
            jax.random.fold_in(step_rng, next(counter)), old.shape[0], old.shape[1], orthogonal
        )
        return {**node, "features": jnp.where(due & ~jnp.asarray(keep), new, old)}

    return {**variables, RANDOM_FEATURES: redraw(variables[RANDOM_FEATURES])}


class LinearCore(_RecurrentCore):
    """:func:`~effjax.attention.linear_attention` (Katharopoulos et al. 2020) in a layer.

    Options: ``feature_map`` ("elu" = elu(x) + 1, or a callable), ``scale``, ``chunk_size``.
    """

    function = staticmethod(kernel_lib.linear_attention)
    step_function = staticmethod(kernel_lib.linear_decode_step)

    feature_map: Any = "elu"
    scale: float | None = None
    chunk_size: int | None = None

    def state_features(self, kwargs, head_dim):
        return kernel_lib.linear_num_features(self.feature_map, head_dim)


BENCH_FEATURES = 256

PERFORMER_BENCH = benchspec.BenchSpec(
    lambda rng, s: {
        "features": kernel_lib.make_performer_features(rng, BENCH_FEATURES, s.head_dim)
    },
    # exp feature map: a [H, F] projection (2 H F FLOPs per token) for queries and keys.
    lambda s, o: benchspec.kernel_flops(s, BENCH_FEATURES, 2.0 * s.head_dim * BENCH_FEATURES),
    benchspec.fixed(num_features=BENCH_FEATURES, kernel="softmax"),
)
LINEAR_BENCH = benchspec.BenchSpec(
    flops=lambda s, o: benchspec.kernel_flops(s, s.head_dim, 2.0 * s.head_dim),
    summary=benchspec.fixed(feature_map="elu"),
)

registry.attach("performer", core=PerformerCore, bench=PERFORMER_BENCH)
registry.attach("linear", core=LinearCore, bench=LINEAR_BENCH)
