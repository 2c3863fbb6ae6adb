"""The benchmark harness behind ``effjax bench``.

Example:
  >>> from effjax.bench import BenchConfig, run_benchmark
  >>> config = BenchConfig(variants=("dense",), seq_lens=(128,), min_time_s=0.0)
  >>> records = run_benchmark(config, "/tmp/effjax-bench")  # doctest: +SKIP
"""

from effjax.bench.runner import BenchConfig, read_records
from effjax.bench.sweep import run_benchmark

__all__ = ["BenchConfig", "read_records", "run_benchmark"]
