"""Joining the processes of a multi-host run (a TPU pod slice, several GPU nodes).

Every host runs the same ``effjax train`` command. Before JAX touches a device, each
process calls :func:`initialize`: with ``coordinator_address``, ``num_processes`` and
``process_id`` given (``--coordinator-address HOST:PORT --num-processes P --process-id I``)
it joins the run they describe; with none of them it calls
``jax.distributed.initialize()`` when JAX recognises the cluster it runs in (Cloud TPU,
Slurm, Open MPI, Kubernetes: JAX reads the three values from the environment), and
otherwise does nothing (one process). Afterwards ``jax.devices()`` lists every device of
every process and effjax.train.loop trains on the global mesh. Cross-process
collectives on CPU use gloo (JAX's default), so two local processes form a small
"pod" on one machine.

Example (two processes on one machine; run the second with ``process_id=1``):
  >>> initialize("localhost:12355", num_processes=2, process_id=0)  # doctest: +SKIP
  True
"""

from __future__ import annotations

import jax


def parse_coordinator_address(text: str) -> str:
    """``HOST:PORT`` checked: a non-empty host and a port in 1..65535.

    Raises:
      ValueError: the address has no port, an empty host or a bad port.

    Example:
      >>> parse_coordinator_address("10.0.0.1:1234")
      '10.0.0.1:1234'
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"--coordinator-address must be HOST:PORT with a port in 1..65535, got {text!r}"
        )
    return text


def check_process_args(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Raises a one-line ValueError unless the three are all given (and
    ``0 <= process_id < num_processes``) or all absent."""
    given = {
        "--coordinator-address": coordinator_address,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    missing = [name for name, value in given.items() if value is None]
    if missing and len(missing) < len(given):
        raise ValueError(
            f"{', '.join(missing)} missing: a multi-process run needs all of {', '.join(given)}"
        )
    if missing:
        return
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id must be in 0..{num_processes - 1} (--num-processes {num_processes}), "
            f"got {process_id}"
        )


def detected_cluster() -> str | None:
    """The name of the cluster environment JAX would initialise from (``"slurm"``,
    ``"ompi"``, a Cloud TPU or Kubernetes one), or None."""
    # JAX has no public query for this; its detectors are what initialize() itself uses.
    from jax._src.clusters import ClusterEnv

    for env in ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.name or env.__name__.lower()
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins the multi-process run (see the module docstring); returns whether
    ``jax.distributed`` was initialised. Call it before any other JAX call.

    Raises:
      ValueError: the arguments are incomplete or inconsistent (one line).
    """
    check_process_args(coordinator_address, num_processes, process_id)
    if jax.distributed.is_initialized():  # the caller's own set-up stands
        return True
    if coordinator_address is not None:
        jax.distributed.initialize(
            parse_coordinator_address(coordinator_address), num_processes, process_id
        )
        return True
    if detected_cluster() is None:
        return False
    jax.distributed.initialize()
    return True
