"""Timing and memory of one compiled function, and this device's matmul peak."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One function's cost. ``status`` is "ok", "oom" (too big for this device), "error",
    or "compiled" (compiled for its memory figure, not run)."""

    status: str
    time_s: float | None = None
    time_s_min: float | None = None
    peak_bytes: int | None = None
    error: str | None = None
    cost: dict[str, float] | None = None


def compiled_cost(compiled: jax.stages.Compiled) -> dict[str, float] | None:
    """XLA's static cost analysis of a program: the FLOPs it executes, its exp/log/...
    count and the bytes its operations read and write, and ``loops`` (1.0 if it has a
    while loop: XLA counts a loop body once, so the figures are then lower bounds)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    if not analysis:
        return None
    keys = {"flops": "flops", "transcendentals": "transcendentals", "bytes": "bytes accessed"}
    cost = {name: float(analysis.get(key, 0.0)) for name, key in keys.items()}
    return {**cost, "loops": float(" while(" in compiled.as_text())}


def compiled_bytes(compiled: jax.stages.Compiled) -> int | None:
    """XLA's memory analysis: temporaries + arguments + outputs, exact and repeatable."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def _is_oom(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def _device_bytes(device: jax.Device) -> tuple[int, int] | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["bytes_in_use"]), int(stats["peak_bytes_in_use"])


def _time_calls(
    call: Callable[[], Any],
    min_repeats: int,
    max_repeats: int,
    min_time_s: float,
    sync: Callable[[Any], Any] = jax.block_until_ready,
) -> list[float]:
    sync(call())  # warm-up: first-run allocations and caches
    times: list[float] = []
    while len(times) < max_repeats and (len(times) < min_repeats or sum(times) < min_time_s):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return times


def measure(
    fn: Callable,
    args: Sequence[jax.Array],
    *,
    min_repeats: int = 3,
    max_repeats: int = 20,
    min_time_s: float = 1.0,
    memory_limit_bytes: int | None = None,
    run: bool = True,
) -> Measurement:
    """Compiles ``fn(*args)`` then times it (median and minimum, ``block_until_ready``).

    Memory is the compiler's figure (temporaries + arguments + outputs). On GPU and
    TPU, where the runtime reports a device peak, the growth of that peak during the
    run replaces it when larger. A program whose compiled footprint exceeds
    ``memory_limit_bytes`` is not run and is reported as "oom" with its footprint; with
    ``run=False`` a program is only compiled ("compiled", with its footprint).
    """
    try:
        compiled = jax.jit(fn).lower(*args).compile()
    except Exception as err:
        return Measurement("oom" if _is_oom(err) else "error", error=str(err)[:500])
    peak = compiled_bytes(compiled)
    cost = compiled_cost(compiled)
    if memory_limit_bytes is not None and peak is not None and peak > memory_limit_bytes:
        return Measurement("oom", peak_bytes=peak, error="compiled footprint over memory limit")
    if not run:
        return Measurement("compiled", peak_bytes=peak, cost=cost)

    device = jax.devices()[0]
    before = _device_bytes(device)
    try:
        times = _time_calls(lambda: compiled(*args), min_repeats, max_repeats, min_time_s)
    except Exception as err:
        return Measurement(
            "oom" if _is_oom(err) else "error", peak_bytes=peak, error=str(err)[:500]
        )
    after = _device_bytes(device)
    if before is not None and after is not None and after[1] > before[1]:
        peak = max(peak or 0, after[1] - before[0])
    return Measurement("ok", statistics.median(times), min(times), peak, cost=cost)


def measure_python(
    call: Callable[[], Any],
    sync: Callable[[], None],
    *,
    min_repeats: int = 3,
    max_repeats: int = 20,
    min_time_s: float = 1.0,
) -> Measurement:
    """Times a non-JAX callable (a PyTorch peer); ``sync`` waits for its device."""
    try:
        times = _time_calls(call, min_repeats, max_repeats, min_time_s, lambda _: sync())
    except Exception as err:
        return Measurement("oom" if _is_oom(err) else "error", error=str(err)[:500])
    return Measurement("ok", statistics.median(times), min(times))


def spread(times: Sequence[float]) -> dict[str, Any]:
    """Every sample (``times_s``) and their quartiles and maximum (``time_s_q1``,
    ``time_s_q3``, ``time_s_max``; None without samples), for records that keep the spread.

    Example:
      >>> spread([4.0, 1.0, 3.0, 2.0, 5.0])["time_s_q3"]
      4.0
    """
    if not times:
        return {"times_s": [], "time_s_q1": None, "time_s_q3": None, "time_s_max": None}
    q1, q3 = np.percentile(times, [25, 75])
    return {
        "times_s": list(times),
        "time_s_q1": float(q1),
        "time_s_q3": float(q3),
        "time_s_max": max(times),
    }


def sample_measurement(
    status: str, times: Sequence[float], peak_bytes: int | None = None, error: str | None = None
) -> Measurement:
    """A :class:`Measurement` of samples timed elsewhere (a worker process): their median
    and minimum when ``status`` is "ok"."""
    if status != "ok":
        return Measurement(status, peak_bytes=peak_bytes, error=error)
    return Measurement("ok", statistics.median(times), min(times), peak_bytes)


def matmul_peak_flops(dtype: jnp.dtype, *, size: int | None = None) -> float:
    """Achieved FLOP/s of a large square matmul: this device's practical peak, measured now."""
    if size is None:
        size = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    times = _time_calls(lambda: matmul(a, b), 3, 10, 0.5)
    return 2.0 * size**3 / min(times)
