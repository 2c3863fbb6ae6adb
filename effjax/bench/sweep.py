"""Runs a benchmark configuration end to end: records, table, plots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from effjax.bench import measure, models, peers, plots, report, runner, training


def _total_steps(config: runner.BenchConfig) -> int:
    variants = {runner.BASELINE, *config.variants}
    per_kind = len(config.seq_lens) * len(config.modes) * len(variants)
    peer_steps = peers.peer_step_count(config) if config.peers else 0
    trainings = training.step_count(config) if config.layers else 0
    return per_kind * (2 if config.layers else 1) + peer_steps + trainings


def _all_records(config: runner.BenchConfig, env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from runner.attention_records(config, env)
    if config.layers:
        yield from models.layer_records(config, env)
        yield from training.training_records(config, env)
    if config.peers:
        yield from peers.peer_records(config, env)


def run_benchmark(
    config: runner.BenchConfig, out_dir: str | Path, *, command: str = "", progress: bool = True
) -> list[dict[str, Any]]:
    """Measures ``config`` and writes ``out_dir``/results.jsonl, results.md and PNG plots.

    Each record is appended to results.jsonl as soon as it is measured; the table and
    plots are written (atomically) at the end.

    Returns:
      The records, one per (variant, length, mode).
    """
    config.validate()
    out_dir = Path(out_dir)
    writer = runner.RecordWriter(out_dir / "results.jsonl")
    env = runner.environment()
    peak = measure.matmul_peak_flops(jnp.dtype(config.dtype))
    env_with_peak = {**env, "matmul_peak_flops": peak}

    records = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("effjax bench", total=_total_steps(config))
        for record in _all_records(config, env_with_peak):
            records.append(record)
            writer.write(record)
            bar.update(
                task,
                advance=1,
                description=f"{record['variant']:>12} T={record['seq_len']:<6} {record['mode']}",
            )

    report.write_markdown(
        records, out_dir / "results.md", env=env, peak_flops=peak, command=command
    )
    plots.write_plots(records, out_dir)
    return records
