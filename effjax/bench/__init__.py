"""The benchmark harness behind ``effjax bench``.

Example:
  >>> import tempfile
  >>> from effjax.bench import BenchConfig, run_benchmark
  >>> config = BenchConfig(variants=("local",), seq_lens=(64,), modes=("fwd",), heads=2,
  ...                      head_dim=8, min_repeats=1, max_repeats=1, min_time_s=0.0)
  >>> out = tempfile.TemporaryDirectory()  # removed when garbage-collected
  >>> records = run_benchmark(config, out.name, progress=False)
  >>> [(r["variant"], r["seq_len"], r["status"]) for r in records]
  [('jax', 64, 'ok'), ('local', 64, 'ok')]
"""

from effjax.bench.runner import BenchConfig, read_records
from effjax.bench.sweep import run_benchmark

__all__ = ["BenchConfig", "read_records", "run_benchmark"]
