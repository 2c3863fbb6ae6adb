"""Peer comparisons (``effjax bench --peers``): each framework in its own process,
repetitions interleaved, every sample kept.

PyTorch and XLA each keep a thread pool as large as the machine. In one process they
contend for the cores, so a model's time depended on what the other framework had just
run (BigBird block-sparse measured 0.96x and then 2.15x its PyTorch peer in two identical
runs). Here the parent starts two worker processes, one per framework
(``python -m effjax.bench.peers torch|effjax``), that talk JSON lines over their
stdin/stdout: ``build`` makes a cell's model (compiled and run once, for warm-up),
``time`` runs it once and returns the seconds it took (timed inside the worker, so the
pipe is not counted). The parent alternates the two (PyTorch, effjax, PyTorch, effjax,
...), so slow phases of a shared machine hit both alike, and while one worker runs the
other is blocked on a read. Each record keeps every sample (``times_s``) and the CPU
seconds the idle worker spent meanwhile (``idle_peer_cpu_s``, from /proc: near zero
shows that its thread pool stayed idle). effjax.bench.report checks each claim against
the spread of the paired ratios, not one sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from effjax.bench import models, runner, suite
from effjax.bench.measure import sample_measurement, spread

FRAMEWORKS = ("torch", "effjax")
MIN_PAIRS = 7
"""Interleaved repetitions per cell at least (when the run's ``max_repeats`` allows),
enough for quartiles of the paired ratios."""


# ------------------------------------------------------------------ the worker side


def _build(framework: str, message: dict) -> tuple[Callable[[], Any], dict]:
    """``(call, facts)`` of one cell: a call that runs the model once and waits for it."""
    pair = models.peer_pair(message["family"], message["setting"])
    hf_config = pair.hf_config(message["seq_len"])
    if framework == "torch":
        call, sync = models.torch_peer_call(hf_config, message["seq_len"], message["batch"])
        return (lambda: (call(), sync())), {}
    import jax

    from effjax.bench import measure

    program, args = models.effjax_peer_program(
        hf_config, *pair.effjax_attention, message["seq_len"], message["batch"]
    )
    compiled = jax.jit(program).lower(*args).compile()
    peak = measure.compiled_bytes(compiled)
    limit = message.get("memory_limit_bytes")
    if limit is not None and peak is not None and peak > limit:
        raise MemoryError(f"compiled footprint {peak} bytes over memory limit {limit}")
    return (lambda: jax.block_until_ready(compiled(*args))), {"peak_bytes": peak}


def _versions(framework: str) -> dict[str, str]:
    if framework == "torch":
        import torch
        import transformers

        return {
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
        }
    import jax

    return {"jax_version": jax.__version__}


def serve(framework: str) -> None:
    """The worker loop: reads one JSON request per line from stdin, answers on stdout."""
    # Anything a library prints must not corrupt the protocol: answers go to the original
    # stdout, and file descriptor 1 (print, C libraries) now points at stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    call: Callable[[], Any] | None = None
    for line in sys.stdin:
        message = json.loads(line)
        try:
            if message["op"] == "build":
                call = None  # frees the previous cell's model first
                call, facts = _build(framework, message)
                call()  # warm-up: first-run allocations and caches
                answer = {"ok": True, **facts, **_versions(framework)}
            elif message["op"] == "time":
                start = time.perf_counter()
                call()
                answer = {"ok": True, "time_s": time.perf_counter() - start}
            else:
                return
        except Exception as error:  # reported to the parent, which records it
            out_of_memory = isinstance(error, MemoryError) or "out of memory" in str(error).lower()
            answer = {"ok": False, "status": "oom" if out_of_memory else "error"}
            answer["error"] = f"{type(error).__name__}: {error}"[:500]
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


# ------------------------------------------------------------------ the parent side


class Worker:
    """One framework's worker process (started lazily, restarted after it dies)."""

    def __init__(self, framework: str):
        self.framework = framework
        self.process: subprocess.Popen | None = None
        # The worker's stderr, read back when it dies; closed by close().
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "effjax.bench.peers", self.framework],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.log,
                text=True,
            )
        return self.process

    def request(self, **message) -> dict:
        """Sends one request and waits for its answer (a dead worker answers an error
        carrying the end of its stderr)."""
        process = self._start()
        try:
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if line:
            return json.loads(line)
        process.wait()
        self.log.seek(0)
        tail = self.log.read()[-400:]
        return {
            "ok": False,
            "status": "error",
            "error": f"worker exited {process.returncode}: {tail}",
        }

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the worker so far (Linux /proc), else None."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        self.log.close()


