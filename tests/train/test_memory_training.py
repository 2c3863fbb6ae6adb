"""Training a segment-recurrent decoder: the loop carries Transformer-XL's memory."""

import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from effjax.cli import main
from effjax.data import LanguageModelData, repeated_blocks
from effjax.models import COMPRESSION_LOSSES, MEMORY, DecoderConfig, DecoderLM, compression_losses
from effjax.train import tasks
from effjax.train.config import DataConfig, RunConfig, load_config
from effjax.train.loop import (
    evaluate,
    init_state,
    language_model_loss,
    make_eval_step,
    make_train_step,
)

ROOT = Path(__file__).resolve().parents[2]
CFG = DecoderConfig(
    vocab_size=8,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    hidden_dropout_rate=0.0,
    mem_len=3,
)
STREAM = repeated_blocks(400, period=6, repeats=3, vocab_size=8, seed=0)
DATA = LanguageModelData(
    {"train": STREAM, "validation": STREAM[::-1]}, batch_size=2, segment_length=4
)


def _loss(model, params, collections, batch):
    logits = model.apply({"params": params, **collections}, batch["inputs"], batch["padding_mask"])
    return float(language_model_loss(logits, batch)[0])


@pytest.fixture(scope="module")
def two_steps():
    model, tx = DecoderLM(CFG), optax.sgd(0.1)
    state = init_state(model, tx, 0, DATA.train_batch(0))
    step = jax.jit(make_train_step(model, tx, 0, language_model_loss))
    first, _ = step(state, DATA.train_batch(0))
    _, metrics = step(first, DATA.train_batch(1))
    return model, state, first, metrics


def test_train_step_carries_the_segment_memory(two_steps):
    model, state, first, metrics = two_steps
    assert not state.collections[MEMORY]["layer_0"]["memory"]["mask"].any()  # empty at init
    memory = first.collections[MEMORY]["layer_0"]["memory"]
    # Layer 0's inputs are the token embeddings (relative positions add none): the memory
    # after step 0 holds those of batch 0's last M = 3 tokens, under step 0's parameters.
    embeddings = state.params["token_embeddings"]["embedding"][DATA.train_batch(0)["inputs"][:, 1:]]
    np.testing.assert_allclose(memory["hidden"], embeddings, atol=1e-6)
    assert memory["mask"].all()
    # Step 1's loss is batch 1's under that memory, not without one.
    batch = DATA.train_batch(1)
    with_memory = _loss(model, first.params, first.collections, batch)
    np.testing.assert_allclose(float(metrics["loss"]), with_memory, rtol=1e-5)
    assert abs(_loss(model, first.params, {}, batch) - with_memory) > 1e-4


def test_evaluation_starts_fresh_and_carries_memory_across_batches(two_steps):
    _, _, first, _ = two_steps
    longer = DecoderLM(CFG.replace(eval_mem_len=6).evaluation_config())
    got = evaluate(
        make_eval_step(longer, language_model_loss), first, DATA.eval_batches("validation")
    )
    losses, memory = [], {}
    for batch in DATA.eval_batches("validation"):
        logits, memory = longer.apply(
            {"params": first.params, **memory}, batch["inputs"], mutable=[MEMORY]
        )
        losses.append(float(language_model_loss(logits, batch)[0]))
    np.testing.assert_allclose(got["loss"], np.mean(losses), rtol=1e-5)
    fresh = np.mean([_loss(longer, first.params, {}, b) for b in DATA.eval_batches("validation")])
    assert abs(fresh - got["loss"]) > 1e-4


def test_train_step_adds_and_reports_the_compression_loss():
    # M = T = 4: step 0 evicts only empty slots (no loss, the compressor stays put),
    # step 1 evicts batch 0's tokens and its reconstruction loss trains the compressor.
    model = DecoderLM(CFG.replace(mem_len=4, compressed_mem_len=2, compression_rate=2))
    tx = optax.sgd(0.1)
    state = init_state(model, tx, 0, DATA.train_batch(0))
    step = jax.jit(make_train_step(model, tx, 0, language_model_loss))
    first, metrics_0 = step(state, DATA.train_batch(0))
    second, metrics_1 = step(first, DATA.train_batch(1))
    compressor = lambda s: s.params["layer_0"]["memory"]["compress"]["kernel"]  # noqa: E731
    assert float(metrics_0["compression/aux_loss"]) == 0.0
    np.testing.assert_array_equal(compressor(first), compressor(state))
    _, sown = model.apply(
        {"params": first.params, **first.collections},
        DATA.train_batch(1)["inputs"],
        mutable=[MEMORY, COMPRESSION_LOSSES],
    )
    expected = float(compression_losses(sown)["aux_loss"])
    assert expected > 0
    np.testing.assert_allclose(float(metrics_1["compression/aux_loss"]), expected, rtol=1e-5)
    assert float(np.abs(compressor(second) - compressor(first)).max()) > 0


def test_effjax_train_runs_the_memory_smoke_config(tmp_path):
    workdir = tmp_path / "run"
    status = main(["train", str(ROOT / "configs/smoke_memory.py"), "--workdir", str(workdir),
                   "--steps", "2", "--no-progress"])  # fmt: skip
    assert status == 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    assert {"test/loss", "test/bits_per_token", "test/accuracy"} <= set(final)
    assert np.isfinite(final["test/loss"]) and final["test/loss"] < 4.0  # ln 16 = 2.77 at init


def test_text_lm_reads_the_bytes_of_each_split(tmp_path):
    smoke = load_config(ROOT / "configs/smoke_memory.py")
    config = smoke.replace(
        data=DataConfig(kind="text_lm", path=str(tmp_path), max_length=4),
        model=smoke.model.replace(vocab_size=257),
        run=RunConfig(batch_size=2),
    )
    (tmp_path / "train.txt").write_text("abcdefghijklmnopqrstuvwxyz")
    with pytest.raises(ValueError, match=r"no validation.txt \(text_lm reads <split>.txt\)"):
        tasks.build_data(config)
    (tmp_path / "validation.txt").write_text("0123456789é")
    data = tasks.build_data(config)
    assert sorted(data.splits) == ["train", "validation"]
    batch = data.train_batch(0)
    assert batch["inputs"][0].tolist() == [ord(c) + 1 for c in "abcd"]  # bytes + 1
    assert batch["inputs"][1].tolist() == [ord(c) + 1 for c in "nopq"]  # second row
    with pytest.raises(ValueError, match=r"trains an effjax.models.DecoderConfig"):
        tasks.check_inputs(config.replace(model=load_config("smoke").model))
