"""Multi-host training: process arguments, each process's share of a batch, and (slow) a
two-process run over CPU collectives against the one-process run, killed and resumed."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from effjax.cli import main
from effjax.data.batching import ClassificationData
from effjax.data.language_model import LanguageModelData
from effjax.train import distributed, sharding
from effjax.train.checkpoint import checkpoint_manager

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--coordinator-address", "host"], "must be HOST:PORT with a port in 1..65535"),
        (["--coordinator-address", "host:70000"], "must be HOST:PORT with a port in 1..65535"),
        (["--num-processes", "0"], "--num-processes: must be a positive integer, got '0'"),
        (["--process-id", "-1"], "--process-id: must be a non-negative integer, got '-1'"),
    ],
)
def test_bad_process_arguments_are_one_line_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "smoke", "--workdir", str(tmp_path / "run"), *argv])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-processes", "2"], "--coordinator-address, --process-id missing"),
        (["--num-processes", "2", "--process-id", "2", "--coordinator-address", "h:1"], "0..1"),
    ],
)
def test_incomplete_process_arguments_stop_before_jax_starts(extra, message, tmp_path, capsys):
    assert main(["train", "smoke", "--workdir", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_initialize_joins_what_it_is_given_or_what_jax_detects(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OMPI_MCA_orte_hnp_uri", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert distributed.detected_cluster() is None
    assert distributed.initialize() is False and calls == []  # a plain machine: one process
    assert distributed.initialize("h:1234", 4, 3) is True and calls == [("h:1234", 4, 3)]
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "n1",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert distributed.detected_cluster() == "slurm"
    assert distributed.initialize() is True and calls[-1] == ()  # JAX reads the cluster


def _shares(data, step, batch_size, processes):
    rows = np.array_split(np.arange(batch_size), processes)
    parts = [data.train_batch(step, rows=r) for r in rows]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_process_shares_of_a_batch_make_the_global_batch():
    # Lengths 1..40 padded to each batch's longest: a share alone is often shorter.
    sequences = [list(range(1, n + 1)) for n in range(1, 41)]
    splits = {"train": (sequences, [n % 10 for n in range(40)])}
    for boundaries in (None, (8, 16, 64)):
        data = ClassificationData(splits, batch_size=8, seed=0, boundaries=boundaries)
        for step in range(5):
            whole = data.train_batch(step)
            jax.tree.map(np.testing.assert_array_equal, _shares(data, step, 8, 4), whole)
    lm = LanguageModelData({"train": np.arange(1, 200)}, batch_size=4, segment_length=8)
    jax.tree.map(np.testing.assert_array_equal, _shares(lm, 3, 4, 2), lm.train_batch(3))


def test_one_process_holds_every_row_of_the_batch():
    mesh = sharding.make_mesh(data=4, model=2)
    rows = sharding.process_rows(mesh, sharding.TENSOR_RULES, 8)
    np.testing.assert_array_equal(rows, np.arange(8))
    assert sharding.process_rows(mesh, sharding.DATA_RULES, 8, process_index=1).size == 0
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 4 devices"):
        sharding.process_rows(mesh, sharding.DATA_RULES, 6)
    local = {"inputs": np.arange(16).reshape(8, 2)}
    shardings = sharding.batch_shardings(local, mesh, sharding.DATA_RULES)
    placed = sharding.global_batch(local, shardings, 8)["inputs"]
    assert placed.sharding == shardings["inputs"]
    np.testing.assert_array_equal(placed, local["inputs"])


# ------------------------------------------------------------ two processes (slow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _config(tmp_path):
    # The smoke experiment, shortened: 30 steps, a checkpoint every 10.
    path = tmp_path / "config.py"
    path.write_text(
        textwrap.dedent(f"""
        import dataclasses, runpy
        smoke = runpy.run_path({str(ROOT / "effjax/configs/smoke.py")!r})["config"]
        config = smoke.replace(
            data=dataclasses.replace(smoke.data, cache_dir={str(tmp_path / "cache")!r}),
            run=dataclasses.replace(smoke.run, num_steps=30, log_every=5, eval_every=10,
                                    checkpoint_every=10, eval_examples=64),
        )
    """)
    )
    return path


def _launch(config, workdir, devices, process_args=()):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    command = [sys.executable, "-m", "effjax.cli", "train", str(config), "--workdir", str(workdir)]
    return subprocess.Popen(
        [*command, "--no-progress", *process_args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _pair(config, workdir):
    """Two processes of one device each, joined through a local coordinator."""
    address = f"localhost:{_free_port()}"
    return [
        _launch(
            config,
            workdir,
            1,
            ["--coordinator-address", address, "--num-processes", "2", "--process-id", str(i)],
        )
        for i in range(2)
    ]


def _finish(process) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _records(workdir):
    path = Path(workdir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def _params(workdir):
    """The newest checkpoint's step and parameters, read onto one device of this process
    (the saved shardings name devices of the processes that wrote them)."""
    manager = checkpoint_manager(Path(workdir, "checkpoints"), read_only=True)
    step = manager.latest_step()
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=here),
        manager.item_metadata(step).tree,
    )
    return step, manager.restore(step, args=ocp.args.StandardRestore(target))["params"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The shortened smoke run in one process with two devices: the same data-parallel
    program as two processes of one device each, so the runs agree to the bit."""
    tmp_path = tmp_path_factory.mktemp("distributed")
    config = _config(tmp_path)
    return config, tmp_path / "one", _finish(_launch(config, tmp_path / "one", 2))


