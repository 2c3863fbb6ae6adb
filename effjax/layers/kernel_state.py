"""Layer state of kernel attention: Performer random features and the decoding state.

Registered hooks (see :mod:`effjax.layers.variants`):

* ``"performer"`` prepare: keeps ``features [F, H]`` in the non-trainable
  ``"random_features"`` collection, drawn from the ``"params"`` rng at init, so
  evaluation is deterministic (the same features every call) until
  :func:`redraw_performer_features` replaces them. Layer-only options (consumed
  here, not passed to the attention function): ``num_features`` (default 256)
  and ``orthogonal`` (default True). Passing ``features`` in the options instead
  uses those and creates no variable.
* ``"performer"`` and ``"linear"`` decode: the recurrent state of
  :class:`effjax.attention.KernelState` in the ``"cache"`` collection (``kv``,
  ``normalizer``, ``log_scale``): O(1) memory per generated token.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from effjax.layers import MultiHeadAttention, redraw_performer_features
  >>> layer = MultiHeadAttention(num_heads=2, attention="performer",
  ...                            attention_options={"num_features": 32})
  >>> x = jnp.ones((1, 8, 16))
  >>> variables = layer.init(jax.random.key(0), x)
  >>> variables["random_features"]["features"].shape
  (32, 8)
  >>> variables = redraw_performer_features(variables, jax.random.key(1), 1000, 1000)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from effjax.attention import _common
from effjax.attention import kernel as kernel_lib
from effjax.layers.variants import register_layer_hooks

RANDOM_FEATURES = "random_features"
DEFAULT_NUM_FEATURES = 256


def performer_prepare(module, query, key, value, options: dict, deterministic: bool) -> dict:
    """Prepare hook of ``"performer"``: the layer's random features (see module docstring)."""
    num_features = options.pop("num_features", DEFAULT_NUM_FEATURES)
    orthogonal = options.pop("orthogonal", True)
    if "features" in options:
        return {}
    if not module.is_initializing() and not module.has_variable(RANDOM_FEATURES, "features"):
        raise ValueError(
            f"performer attention needs the {RANDOM_FEATURES!r} collection returned by init; "
            f"pass it to apply (got collections without it)"
        )
    head_dim = query.shape[-1]
    features = module.variable(
        RANDOM_FEATURES,
        "features",
        lambda: kernel_lib.make_performer_features(
            module.make_rng("params"), num_features, head_dim, orthogonal
        ),
    )
    return {"features": features.value}


def redraw_performer_features(
    variables: Mapping[str, Any],
    rng: jax.Array,
    step: int | jax.Array,
    redraw_interval: int,
    *,
    orthogonal: bool = True,
) -> dict[str, Any]:
    """New variables whose Performer features are redrawn every ``redraw_interval`` steps.

    Choromanski et al. 2020 (sec. 4.2) redraw the random features periodically
    during training. At ``step > 0`` with ``step % redraw_interval == 0`` every
    array in the ``"random_features"`` collection is replaced by
    :func:`~effjax.attention.make_performer_features` of the same shape, drawn
    from ``fold_in(fold_in(rng, step), leaf index)`` (so a fixed ``rng`` still gives
    new features at each redraw); otherwise the variables come back unchanged.
    Pure and jittable (``step`` may be traced).

    Args:
      variables: the layer's or model's variables (with a ``"random_features"`` collection).
      rng: base PRNG key.
      step: training step.
      redraw_interval: positive int.
      orthogonal: draw block-orthogonal features (as the layer does by default).

    Returns:
      A dict of collections, the others untouched.

    Example:
      >>> # inside a train step: variables = redraw_performer_features(variables, key, step, 1000)
    """
    redraw_interval = _common.check_positive("redraw_interval", redraw_interval)
    if RANDOM_FEATURES not in variables:
        raise ValueError(
            f"variables have no {RANDOM_FEATURES!r} collection (got {sorted(variables)}); "
            "init a layer with attention='performer' first"
        )
    step = jnp.asarray(step)
    redraw = jnp.logical_and(step > 0, step % redraw_interval == 0)
    step_rng = jax.random.fold_in(rng, step)
    leaves, treedef = jax.tree.flatten(variables[RANDOM_FEATURES])
    new_leaves = [
        jnp.where(
            redraw,
            kernel_lib.make_performer_features(
                jax.random.fold_in(step_rng, i), leaf.shape[0], leaf.shape[1], orthogonal
            ),
            leaf,
        )
        for i, leaf in enumerate(leaves)
    ]
    return {**variables, RANDOM_FEATURES: jax.tree.unflatten(treedef, new_leaves)}


def _recurrent_decode(
    attention_fn: Callable[..., jax.Array],
    step_fn: Callable[..., tuple[jax.Array, kernel_lib.KernelState]],
    num_features: Callable[[Mapping[str, Any], int], int],
):
    """A decode hook keeping a :class:`KernelState` in the ``"cache"`` collection."""

    def decode(module, query, key, value, options):
        is_initialized = module.has_variable("cache", "kv")
        batch, _, num_kv_heads, value_dim = value.shape
        empty = kernel_lib.kernel_state_init(
            batch, num_kv_heads, num_features(options, query.shape[-1]), value_dim
        )
        cached = [
            module.variable("cache", name, lambda x=x: x)
            for name, x in zip(kernel_lib.KernelState._fields, empty, strict=True)
        ]
        if not is_initialized:
            return attention_fn(query, key, value, is_causal=True, **options)
        state = kernel_lib.KernelState(*(v.value for v in cached))
        out, state = step_fn(state, query, key, value, **options)
        for variable, x in zip(cached, state, strict=True):
            variable.value = x
        return out

    return decode


register_layer_hooks(
    "performer",
    prepare=performer_prepare,
    decode=_recurrent_decode(
        kernel_lib.performer_attention,
        kernel_lib.performer_decode_step,
        lambda options, head_dim: options["features"].shape[0],
    ),
)
register_layer_hooks(
    "linear",
    decode=_recurrent_decode(
        kernel_lib.linear_attention,
        kernel_lib.linear_decode_step,
        lambda options, head_dim: kernel_lib.linear_num_features(
            options.get("feature_map", "elu"), head_dim
        ),
    ),
)
