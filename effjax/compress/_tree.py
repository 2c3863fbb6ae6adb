"""Choosing which leaves of a parameter pytree a compression step touches."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Path = tuple[str, ...]
FilterFn = Callable[[Path, jax.Array], bool]


def path_names(path: tuple[Any, ...]) -> Path:
    """A jax key path as plain names: ``("encoder", "layers_0", "query", "kernel")``."""
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    return tuple(names)


def kernel_stacked_axes(path: Path, leaf: jax.Array) -> int:
    """How many leading axes of a parameter stack independent copies of it.

    One for each ``effjax.layers.ReversibleStack`` above it (its ``"layers"`` parameter
    holds the ``"f"``/``"g"`` trees of every block stacked as ``[L, ...]``) and one for
    the expert parameters of ``effjax.layers.SwitchFeedForward`` (``experts/intermediate``
    and ``experts/output``: ``kernel [E, D_in, D_out]``, ``bias [E, D_out]``). Each copy
    is a layer of its own: it gets its own int8 scales and counts as the matrix (or
    vector) it stacks.

    Example:
      >>> import jax.numpy as jnp
      >>> kernel_stacked_axes(("ff", "experts", "intermediate", "kernel"), jnp.zeros((4, 8, 16)))
      1
      >>> kernel_stacked_axes(("layers", "layers", "g", "norm", "scale"), jnp.zeros((2, 8)))
      1
    """
    del leaf
    blocks = sum(a == "layers" and b in ("f", "g") for a, b in itertools.pairwise(path))
    experts = len(path) >= 3 and path[-3] == "experts" and path[-2] in ("intermediate", "output")
    return blocks + int(experts)


def is_weight_matrix(path: Path, leaf: jax.Array) -> bool:
    """The default filter: floating arrays with ``ndim >= 2`` (kernels, embeddings),
    not counting the axes that stack copies of a layer (:func:`kernel_stacked_axes`).

    Biases, norm scales and other vectors are left alone, as in Han et al. (2015)
    and Zhu & Gupta (2017); that includes the ``bias [N, H]`` of an attention
    projection (``DenseGeneral`` with ``features=(N, H)``), a vector laid out per head,
    and the ``[L, D]`` norm scales of a reversible stack.
    """
    is_bias = bool(path) and path[-1] == "bias"
    return (
        not is_bias
        and hasattr(leaf, "ndim")
        and leaf.ndim - kernel_stacked_axes(path, leaf) >= 2
        and jnp.issubdtype(leaf.dtype, jnp.floating)
    )


def selection(params: Any, filter_fn: FilterFn | None, *, caller: str) -> Any:
    """A pytree of Python bools, True where ``filter_fn(path, leaf)`` selects the leaf.

    Raises ValueError naming ``filter_fn`` when it selects nothing: compressing
    nothing is almost always a wrong filter, not an intent.
    """
    filter_fn = is_weight_matrix if filter_fn is None else filter_fn
    chosen = jax.tree_util.tree_map_with_path(
        lambda path, leaf: bool(filter_fn(path_names(path), leaf)), params
    )
    if not any(jax.tree_util.tree_leaves(chosen)):
        shapes = jax.tree_util.tree_map(lambda x: getattr(x, "shape", None), params)
        raise ValueError(f"{caller}: filter_fn selects no parameter (param shapes: {shapes})")
    return chosen
