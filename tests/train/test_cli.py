"""`effjax train` from the command line: smoke config, kill-and-resume, refusals."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from effjax.cli import main
from effjax.train.checkpoint import checkpoint_manager

ROOT = Path(__file__).resolve().parents[2]


def _env(home):
    # HOME redirects the smoke config's ~/.cache data cache into the test's directory.
    # One CPU device as for a user; XLA's optimisation passes cost more than they save on
    # a 150-step run (compilation is most of its CPU time).
    return {
        **os.environ,
        "HOME": str(home),
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        "PYTHONPATH": str(ROOT),
    }


def _command(config, workdir):
    return [
        sys.executable,
        "-m",
        "effjax.cli",
        "train",
        str(config),
        "--workdir",
        str(workdir),
        "--no-progress",
    ]


def _cache(home):
    return str(home / ".cache/effjax/data")


def _records(workdir):
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _final_params(workdir):
    manager = checkpoint_manager(Path(workdir, "checkpoints"), read_only=True)
    state = manager.restore(manager.latest_step())  # as saved, without a target
    return manager.latest_step(), state["params"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The packaged smoke config, trained once by name, uninterrupted, through the command line."""
    home = tmp_path_factory.mktemp("home")
    workdir = home / "run"
    done = subprocess.run(
        _command("smoke", workdir),
        cwd=ROOT,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return home, workdir, json.loads(done.stdout.strip().splitlines()[-1])


def test_smoke_config_trains_and_loss_falls(smoke_run):
    _, workdir, summary = smoke_run
    losses = [r["train/loss"] for r in _records(workdir) if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.1  # from ~ln(10) = 2.30 down
    assert summary["step"] == 150 and summary["stopped"] == 0
    assert summary["validation/accuracy"] > 0.15  # above chance (0.1)
    assert json.loads((workdir / "config.json").read_text())["name"] == "smoke"


def _resume_config(home, smoke_home):
    # The smoke experiment with a checkpoint every 10 steps, reading the same data cache.
    path = home / "resume_config.py"
    path.write_text(
        textwrap.dedent(f"""
        import dataclasses, runpy
        smoke = runpy.run_path({str(ROOT / "configs/smoke.py")!r})["config"]
        config = smoke.replace(
            data=dataclasses.replace(smoke.data, cache_dir={_cache(smoke_home)!r}),
            run=dataclasses.replace(smoke.run, checkpoint_every=10),
        )
    """)
    )
    return path


def _run_until(command, env, workdir, step, sig):
    """Starts a run and sends ``sig`` once metrics.jsonl reaches ``step``."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not any(r["step"] >= step for r in _records(workdir)):
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(sig)
    process.communicate(timeout=120)
    return process.returncode


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_uninterrupted_result(smoke_run, tmp_path, sig):
    smoke_home, smoke_workdir, summary = smoke_run
    config = _resume_config(tmp_path, smoke_home)
    # The resume config only changes checkpoint_every, a run-control field.
    workdir = tmp_path / "run"
    env = _env(tmp_path)
    code = _run_until(_command(config, workdir), env, workdir, 75, sig)
    stopped_at, _ = _final_params(workdir)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL and stopped_at < 150  # crashed mid-run
    else:
        assert code == 128 + signal.SIGTERM and 75 <= stopped_at < 150  # saved on the way out
    again = subprocess.run(
        _command(config, workdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed["test/loss"] == summary["test/loss"]
    (step, params), (_, reference) = _final_params(workdir), _final_params(smoke_workdir)
    assert step == 150
    import jax

    jax.tree.map(np.testing.assert_array_equal, params, reference)


def _cli(*argv):
    return main(["train", *map(str, argv), "--no-progress"])


def _snapshot(directory):
    return {p: p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def test_unknown_field_stops_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text(
        (ROOT / "effjax/configs/smoke.py").read_text().replace("learning_rate=", "lerning_rate=")
    )
    assert _cli(bad, "--workdir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "unknown field 'lerning_rate' in OptimizerConfig" in err
    assert "learning_rate" in err.split("known fields:")[1]
    assert not (tmp_path / "run").exists()


def test_missing_data_stops_before_training(tmp_path, capsys):
    config = tmp_path / "text.py"
    config.write_text(
        textwrap.dedent(f"""
        import dataclasses, runpy
        from effjax.train.config import DataConfig
        smoke = runpy.run_path({str(ROOT / "configs/smoke.py")!r})["config"]
        config = smoke.replace(data=DataConfig(kind="text", path="/no/such/dir", max_length=48),
                               model=smoke.model.replace(vocab_size=257))
    """)
    )
    assert _cli(config, "--workdir", tmp_path / "run") == 2
    assert "data.path='/no/such/dir'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_incompatible_checkpoint_stops_and_overwrites_nothing(smoke_run, tmp_path, capsys):
    smoke_home, smoke_workdir, _ = smoke_run
    before = _snapshot(smoke_workdir)
    config = tmp_path / "wider.py"
    config.write_text(
        textwrap.dedent(f"""
        import dataclasses, runpy
        smoke = runpy.run_path({str(ROOT / "configs/smoke.py")!r})["config"]
        config = smoke.replace(
            model=smoke.model.replace(hidden_size=64),
            data=dataclasses.replace(smoke.data, cache_dir={_cache(smoke_home)!r}),
        )
    """)
    )
    assert _cli(config, "--workdir", smoke_workdir) == 2
    err = capsys.readouterr().err
    assert "model.hidden_size: checkpoint has 32, config has 64" in err
    assert _snapshot(smoke_workdir) == before


def test_bad_steps_and_workdirs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as stopped:
        _cli("smoke", "--workdir", tmp_path / "run", "--steps", "-3")
    assert stopped.value.code == 2
    assert "--steps: must be a positive integer, got '-3'" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("")
    for workdir in (a_file, a_file / "run"):
        assert _cli("smoke", "--workdir", workdir) == 2
        err = capsys.readouterr().err
        assert "is not a directory" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a read-only mount
    assert _cli("smoke", "--workdir", tmp_path / "new") == 2
    assert f"{tmp_path} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "new").exists()