def _wait_for_step(processes, workdir, step):
    deadline = time.monotonic() + 600
    while not any(r["step"] >= step for r in _records(workdir)):
        assert all(p.poll() is None for p in processes), processes[0].communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _resume_and_compare(config, workdir, reference, summary, split_log_step=None):
    """Reruns both processes to the end: same summary, records and parameters as the
    one-process run. ``split_log_step``: the train record whose log interval the stop cut
    (the loop logs the mean of the steps since the resume there), left out."""
    summaries = [_finish(p) for p in _pair(config, workdir)]
    assert summaries == [summary, summary]
    kept = lambda r: not (r["step"] == split_log_step and "train/loss" in r)  # noqa: E731
    assert list(filter(kept, _records(workdir))) == list(filter(kept, _records(reference)))
    (step, params), (_, expected) = _params(workdir), _params(reference)
    assert step == 30
    jax.tree.map(np.testing.assert_array_equal, params, expected)


@pytest.mark.slow
def test_two_processes_killed_and_resumed_equal_one_process(one_process, tmp_path):
    config, reference, summary = one_process
    workdir = tmp_path / "two"
    processes = _pair(config, workdir)
    _wait_for_step(processes, workdir, 15)  # past the checkpoint at 10
    for process in processes:
        process.send_signal(signal.SIGKILL)
    for process in processes:
        process.wait(timeout=60)
    stopped_at, _ = _params(workdir)
    assert 10 <= stopped_at < 30
    _resume_and_compare(config, workdir, reference, summary)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_one_step(one_process, tmp_path):
    config, reference, summary = one_process
    workdir = tmp_path / "two"
    processes = _pair(config, workdir)
    _wait_for_step(processes, workdir, 5)
    processes[1].send_signal(signal.SIGTERM)  # process 0 is not signalled
    for process in processes:
        process.communicate(timeout=300)
    assert [p.returncode for p in processes] == [128 + signal.SIGTERM] * 2
    stopped_at, _ = _params(workdir)
    assert 5 <= stopped_at < 30  # both saved that step on the way out
    split = -(-stopped_at // 5) * 5 if stopped_at % 5 else None  # log_every = 5
    _resume_and_compare(config, workdir, reference, summary, split)
