"""Loading variables saved before attention cores existed.

Until the cores, a variant's variables sat directly in the attention layer's scope:
``params/.../attention/proj_k`` (Linformer) and
``random_features/.../attention/features`` (Performer). They now belong to the
layer's ``core`` submodule (``.../attention/core/proj_k``), and Performer's scope
also holds its ``redraw_interval``. :func:`remap_legacy_variables` moves old
variables to the new paths, taking anything the old tree lacks from a freshly
initialised ``template`` of the new model.

Example:
  >>> # legacy = checkpoint.restore(manager)  (a tree saved by effjax before the cores)
  >>> # variables = remap_legacy_variables(legacy, model.init(key, example_inputs))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: The scope name of a layer's core (``MultiHeadAttention`` names its core so).
CORE = "core"


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple, Any]:
    flat = {}
    for name, child in tree.items():
        if isinstance(child, Mapping):
            flat.update(_flatten(child, (*prefix, name)))
        else:
            flat[(*prefix, name)] = child
    return flat


def _unflatten(flat: dict[tuple, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = leaf
    return tree


def remap_legacy_variables(
    legacy: Mapping[str, Any], template: Mapping[str, Any]
) -> dict[str, Any]:
    """Variables with ``template``'s structure, filled from a pre-cores ``legacy`` tree.

    Each leaf of ``template`` at a path through a ``core`` scope takes the ``legacy``
    leaf at the same path without that scope (the old location) when there is one; any
    other leaf takes the ``legacy`` leaf at its own path. Leaves ``legacy`` lacks (new
    state such as Performer's ``redraw_interval``) keep ``template``'s value.

    Args:
      legacy: the old variables (all collections, nested dicts of arrays).
      template: variables of the new model, e.g. from ``model.init``.

    Returns:
      A nested dict of collections with ``template``'s paths.

    Raises:
      ValueError: a legacy leaf whose shape differs from the template's (named), or
        legacy leaves that have no place in the new tree (listed).
    """
    old = _flatten(legacy)
    used = set()
    new = {}
    for path, leaf in _flatten(template).items():
        source = tuple(name for name in path if name != CORE)
        source = source if source in old else path
        if source not in old:
            new[path] = leaf
            continue
        value = old[source]
        if np.shape(value) != np.shape(leaf):
            raise ValueError(
                f"legacy variable {'/'.join(source)} has shape {np.shape(value)}, the model "
                f"expects {np.shape(leaf)} at {'/'.join(path)}"
            )
        new[path] = value
        used.add(source)
    unused = sorted("/".join(p) for p in set(old) - used)
    if unused:
        raise ValueError(f"legacy variables with no place in the model: {unused}")
    return _unflatten(new)
