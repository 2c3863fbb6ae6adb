"""Unstructured, N:M and gradual pruning of parameter pytrees, and masks that survive training.

Masks are bool pytrees with the structure of the params (True = keep). Leaves
that a filter does not select get all-True masks, so ``apply_masks`` and
:func:`keep_masks` can treat every leaf alike.

- :func:`magnitude_masks`: drop the smallest ``|w|`` (Han et al. 2015), per
  layer or globally, exactly ``round(sparsity * size)`` weights, ties broken
  by flat index (lower index pruned first), so the result is deterministic.
- :func:`nm_masks`: keep ``n`` of every ``m`` consecutive weights along the
  input axis (2:4 sparsity of NVIDIA Ampere, Mishra et al. 2021).
- :func:`movement_scores` + :func:`score_masks`: movement pruning (Sanh et al.
  2020), ``S = -sum_t w_t * dL/dw_t``; keep the highest scores.
- :func:`polynomial_sparsity_schedule`: gradual pruning (Zhu & Gupta 2017).
- :func:`keep_masks`: an optax transformation that keeps pruned weights at zero.
- :func:`prune_step`: one training step with gradual magnitude/movement pruning.

Structured (head / neuron) pruning lives in :mod:`effjax.compress.structured`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from effjax.compress._tree import FilterFn, selection

Scope = Literal["layer", "global"]
Schedule = Callable[[jax.Array], jax.Array]


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, (int, float, np.number)) and not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _keep_mask_from_ranks(scores: jax.Array, sparsity: Any) -> jax.Array:
    """True for all but the ``round(sparsity * size)`` lowest scores (ties: lower index first)."""
    flat = scores.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    if isinstance(sparsity, (int, float, np.number)):  # exact count, computed on the host
        num_pruned = round(float(sparsity) * flat.size)
    else:  # traced (a schedule under jit)
        num_pruned = jnp.round(sparsity * flat.size).astype(jnp.int32)
    return (ranks >= num_pruned).reshape(scores.shape)


def score_masks(
    scores: Any,
    sparsity: float | jax.Array,
    *,
    scope: Scope = "layer",
    filter_fn: FilterFn | None = None,
) -> Any:
    """Keep masks that drop the lowest scores: ``round(sparsity * size)`` of them.

    Args:
      scores: a pytree of float arrays (``|w|`` for magnitude pruning, movement
        scores for movement pruning); its paths and leaves are what ``filter_fn`` sees.
      sparsity: the fraction to drop, in ``[0, 1)`` (may be traced under jit).
      scope: ``"layer"``: each selected leaf loses exactly that fraction;
        ``"global"``: the selected leaves together do, ranked on one scale.
      filter_fn: ``(path, leaf) -> bool``; default: float arrays with ``ndim >= 2``.

    Returns:
      A bool pytree like ``scores``; unselected leaves are all True.
    """
    _check_fraction("sparsity", sparsity)
    chosen = selection(scores, filter_fn, caller="score_masks")
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    picks = treedef.flatten_up_to(chosen)
    if scope == "layer":
        masks = [
            _keep_mask_from_ranks(leaf, sparsity) if pick else jnp.ones(jnp.shape(leaf), bool)
            for leaf, pick in zip(leaves, picks, strict=True)
        ]
    elif scope == "global":
        selected = [leaf for leaf, pick in zip(leaves, picks, strict=True) if pick]
        flat = jnp.concatenate([jnp.asarray(x, jnp.float32).reshape(-1) for x in selected])
        keep = _keep_mask_from_ranks(flat, sparsity)
        offsets = np.cumsum([0] + [x.size for x in selected])
        pieces = iter(
            keep[start:stop].reshape(x.shape)
            for start, stop, x in zip(offsets[:-1], offsets[1:], selected, strict=True)
        )
        masks = [
            next(pieces) if pick else jnp.ones(jnp.shape(leaf), bool)
            for leaf, pick in zip(leaves, picks, strict=True)
        ]
    else:
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    return jax.tree_util.tree_unflatten(treedef, masks)


def magnitude_masks(
    params: Any,
    sparsity: float | jax.Array,
    *,
    scope: Scope = "layer",
    filter_fn: FilterFn | None = None,
) -> Any:
    """L1 magnitude pruning masks: drop the ``round(sparsity * size)`` smallest ``|w|``.

    Args:
      params: a pytree of arrays (Dense kernels ``[in, out]``).
      sparsity: fraction to drop, in ``[0, 1)``.
      scope: ``"layer"`` (per selected leaf) or ``"global"`` (across selected leaves).
      filter_fn: ``(path, leaf) -> bool``; default: kernels (float, ``ndim >= 2``);
        biases and norms are kept unless the filter selects them.

    Returns:
      Bool pytree of keep masks; ties in ``|w|`` are broken by flat index (lower pruned first).

    Example:
      >>> import jax.numpy as jnp
      >>> from effjax.compress import magnitude_masks
      >>> m = magnitude_masks({"kernel": jnp.array([[0.1, -3.0], [2.0, -0.2]])}, 0.5)
      >>> m["kernel"].tolist()
      [[False, True], [True, False]]
    """
    return score_masks(
        jax.tree_util.tree_map(jnp.abs, params), sparsity, scope=scope, filter_fn=filter_fn
    )


def nm_masks(params: Any, n: int, m: int, *, filter_fn: FilterFn | None = None) -> Any:
    """N:M masks: keep the ``n`` largest ``|w|`` of every ``m`` consecutive inputs (axis 0).

    For a Dense kernel ``[in, out]`` each output column keeps ``n`` of every ``m``
    inputs, the pattern sparse tensor cores run (2:4, Mishra et al. 2021). Ties
    keep the lower index.

    Args:
      params: pytree of arrays; each selected leaf needs ``shape[0] % m == 0``.
      n, m: ``1 <= n <= m``.
      filter_fn: as in :func:`magnitude_masks`.

    Example:
      >>> import jax.numpy as jnp
      >>> from effjax.compress import nm_masks
      >>> kernel = jnp.array([[1.0], [-4.0], [3.0], [0.5]])
      >>> nm_masks({"kernel": kernel}, 2, 4)["kernel"][:, 0].tolist()
      [False, True, True, False]
    """
    if not (isinstance(m, int) and isinstance(n, int) and 1 <= n <= m):
        raise ValueError(f"N:M pruning needs integers 1 <= n <= m, got n={n}, m={m}")
    chosen = selection(params, filter_fn, caller="nm_masks")

    def mask_leaf(path, leaf, pick):
        if not pick:
            return jnp.ones(jnp.shape(leaf), bool)
        if leaf.shape[0] % m:
            raise ValueError(
                f"nm_masks: {jax.tree_util.keystr(path)} has shape {leaf.shape}; its input axis "
                f"(axis 0, size {leaf.shape[0]}) must be divisible by m={m}"
            )
        groups = jnp.abs(leaf).reshape((leaf.shape[0] // m, m, *leaf.shape[1:]))
        order = jnp.argsort(-groups, axis=1, stable=True)
        ranks = jnp.argsort(order, axis=1, stable=True)
        return (ranks < n).reshape(leaf.shape)

    return jax.tree_util.tree_map_with_path(mask_leaf, params, chosen)


def apply_masks(params: Any, masks: Any) -> Any:
    """``params`` with the masked-out entries set to exactly zero."""
    return jax.tree_util.tree_map(lambda p, k: jnp.where(k, p, jnp.zeros_like(p)), params, masks)


def sparsity_of(masks: Any) -> jax.Array:
    """The fraction of False entries over all leaves of a mask pytree."""
    leaves = jax.tree_util.tree_leaves(masks)
    dropped = sum(jnp.sum(~leaf) for leaf in leaves)
    return dropped / sum(leaf.size for leaf in leaves)


def movement_scores(params: Any, grads: Any, scores: Any | None = None) -> Any:
    """Accumulates movement-pruning scores ``S <- S - w * dL/dw`` (Sanh et al. 2020, eq. 4).

    Weights moving away from zero (``w`` and ``-grad`` of the same sign) gain score;
    keep the highest with :func:`score_masks`. ``scores=None`` starts from zero.
    """
    if scores is None:
        scores = jax.tree_util.tree_map(jnp.zeros_like, params)
    return jax.tree_util.tree_map(lambda s, p, g: s - p * g, scores, params, grads)


def polynomial_sparsity_schedule(
    final_sparsity: float,
    *,
    begin_step: int,
    end_step: int,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
) -> Schedule:
    """Gradual pruning schedule of Zhu & Gupta (2017), eq. 1 (``power=3``):

        s_t = s_f + (s_i - s_f) * (1 - clip((t - t_0) / (t_1 - t_0), 0, 1)) ** power

    Prunes fast early (many redundant weights) and slowly near ``final_sparsity``.

    Example:
      >>> from effjax.compress import polynomial_sparsity_schedule
      >>> schedule = polynomial_sparsity_schedule(0.8, begin_step=0, end_step=100)
      >>> [round(float(schedule(t)), 3) for t in (0, 50, 100, 200)]
      [0.0, 0.7, 0.8, 0.8]
    """
    _check_fraction("final_sparsity", final_sparsity)
    _check_fraction("initial_sparsity", initial_sparsity)
    if end_step <= begin_step:
        raise ValueError(f"end_step={end_step} must be greater than begin_step={begin_step}")

    def schedule(step: jax.Array) -> jax.Array:
        progress = jnp.clip(
            (jnp.asarray(step, jnp.float32) - begin_step) / (end_step - begin_step), 0.0, 1.0
        )
        return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power

    return schedule


def keep_masks(masks: Any) -> optax.GradientTransformation:
    """An optax transformation that keeps pruned weights at exactly zero.

    Put it last in the chain (``optax.chain(optax.adamw(...), keep_masks(masks))``):
    it replaces each masked-out update by ``-params``, so after
    ``optax.apply_updates`` those weights are ``p + (-p) = 0`` exactly, whatever
    Adam's moments or weight decay proposed (and even if they were not zero yet).
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("keep_masks needs params: call optimizer.update(grads, state, params)")
        updates = jax.tree_util.tree_map(
            lambda u, p, k: jnp.where(k, u, -p.astype(u.dtype)), updates, params, masks
        )
        return updates, state

    return optax.GradientTransformation(init, update)


