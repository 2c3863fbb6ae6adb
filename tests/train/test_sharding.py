"""On 8 simulated CPU devices a sharded or pmap step equals the single-device step."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from effjax.models import EncoderConfig, EncoderForSequenceClassification
from effjax.train import loop, sharding, tasks
from effjax.train.config import load_config
from tests.train._tiny import tiny_run

ROOT = Path(__file__).resolve().parents[2]

CONFIG = EncoderConfig(
    vocab_size=24,
    hidden_size=32,
    num_layers=1,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
    hidden_dropout_rate=0.0,
    attention_dropout_rate=0.0,
)


@pytest.fixture(scope="module")
def reference():
    """Model, optimizer, initial state, batches, and the single-device result."""
    model = EncoderForSequenceClassification(CONFIG, num_labels=5)
    # SGD with momentum: an optimizer state to shard, and no Adam-style division by
    # tiny second moments that would amplify float reordering far beyond 1e-5.
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5, momentum=0.9))
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 17, size=8)
    mask = np.arange(16)[None, :] < lengths[:, None]
    batches = [
        {
            "inputs": np.where(mask, rng.integers(1, 24, size=(8, 16)), 0).astype(np.int32),
            "padding_mask": mask,
            "labels": rng.integers(0, 5, size=8).astype(np.int32),
        }
        for _ in range(2)
    ]
    state = loop.init_state(model, tx, seed=0, batch=batches[0])
    return model, tx, state, batches, _single_device_run(model, tx, state, batches)


def _single_device_run(model, tx, state, batches):
    step = jax.jit(loop.make_train_step(model, tx, seed=0))
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[1] != losses[0]  # the parameters moved
    return state, losses


def _close(actual, expected):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), actual, expected
    )


@pytest.mark.parametrize(
    ("data", "model_axis", "mode"),
    [
        pytest.param(8, 1, "data", marks=pytest.mark.slow),
        (4, 2, "tensor"),
        pytest.param(4, 2, "sequence", marks=pytest.mark.slow),
    ],
)
def test_mesh_step_equals_single_device(reference, data, model_axis, mode):
    model, tx, state, batches, (expected_state, expected_losses) = reference

    mesh = sharding.make_mesh(data, model_axis)
    rules = sharding.RULES[mode]
    state_sharding = sharding.state_shardings(state, tx, mesh, rules)
    batch_sharding = sharding.batch_shardings(batches[0], mesh, rules)
    step = sharding.jit_sharded(
        loop.make_train_step(model, tx, seed=0), state_sharding, batch_sharding
    )
    sharded = jax.device_put(jax.tree.map(np.asarray, state), state_sharding)  # donated below
    losses = []
    for batch in batches:
        sharded, metrics = step(sharded, jax.device_put(batch, batch_sharding))
        losses.append(float(metrics["loss"]))

    query = sharded.params["encoder"]["layer_0"]["attention"]["query"]["kernel"]
    if mode == "data":
        assert query.sharding.is_fully_replicated
    else:  # really split over "model": each device holds 2 of the 4 heads
        assert query.sharding.spec == PartitionSpec(None, "model", None)
        assert query.addressable_shards[0].data.shape == (32, 2, 8)
    inputs_spec = batch_sharding["inputs"].spec
    assert inputs_spec == (
        PartitionSpec("data", "model") if mode == "sequence" else PartitionSpec("data", None)
    )
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    _close(sharded.params, expected_state.params)


def test_pmap_step_equals_single_device(reference):
    model, tx, state, batches, (expected_state, expected_losses) = reference

    step = sharding.pmap_train_step(loop.make_train_step(model, tx, seed=0, axis_name="batch"))
    replicated = sharding.replicate(jax.tree.map(np.asarray, state))
    losses = []
    for batch in batches:
        replicated, metrics = step(replicated, sharding.split_for_pmap(batch, 8))
        losses.append(float(metrics["loss"][0]))
    # Per-device losses are means over one example; pmean makes them the batch mean.
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    _close(sharding.unreplicate(replicated).params, expected_state.params)


def test_expert_sharded_step_equals_single_device(reference):
    _, tx, _, batches, _ = reference
    model = EncoderForSequenceClassification(CONFIG.replace(num_experts=4), num_labels=5)
    state = loop.init_state(model, tx, seed=0, batch=batches[0])
    expected_state, expected_losses = _single_device_run(model, tx, state, batches)

    mesh = sharding.make_mesh(2, 1, expert=4)
    rules = sharding.DATA_RULES
    state_sharding = sharding.state_shardings(state, tx, mesh, rules)
    batch_sharding = sharding.batch_shardings(batches[0], mesh, rules)
    step = sharding.jit_sharded(
        loop.make_train_step(model, tx, seed=0), state_sharding, batch_sharding, rules
    )
    sharded = jax.device_put(jax.tree.map(np.asarray, state), state_sharding)  # donated below
    losses = []
    for batch in batches:
        sharded, metrics = step(sharded, jax.device_put(batch, batch_sharding))
        losses.append(float(metrics["loss"]))

    kernel = sharded.params["encoder"]["layer_0"]["feed_forward"]["experts"]["output"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec("expert", None, None)
    assert kernel.addressable_shards[0].data.shape == (1, 64, 32)  # one expert per device
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    _close(sharded.params, expected_state.params)


def test_effjax_train_runs_the_moe_config_with_experts_over_the_expert_axis(tmp_path):
    config = tiny_run(load_config(ROOT / "configs/smoke_moe.py"))
    assert config.run.mesh_expert == 4  # 4 experts on 4 of the 8 devices
    result = loop.train(config, tmp_path, model=tasks.build_model(config),
                        data=tasks.build_data(config), loss_fn=tasks.loss_for(config))  # fmt: skip
    experts = result["state"].params["encoder"]["layer_0"]["feed_forward"]["experts"]
    assert experts["intermediate"]["kernel"].sharding.spec == PartitionSpec("expert", None, None)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= record["train/moe/tokens_dropped"] < 1.0
    assert record["train/moe/aux_loss"] > 0.0  # the weighted auxiliary losses were added


def test_bad_mesh_and_indivisible_parameters():
    with pytest.raises(ValueError, match=r"mesh \(data=3, model=2, expert=1\) does not fit 8"):
        sharding.make_mesh(3, 2)
    mesh = sharding.make_mesh(1, 8)
    params = {"attention": {"query": {"kernel": jnp.zeros((32, 4, 8))}}}
    with pytest.raises(ValueError, match=r"attention/query/kernel of shape \(32, 4, 8\)"):
        sharding.param_shardings(params, mesh, sharding.TENSOR_RULES)
    with pytest.raises(ValueError, match="not divisible by 3 devices"):
        sharding.split_for_pmap({"x": np.zeros((8, 2))}, 3)