def interleaved_times(
    workers: dict[str, Worker], min_pairs: int, max_pairs: int, min_time_s: float
) -> tuple[dict[str, list[float]], dict[str, float | None]]:
    """Times the built cell alternately in each worker (A B A B ...): at least
    ``min_pairs`` rounds, more until ``min_time_s`` has passed, at most ``max_pairs``.

    Returns ``times`` (seconds per framework, in order) and, per framework, the CPU
    seconds the other worker used while it was timed (None where /proc is missing).
    """
    times: dict[str, list[float]] = {name: [] for name in workers}
    idle: dict[str, float | None] = {name: 0.0 for name in workers}
    started = time.perf_counter()
    while len(times[FRAMEWORKS[0]]) < max_pairs and (
        len(times[FRAMEWORKS[0]]) < min_pairs or time.perf_counter() - started < min_time_s
    ):
        for name, worker in workers.items():
            (other,) = [w for n, w in workers.items() if n != name]
            before = other.cpu_seconds()
            answer = worker.request(op="time")
            after = other.cpu_seconds()
            if not answer["ok"]:
                raise RuntimeError(answer["error"])
            times[name].append(answer["time_s"])
            if idle[name] is not None and before is not None and after is not None:
                idle[name] += after - before
            else:
                idle[name] = None
    return times, idle


def peer_records(config: runner.BenchConfig, env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """For each peer pair and length, the Hugging Face PyTorch model's record then effjax's,
    measured in separate worker processes with interleaved repetitions."""
    workers = {name: Worker(name) for name in FRAMEWORKS}
    max_pairs = config.max_repeats
    min_pairs = min(max(config.min_repeats, MIN_PAIRS), max_pairs)
    try:
        for seq_len in config.seq_lens:
            for pair in models.pairs_at(seq_len):
                yield from _cell_records(config, env, workers, pair, seq_len, min_pairs, max_pairs)
    finally:
        for worker in workers.values():
            worker.close()


def _cell_records(config, env, workers, pair, seq_len, min_pairs, max_pairs):
    hf_config = pair.hf_config(seq_len)
    shape = suite.Shape(
        config.batch,
        seq_len,
        hf_config.num_attention_heads,
        hf_config.hidden_size // hf_config.num_attention_heads,
    )
    cell = {"family": pair.family, "setting": pair.setting, "seq_len": seq_len}
    built = {
        name: worker.request(
            op="build", batch=config.batch, memory_limit_bytes=config.memory_limit_bytes, **cell
        )
        for name, worker in workers.items()
    }
    times: dict[str, list[float]] = {name: [] for name in workers}
    idle: dict[str, float | None] = {name: None for name in workers}
    failure = None
    if all(answer["ok"] for answer in built.values()):
        try:
            times, idle = interleaved_times(workers, min_pairs, max_pairs, config.min_time_s)
        except RuntimeError as error:
            failure = str(error)[:500]
    for name, answer in built.items():
        status, error = "ok", None
        if not answer["ok"]:
            status, error = answer["status"], answer["error"]
        elif failure is not None or not times[name]:
            status, error = "error", failure or "not timed: the other framework failed"
        versions = {k: v for k, v in answer.items() if k.endswith("_version")}
        record = runner.make_record(
            kind="model",
            mode="fwd",
            shape=shape,
            dtype="float32",
            result=sample_measurement(status, times[name], answer.get("peak_bytes"), error),
            flops=None,
            env={**env, **versions},
            **_identity(name, pair, shape),
        )
        yield {
            **record,
            **spread(times[name]),
            "idle_peer_cpu_s": idle[name],
            "process": "separate",
        }


def _identity(framework: str, pair: models.PeerPair, shape: suite.Shape) -> dict[str, Any]:
    """A record's variant, implementation and options: ``hf_<family>_<setting>`` (torch)
    or ``effjax_<family>_<setting>`` with the effjax attention it runs."""
    options = {"family": pair.family, "setting": pair.setting}
    name = f"{pair.family}_{pair.setting}"
    if framework == "torch":
        return {"variant": f"hf_{name}", "implementation": "torch", "options": options}
    attention, attention_options = pair.effjax_attention
    return {
        "variant": f"effjax_{name}",
        "implementation": suite.implementation_of(attention, shape),
        "options": {**options, "attention": attention, **attention_options},
    }


def peer_step_count(config: runner.BenchConfig) -> int:
    """Records the peer comparison adds to a run (for the progress bar)."""
    return 2 * sum(len(models.pairs_at(t)) for t in config.seq_lens)


if __name__ == "__main__":
    serve(sys.argv[1])
