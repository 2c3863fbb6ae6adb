"""The loop: loss falls, logs are written, resuming reproduces the uninterrupted run."""

import json
import shutil

import jax
import numpy as np
import pytest

from effjax.train import loop
from effjax.train.config import OptimizerConfig
from tests.train._tiny import TinyClassifier, tiny_config, tiny_data


def _snapshot(directory):
    return {
        p.relative_to(directory): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _config(**run):
    return tiny_config(
        **{"num_steps": 40, "log_every": 10, "eval_every": 20, "checkpoint_every": 10, **run}
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """40 uninterrupted steps."""
    workdir = tmp_path_factory.mktemp("full")
    return workdir, loop.train(_config(), workdir, model=TinyClassifier(), data=tiny_data())


def test_loss_falls_and_logs_are_written(full_run):
    tmp_path, result = full_run
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert [r["step"] for r in records if "train/loss" in r] == [10, 20, 30, 40]
    assert losses[-1] < 0.7 * losses[0]
    assert result["step"] == 40 and "test/accuracy" in result and "validation/loss" in result
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [20, 30, 40]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboardX.proto import event_pb2  # the event file holds our scalars

    event_file = next((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    tags = _scalar_tags(event_file, event_pb2)
    assert {"train/loss", "validation/accuracy", "test/accuracy"} <= tags


def _scalar_tags(path, event_pb2):
    import struct

    data, tags, offset = path.read_bytes(), set(), 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
        tags |= {value.tag for value in event.summary.value}
        offset += 12 + length + 4
    return tags


def test_resume_matches_uninterrupted_run(full_run, tmp_path, capsys):
    _, full = full_run
    data = tiny_data()
    # A run cut short after 12 steps (checkpoints at 10 and the end at 12) ...
    part = loop.train(_config(num_steps=12), tmp_path / "cut", model=TinyClassifier(), data=data)
    assert part["step"] == 12
    # ... then rerun to the full length resumes from 12, same data order and keys; with
    # progress on and stderr not a terminal, it prints a line per log interval.
    resumed = loop.train(
        _config(progress=True), tmp_path / "cut", model=TinyClassifier(), data=data
    )
    err = capsys.readouterr().err
    assert "resumed from step 12 of 40" in err
    assert [
        line.split()[3] for line in err.splitlines() if line.startswith("effjax train: step")
    ] == [
        "20/40",
        "30/40",
        "40/40",
    ]
    jax.tree.map(np.testing.assert_array_equal, full["state"].params, resumed["state"].params)
    assert full["test/loss"] == resumed["test/loss"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").open()]
    assert steps == sorted(steps)


def test_rerunning_a_finished_run_changes_nothing(full_run, tmp_path, capsys):
    workdir, full = full_run
    shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
    before = _snapshot(tmp_path)
    again = loop.train(_config(), tmp_path, model=TinyClassifier(), data=tiny_data())
    assert _snapshot(tmp_path) == before  # no new record, no second event file
    assert again["step"] == 40 and again["test/loss"] == full["test/loss"]
    assert again["validation/accuracy"] == full["validation/accuracy"]
    assert "complete at step 40; nothing to do" in capsys.readouterr().err


def test_incompatible_workdir_is_refused_untouched(full_run, tmp_path):
    shutil.copytree(full_run[0], tmp_path, dirs_exist_ok=True)
    before = _snapshot(tmp_path)
    other = _config().replace(optimizer=OptimizerConfig(learning_rate=1.0))
    with pytest.raises(ValueError, match=r"optimizer\.learning_rate: checkpoint has 0\.03"):
        loop.train(other, tmp_path, model=TinyClassifier(), data=tiny_data())
    wider = TinyClassifier(features=32)  # same config, but the checkpoint's shapes differ
    with pytest.raises(ValueError, match="does not fit the model"):
        loop.train(_config(), tmp_path, model=wider, data=tiny_data())
    (tmp_path / "config.json").unlink()
    before.pop(next(k for k in before if str(k) == "config.json"))
    with pytest.raises(ValueError, match=r"no config\.json"):
        loop.train(_config(), tmp_path, model=TinyClassifier(), data=tiny_data())
    assert _snapshot(tmp_path) == before


def test_schedule_warmup_then_decay():
    config = OptimizerConfig(learning_rate=1.0, warmup_steps=10, decay="linear", end_fraction=0.1)
    schedule = loop.make_schedule(config, num_steps=110)
    np.testing.assert_allclose(
        [schedule(s) for s in (0, 5, 10, 60, 110)], [0, 0.5, 1, 0.55, 0.1], rtol=1e-6
    )
    cosine = loop.make_schedule(OptimizerConfig(learning_rate=2.0, warmup_steps=0), 100)
    np.testing.assert_allclose([cosine(0), cosine(50), cosine(100)], [2.0, 1.0, 0.0], atol=1e-6)


def test_a_batch_global_attention_mask_reaches_the_model():
    from effjax.models import DecoderConfig, DecoderLM

    config = DecoderConfig(
        vocab_size=20, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
        max_position_embeddings=8, attention="global_local",
        attention_options={"window_size": 1, "max_global_tokens": 1},
    )  # fmt: skip
    model = DecoderLM(config)
    inputs = jax.random.randint(jax.random.key(0), (2, 8), 0, 20)
    marks = np.zeros((2, 8), bool)
    marks[:, 0] = True  # the first token, seen by every later one
    batch = {"inputs": inputs, "padding_mask": np.ones((2, 8), bool)}
    tx = loop.make_optimizer(OptimizerConfig(learning_rate=1e-3), 10)
    state = loop.init_state(model, tx, 0, {**batch, "global_attention_mask": marks})
    got = loop.forward(
        model, state.params, {**batch, "global_attention_mask": marks}, train=False, rng=None
    )
    want = model.apply({"params": state.params}, inputs, global_attention_mask=marks)
    np.testing.assert_allclose(got, want, atol=1e-6)
    without = loop.forward(model, state.params, batch, train=False, rng=None)
    assert float(np.abs(got[:, -1] - without[:, -1]).max()) > 1e-4
