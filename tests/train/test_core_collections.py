"""The train loop carries the collections attention cores write in training: routing's
k-means centroids move under ``effjax train`` by the paper's moving average."""

from pathlib import Path

import jax
import numpy as np

from effjax.layers.cores import ROUTING_CENTROIDS
from effjax.train import loop, tasks
from effjax.train.config import load_config
from tests.train._tiny import tiny_run

ROOT = Path(__file__).resolve().parents[2]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_routing_centroids_move_by_the_moving_average_under_effjax_train(tmp_path):
    config = tiny_run(load_config(ROOT / "configs/smoke_routing.py"))
    model, data = tasks.build_model(config), tasks.build_data(config)
    result = loop.train(config, tmp_path, model=model, data=data, loss_fn=tasks.loss_for(config))
    moved = result["state"].collections[ROUTING_CENTROIDS]["encoder"]["layer_0"]["attention"]
    moved = jax.device_get(moved["core"])

    # By hand: the initial centroids, the step-0 batch's routed (second) head's unit
    # queries and keys, each real one counted by its nearest centroid, then
    # mu <- normalize(decay mu + (1 - decay) mean) (Roy et al. 2021, Sec. 4.1).
    batch = data.train_batch(0)
    tx = loop.make_optimizer(config.optimizer, 1)
    state = jax.jit(lambda b: loop.init_state(model, tx, config.run.seed, b))(batch)
    start = state.collections[ROUTING_CENTROIDS]["encoder"]["layer_0"]["attention"]["core"]
    captured = jax.jit(
        lambda state, b: model.apply(
            {"params": state.params, **state.collections},
            b["inputs"],
            b["padding_mask"],
            capture_intermediates=lambda module, _: module.name in ("query", "key"),
            mutable=["intermediates"],
        )[1]
    )(state, batch)
    projected = captured["intermediates"]["encoder"]["layer_0"]["attention"]
    mu = np.asarray(start["centroids"], np.float64)[0]  # [C, H], routing head 1
    real = np.asarray(batch["padding_mask"], bool)
    vectors = [np.asarray(projected[name]["__call__"][0], np.float64)[:, :, 1][real]
               for name in ("query", "key")]  # fmt: skip
    x = _unit(np.concatenate(vectors))
    nearest = np.argmax(x @ mu.T, axis=-1)
    want = mu.copy()
    for c in np.unique(nearest):
        mean = x[nearest == c].mean(0)
        want[c] = _unit(0.999 * mu[c] + 0.001 * mean)
    np.testing.assert_allclose(moved["centroids"][0], want, atol=1e-6)
    assert np.abs(moved["centroids"][0] - mu).max() > 1e-4  # it did move
    np.testing.assert_array_equal(moved["counts"], 0.0)  # statistics cleared by the upkeep
