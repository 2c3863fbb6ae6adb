"""Scale-out on JAX's own runtime: meshes, logical axis rules, sharded and pmap steps.

Three ways to spread a training step over devices, all computing the same update as
one device (tests/train/test_sharding.py checks parameters and loss to 1e-5):

* **Data parallel** (``jit`` + ``NamedSharding``): the batch's leading axis is split
  over the mesh axis ``"data"``, parameters are replicated; XLA inserts the gradient
  all-reduce.
* **Tensor / sequence parallel** (same ``jit``): parameters are split over ``"model"``
  according to *logical axis rules* (Flax's ``nn.logical_to_mesh_axes``): each
  parameter path is given logical axis names (``("embed", "heads", "kv")`` for a
  query kernel) by :data:`PARAM_LOGICAL_AXES`, and the rules map logical names to mesh
  axes. ``SEQUENCE_RULES`` also splits the batch's length axis over ``"model"``.
* **Expert parallel** (same ``jit``): Switch experts (effjax.layers.SwitchFeedForward)
  are split over the mesh axis ``"expert"`` (``make_mesh(expert=...)``, the run's
  ``mesh_expert``): their parameters by their leading ``E`` axis, their expert-major
  activations by the layer's logical constraint, which :func:`jit_sharded` binds to the
  rules; XLA moves each token to its expert's device and back. The batch stays split
  over ``"data"`` only.
* **pmap** data parallel: :func:`pmap_train_step` with ``jax.lax.pmean`` of gradients.

Multi-host (TPU pods, multi-node GPU): every process runs the same program after
``jax.distributed.initialize()`` (effjax.train.distributed, which ``effjax train``
calls). ``jax.devices()`` then lists every chip of the slice, so ``make_mesh()``
builds a global mesh; each process loads only its share of the batch, the rows
:func:`process_rows` names (the rows its devices hold), and :func:`global_batch`
assembles the global array with ``jax.make_array_from_process_local_data``.
Checkpoints go to storage every host can reach (GCS); orbax coordinates the write.

Example:
  >>> mesh = make_mesh(data=-1, model=1)
  >>> mesh.axis_names
  ('data', 'model', 'expert')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | None]]

#: Logical axis -> mesh axis for data + tensor parallelism (Megatron-style: heads
#: and the MLP's hidden units are split, activations' feature axis is whole).
TENSOR_RULES: Rules = (
    ("batch", "data"),
    ("expert", "expert"),
    ("length", None),
    ("embed", None),
    ("heads", "model"),
    ("kv", None),
    ("mlp", "model"),
    ("vocab", None),  # small vocabularies (ListOps: 17) rarely divide the model axis
)
#: As TENSOR_RULES, and the batch's length axis split over "model" too.
SEQUENCE_RULES: Rules = (("length", "model"), *TENSOR_RULES[:1], *TENSOR_RULES[2:])
#: Everything replicated but the batch (and Switch experts, over "expert").
DATA_RULES: Rules = (("batch", "data"), ("expert", "expert"))
RULES = {"data": DATA_RULES, "tensor": TENSOR_RULES, "sequence": SEQUENCE_RULES}

#: Parameter path (``"/"``-joined) pattern -> logical axes, first match wins. Names
#: follow effjax.layers.MultiHeadAttention (query/key/value/out) and flax Dense/Embed.
PARAM_LOGICAL_AXES: Sequence[tuple[str, tuple[str, ...]]] = (
    (r"experts/intermediate/kernel$", ("expert", "embed", "mlp")),
    (r"experts/intermediate/bias$", ("expert", "mlp")),
    (r"experts/output/kernel$", ("expert", "mlp", "embed")),
    (r"experts/output/bias$", ("expert", "embed")),
    (r"(query|key|value)/kernel$", ("embed", "heads", "kv")),
    (r"(query|key|value)/bias$", ("heads", "kv")),
    (r"attention/out/kernel$|/out/kernel$", ("heads", "kv", "embed")),
    (r"(intermediate|mlp_in|wi|fc1)/kernel$", ("embed", "mlp")),
    (r"(intermediate|mlp_in|wi|fc1)/bias$", ("mlp",)),
    (r"(mlp_out|wo|fc2)/kernel$|output/kernel$", ("mlp", "embed")),
    (r"(token|word)_?embed\w*/embedding$", ("vocab", "embed")),
)


def make_mesh(
    data: int = -1,
    model: int = 1,
    devices: Sequence[jax.Device] | None = None,
    *,
    expert: int = 1,
) -> Mesh:
    """A ``("data", "model", "expert")`` mesh; ``data=-1`` takes the devices the other
    axes leave.

    Raises:
      ValueError: the shape does not match the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data == -1 and model > 0 and expert > 0:
        data = len(devices) // (model * expert)
    if data * model * expert != len(devices) or min(data, model, expert) <= 0:
        raise ValueError(
            f"mesh (data={data}, model={model}, expert={expert}) does not fit "
            f"{len(devices)} devices"
        )
    return Mesh(np.asarray(devices).reshape(data, model, expert), ("data", "model", "expert"))


def param_logical_axes(name: str, ndim: int, patterns=PARAM_LOGICAL_AXES) -> tuple | None:
    """Logical axis names of the parameter at path ``name`` (None: replicated)."""
    for pattern, axes in patterns:
        if re.search(pattern, name) and len(axes) == ndim:
            return axes
    return None


