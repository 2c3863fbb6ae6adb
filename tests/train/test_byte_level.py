"""Byte-level training from ``effjax train``: ListOps as bytes through Charformer's GBST."""

import json
from pathlib import Path

from effjax.data import listops
from effjax.train import loop, tasks
from effjax.train.config import load_config
from tests.train._tiny import tiny_run

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40


def test_charformer_config_learns_byte_level_listops(tmp_path):
    config = tiny_run(load_config(ROOT / "configs/smoke_charformer.py"), num_steps=STEPS,
                      batch_size=16, log_every=STEPS // 4, eval_every=STEPS)  # fmt: skip
    data = tasks.build_data(config)
    # The inputs are the expressions' source bytes (+1) and the labels their values.
    for ids, label in zip(*data.splits["validation"], strict=True):
        source = bytes(b - 1 for b in ids).decode()
        assert listops.evaluate(listops.tokenize(source)) == label
    model = tasks.build_model(config)
    loop.train(config, tmp_path, model=model, data=data, loss_fn=tasks.loss_for(config))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    # Chance is ln 10 = 2.30; the last 10 steps' mean loss is below the first 10's.
    assert losses[-1] < losses[0] - 0.1
