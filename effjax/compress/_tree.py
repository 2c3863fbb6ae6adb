"""Choosing which leaves of a parameter pytree a compression step touches."""

from __future__ import annotations

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


def is_weight_matrix(path: Path, leaf: jax.Array) -> bool:
    """The default filter: floating arrays with ``ndim >= 2`` (kernels, embeddings).

    Biases, norm scales and other vectors are left alone, as in Han et al. (2015)
    and Zhu & Gupta (2017); that includes the ``bias [N, H]`` of an attention
    projection (``DenseGeneral`` with ``features=(N, H)``), a vector laid out per head.
    """
    is_bias = bool(path) and path[-1] == "bias"
    return (
        not is_bias
        and hasattr(leaf, "ndim")
        and leaf.ndim >= 2
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