def param_shardings(params: Any, mesh: Mesh, rules: Rules, patterns=PARAM_LOGICAL_AXES) -> Any:
    """``NamedSharding`` of every parameter (a pytree of arrays or ShapeDtypeStructs).

    Raises:
      ValueError: a sharded dimension is not divisible by its mesh axis (named with
        the parameter path and shape).
    """

    def sharding(path, leaf):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        shape = np.shape(leaf)
        axes = param_logical_axes(name, len(shape), patterns)
        spec = PartitionSpec() if axes is None else nn.logical_to_mesh_axes(axes, rules)
        for size, mesh_axis in zip(shape, tuple(spec), strict=False):
            if mesh_axis is not None and size % mesh.shape[mesh_axis]:
                raise ValueError(
                    f"parameter {name} of shape {shape}: dimension {size} is not divisible "
                    f"by mesh axis {mesh_axis!r} of size {mesh.shape[mesh_axis]}"
                )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, params)


def state_shardings(state: Any, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules):
    """Shardings of a train state (``step``, ``params``, ``opt_state``, ``collections``;
    abstract is fine).

    Optimizer moments follow their parameter (``optax.tree_map_params``); scalars such
    as step counts are replicated.
    """
    params = param_shardings(state.params, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        state.opt_state,
        params,
        transform_non_params=lambda _: replicated,
    )
    collections = jax.tree.map(lambda _: replicated, state.collections)
    return state.replace(
        step=replicated, params=params, opt_state=opt_state, collections=collections
    )


#: Logical axes of batch entries by rank: [B] labels, [B, T] tokens and masks.
_BATCH_AXES = {1: ("batch",), 2: ("batch", "length"), 3: ("batch", "length", "embed")}


def batch_shardings(batch: dict[str, Any], mesh: Mesh, rules: Rules) -> dict[str, NamedSharding]:
    """Shardings of a batch: leading axis over ``"data"``, length per the rules."""
    return {
        name: NamedSharding(mesh, nn.logical_to_mesh_axes(_BATCH_AXES[np.ndim(x)], rules))
        for name, x in batch.items()
    }


def process_rows(
    mesh: Mesh, rules: Rules, batch_size: int, process_index: int | None = None
) -> np.ndarray:
    """Indices of the rows of a ``[batch_size, ...]`` global batch that the devices of
    process ``process_index`` (default: this one) hold, in order: the share that process
    loads. All rows on one process; ``batch_size / P`` consecutive rows each when the
    ``"data"`` axis spans ``P`` processes.

    Raises:
      ValueError: ``batch_size`` is not divisible by the size of the batch's mesh axis.
    """
    spec = nn.logical_to_mesh_axes(_BATCH_AXES[1], rules)
    ways = int(np.prod([mesh.shape[a] for a in jax.tree.leaves(tuple(spec))]))
    if batch_size % ways:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {ways} devices of mesh axis "
            f"{spec[0]!r}"
        )
    index = jax.process_index() if process_index is None else process_index
    placement = NamedSharding(mesh, spec).devices_indices_map((batch_size,))
    owned = [
        np.arange(batch_size)[where[0]]
        for d, where in placement.items()
        if d.process_index == index
    ]
    return np.unique(np.concatenate([np.zeros(0, int), *owned]))


def global_batch(local: dict[str, Any], shardings: dict[str, NamedSharding], batch_size: int):
    """Global ``[batch_size, ...]`` arrays from this process's rows (:func:`process_rows`)
    of every batch entry (``jax.make_array_from_process_local_data``)."""
    return {
        name: jax.make_array_from_process_local_data(
            shardings[name], x, (batch_size, *np.shape(x)[1:])
        )
        for name, x in local.items()
    }


def jit_sharded(
    step: Callable,
    state_sharding: Any,
    batch_sharding: Any,
    rules: Rules | None = None,
) -> Callable:
    """``step(state, batch) -> (state, metrics)`` compiled over a mesh with fixed shardings.

    With ``rules``, the step is traced under them and the mesh of ``state_sharding``
    (``nn.logical_axis_rules``, ``jax.set_mesh``), so layers' logical sharding
    constraints (Switch experts' ``"expert"`` axis) take effect; without, they are no-ops.
    """
    compiled = jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=0,
    )
    if rules is None:
        return compiled
    mesh = jax.tree.leaves(state_sharding)[0].mesh

    def run(state, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return compiled(state, batch)

    return run


def pmap_train_step(step: Callable, axis_name: str = "batch") -> Callable:
    """``jax.pmap`` of a step built with ``axis_name`` (its gradients are ``pmean``-ed).

    The state is replicated (:func:`replicate`), the batch split with
    :func:`split_for_pmap`; the returned metrics have a leading device axis.
    """
    return jax.pmap(step, axis_name=axis_name, donate_argnums=0)


def replicate(tree: Any, num_devices: int | None = None) -> Any:
    """``num_devices`` (default: all local devices) copies of ``tree`` on a new leading
    axis, the layout ``jax.pmap`` takes (it places copy ``i`` on device ``i``)."""
    count = num_devices or jax.local_device_count()
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (count, *np.shape(x))), tree)


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated tree."""
    return jax.tree.map(lambda x: x[0], tree)


def split_for_pmap(batch: dict[str, Any], num_devices: int) -> dict[str, Any]:
    """``[B, ...] -> [num_devices, B / num_devices, ...]``.

    Raises:
      ValueError: ``B`` is not divisible by ``num_devices``.
    """
    out = {}
    for name, x in batch.items():
        if x.shape[0] % num_devices:
            raise ValueError(
                f"batch[{name!r}] of shape {x.shape}: batch {x.shape[0]} is not divisible "
                f"by {num_devices} devices"
            )
        out[name] = x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])
    return out