class PruneState(NamedTuple):
    """State of :func:`prune_step`: ``masks`` (bool pytree) and ``scores`` (movement) ride along."""

    step: jax.Array
    params: Any
    opt_state: Any
    masks: Any
    scores: Any


def init_prune_state(params: Any, optimizer: optax.GradientTransformation) -> PruneState:
    """A :class:`PruneState` at step 0 with nothing pruned and zero movement scores."""
    return PruneState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        masks=jax.tree_util.tree_map(lambda p: jnp.ones(jnp.shape(p), bool), params),
        scores=jax.tree_util.tree_map(jnp.zeros_like, params),
    )


def prune_step(
    state: PruneState,
    batch: Any,
    *,
    loss_fn: Callable[[Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    method: Literal["magnitude", "movement"] = "magnitude",
    update_every: int = 1,
    scope: Scope = "layer",
    filter_fn: FilterFn | None = None,
) -> tuple[PruneState, dict[str, jax.Array]]:
    """One optimizer step with gradual pruning, a pure function of ``(state, batch)``.

    Takes the optimizer step, then every ``update_every`` steps recomputes the masks
    at sparsity ``schedule(step)`` from ``|w|`` (``"magnitude"``) or the accumulated
    movement scores (``"movement"``), and zeroes the pruned weights. Jit it with
    ``jax.jit(functools.partial(prune_step, loss_fn=..., optimizer=..., schedule=...))``
    or use :func:`make_prune_step`.

    Returns:
      The new state and ``{"loss", "sparsity"}`` (the scheduled sparsity of this step).
    """
    if method not in ("magnitude", "movement"):
        raise ValueError(f"method must be 'magnitude' or 'movement', got {method!r}")
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    scores = (
        movement_scores(state.params, grads, state.scores) if method == "movement" else state.scores
    )
    step = state.step + 1
    sparsity = schedule(step)
    ranking = scores if method == "movement" else jax.tree_util.tree_map(jnp.abs, params)
    fresh = score_masks(ranking, sparsity, scope=scope, filter_fn=filter_fn)
    refresh = step % update_every == 0
    masks = jax.tree_util.tree_map(
        lambda new, old: jnp.where(refresh, new, old), fresh, state.masks
    )
    new_state = PruneState(step, apply_masks(params, masks), opt_state, masks, scores)
    return new_state, {"loss": loss, "sparsity": sparsity}


def make_prune_step(**options: Any) -> Callable[[PruneState, Any], tuple[PruneState, dict]]:
    """``jax.jit`` of :func:`prune_step` with its keyword ``options`` bound."""
    return jax.jit(functools.partial(prune_step, **options))
