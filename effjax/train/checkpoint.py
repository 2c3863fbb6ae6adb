"""Checkpoints of parameters and train states with orbax: the one implementation
that effjax.train.loop and users share.

Layout: ``<directory>/<step>/default/``, one orbax standard item (a pytree of
arrays) per step. A step is written into a temporary directory
(``<step>.orbax-checkpoint-tmp...``) and renamed to ``<step>`` only once complete, so
a save killed midway leaves the earlier steps readable: the manager lists finished
steps only, and a leftover temporary directory is never restored (orbax's atomic-rename
commit).

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> from effjax.train.checkpoint import checkpoint_manager, restore, save
  >>> manager = checkpoint_manager(tempfile.mkdtemp())
  >>> params = {"w": jnp.ones((2, 3))}
  >>> save(manager, 10, params)
  True
  >>> restore(manager, params)["w"].shape
  (2, 3)
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = TypeVar("PyTree")


def checkpoint_manager(
    directory: str | os.PathLike,
    *,
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1,
    async_save: bool = True,
    read_only: bool = False,
    create: bool = True,
) -> ocp.CheckpointManager:
    """An orbax ``CheckpointManager`` for one pytree per step under ``directory``.

    Args:
      directory: absolute or relative path; created unless ``read_only`` or not ``create``.
      max_to_keep: keep the newest this many steps (None: all).
      save_interval_steps: save only steps divisible by this.
      async_save: write in a background thread (``save(..., wait=False)`` returns early).
      read_only: open existing checkpoints without creating or deleting anything.
      create: create ``directory`` now. With False nothing is created until the caller
        makes the directory and saves (the loop validates a work directory first and
        writes nothing when it refuses it); a missing directory has no steps.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save,
        create=create and not read_only,
        read_only=read_only,
        # A save killed midway leaves a "<step>.orbax-checkpoint-tmp" directory; the next
        # manager removes it before its first save (it is never listed as a step either way).
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(
        os.path.abspath(directory), item_handlers=ocp.StandardCheckpointHandler(), options=options
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, wait: bool = True) -> bool:
    """Saves ``state`` (params, a ``TrainState``, any pytree of arrays) as ``step``.

    A step that is already saved is kept as it is (orbax would raise): a resumed run
    reaches its restored step again, and a run's final save may follow a periodic one.

    Returns whether a save started (False when the step exists or
    ``save_interval_steps`` skips it). With ``wait`` the call returns once the step is
    committed (renamed into place).
    """
    if step in manager.all_steps():
        return False
    started = manager.save(step, args=ocp.args.StandardSave(state))
    if wait:
        manager.wait_until_finished()
    return started


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """``{"params/dense/kernel": shape}`` of a pytree of arrays, scalars or orbax metadata."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(np.shape(leaf))
        for path, leaf in flat
    }


def _check_compatible(saved, target, where: str) -> None:
    """Raises a ValueError naming every leaf that the target lacks, adds or reshapes."""
    have, want = _shapes(saved), _shapes(target)
    problems = [f"missing in checkpoint: {k}" for k in sorted(want.keys() - have.keys())]
    problems += [f"not in target: {k}" for k in sorted(have.keys() - want.keys())]
    problems += [
        f"{k}: checkpoint shape {have[k]}, target shape {want[k]}"
        for k in sorted(want.keys() & have.keys())
        if have[k] != want[k]
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        raise ValueError(f"checkpoint {where} does not fit the model it is restored into: {shown}")


def restore(
    manager: ocp.CheckpointManager,
    target: PyTree,
    step: int | None = None,
    *,
    shardings: Any = None,
) -> PyTree:
    """Restores ``step`` (default: the newest finished one) into the structure of ``target``.

    ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` (a freshly initialised
    ``TrainState``, or ``jax.eval_shape`` of its initialiser); the result has its
    structure, shapes, dtypes and shardings. Every leaf name and shape is compared with
    the checkpoint's metadata before any array is read.

    Args:
      manager: from :func:`checkpoint_manager`.
      target: the pytree to restore into.
      step: the step to restore (None: the newest).
      shardings: a pytree of ``jax.sharding.Sharding`` with ``target``'s structure
        (e.g. effjax.train.sharding.state_shardings): each array is restored straight
        into that placement, so a device holds only its shards. None: each target
        leaf's own sharding.

    Raises:
      FileNotFoundError: no finished checkpoint, or no checkpoint for ``step``.
      ValueError: the checkpoint's leaves differ from ``target``'s (names them).
    """
    steps = manager.all_steps()
    if step is None:
        if not steps:
            raise FileNotFoundError(f"no finished checkpoint in {manager.directory}")
        step = max(steps)
    elif step not in steps:
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {manager.directory}; finished steps: {sorted(steps)}"
        )
    where = f"{manager.directory}/{step}"
    _check_compatible(manager.item_metadata(step).tree, target, where)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    if shardings is not None:
        abstract = jax.tree.map(
            lambda leaf, where: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where),
            abstract,
            shardings,
        )
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
