"""The benchmark sweep behind ``effjax bench``: variants x lengths x modes -> JSON records."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from effjax.attention import registry
from effjax.bench import measure as measure_lib
from effjax.bench import suite

BASELINE = "jax"
"""``jax.nn.dot_product_attention``: every speed-up is a ratio against it, taken in the same run."""

MODES = ("fwd", "fwd_bwd")
DTYPES = ("float32", "bfloat16", "float16")
CPU_SEQ_LENS = (256, 512, 1024, 2048, 4096, 8192, 16384)
ACCELERATOR_SEQ_LENS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
QUICK_SEQ_LENS = (256, 512, 1024)


def default_seq_lens(backend: str, *, quick: bool = False) -> tuple[int, ...]:
    """The lengths ``effjax bench`` sweeps unless given: :data:`QUICK_SEQ_LENS` with
    ``--quick``, :data:`CPU_SEQ_LENS` (to 16K) on CPU, else :data:`ACCELERATOR_SEQ_LENS`
    (to 64K) on a GPU or TPU.

    Example:
      >>> default_seq_lens("tpu")[-1], default_seq_lens("cpu")[-1]
      (65536, 16384)
    """
    if quick:
        return QUICK_SEQ_LENS
    return CPU_SEQ_LENS if backend == "cpu" else ACCELERATOR_SEQ_LENS


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. Lengths whose compiled footprint exceeds ``memory_limit_bytes``
    are recorded as OOM with their footprint and not run; lengths above
    ``max_run_seq_len`` are only compiled, for their memory figure."""

    variants: tuple[str, ...]
    seq_lens: tuple[int, ...]
    modes: tuple[str, ...] = MODES
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    dtype: str = "float32"
    min_repeats: int = 3
    max_repeats: int = 20
    min_time_s: float = 1.0
    memory_limit_bytes: int | None = None
    max_run_seq_len: int | None = None
    layers: bool = False
    training_layers: int = 12
    peers: bool = False

    def validate(self) -> None:
        """Raises ValueError naming the bad option, before anything runs."""
        known = (BASELINE, *registry.available())
        unknown = [v for v in self.variants if v not in known]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; available: {', '.join(known)}")
        if not self.variants:
            raise ValueError("variants must name at least one variant")
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes or not self.modes:
            raise ValueError(f"mode must be one of {MODES}, got {list(self.modes)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.training_layers < 0:
            raise ValueError(f"training_layers must be >= 0, got {self.training_layers}")
        for name in ("batch", "heads", "head_dim", "min_repeats", "max_repeats"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.seq_lens or min(self.seq_lens) <= 0:
            raise ValueError(f"seq_lens must be positive lengths, got {list(self.seq_lens)}")


def environment() -> dict[str, Any]:
    """Backend, device kind and versions, recorded in every record."""
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
    }


def _attention_program(
    name: str, options: dict[str, Any], mode: str
) -> tuple[Callable, dict[str, Any]]:
    """``(program(q, k, v, arrays), arrays)``: array options travel as arguments (so the
    compiler counts them and does not fold them as constants), the rest are static."""
    fn = jax.nn.dot_product_attention if name == BASELINE else registry.get(name)
    arrays = {k: v for k, v in options.items() if isinstance(v, jax.Array)}
    static = {k: v for k, v in options.items() if k not in arrays}

    def forward(q, k, v, arrays):
        return fn(q, k, v, **static, **arrays)

    if mode == "fwd":
        return forward, arrays

    def forward_backward(q, k, v, arrays):
        loss = lambda q, k, v: jnp.sum(forward(q, k, v, arrays).astype(jnp.float32))  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    return forward_backward, arrays


def attention_records(config: BenchConfig, env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Measures every (length, mode, variant); yields one record each, baseline first."""
    dtype = jnp.dtype(config.dtype)
    variants = [BASELINE] + [v for v in config.variants if v != BASELINE]
    for seq_len in config.seq_lens:
        shape = suite.Shape(config.batch, seq_len, config.heads, config.head_dim)
        keys = jax.random.split(jax.random.key(seq_len), 4)
        qkv = [
            jax.random.normal(k, (shape.batch, seq_len, shape.heads, shape.head_dim), dtype)
            for k in keys[:3]
        ]
        for mode in config.modes:
            for name in variants:
                spec = suite.spec_for(name)
                options = spec.options(keys[3], shape)
                program, arrays = _attention_program(name, options, mode)
                result = measure_program(config, program, (*qkv, arrays), seq_len)
                flops = spec.flops(shape, options)
                if flops is not None and mode == "fwd_bwd":
                    flops *= 3.0  # backward = two matmuls per forward matmul
                yield make_record(
                    kind="attention",
                    variant=name,
                    implementation=suite.implementation_of(name, shape, config.dtype),
                    options=spec.summary(shape),
                    mode=mode,
                    shape=shape,
                    dtype=config.dtype,
                    result=result,
                    flops=flops,
                    env=env,
                )


def measure_program(
    config: BenchConfig, program: Callable, args: tuple, seq_len: int
) -> measure_lib.Measurement:
    """:func:`~effjax.bench.measure.measure` with the run's repetitions, memory limit and
    longest length to run."""
    return measure_lib.measure(
        program,
        args,
        min_repeats=config.min_repeats,
        max_repeats=config.max_repeats,
        min_time_s=config.min_time_s,
        memory_limit_bytes=config.memory_limit_bytes,
        run=config.max_run_seq_len is None or seq_len <= config.max_run_seq_len,
    )


def make_record(
    *,
    kind: str,
    variant: str,
    implementation: str,
    options: dict[str, Any],
    mode: str,
    shape: suite.Shape,
    dtype: str,
    result: measure_lib.Measurement,
    flops: float | None,
    env: dict[str, Any],
) -> dict[str, Any]:
    """One JSON record: variant, implementation, options, mode, sizes, dtype, times,
    peak_bytes, flops, backend, device_kind and jax_version, plus kind/status/error."""
    return {
        "kind": kind,
        "variant": variant,
        "implementation": implementation,
        "options": options,
        "mode": mode,
        "batch": shape.batch,
        "seq_len": shape.seq_len,
        "heads": shape.heads,
        "head_dim": shape.head_dim,
        "dtype": dtype,
        "time_s": result.time_s,
        "time_s_min": result.time_s_min,
        "peak_bytes": result.peak_bytes,
        "flops": flops,
        "xla_cost": result.cost,
        "status": result.status,
        "error": result.error,
        **env,
    }


class RecordWriter:
    """Appends each record to ``results.jsonl`` as a whole line as soon as it is measured,
    so an interrupted sweep keeps everything it measured."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("")
        os.replace(tmp, path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a ``results.jsonl``; a torn last line (from a kill mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
