import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from orbax.checkpoint._src.path import atomicity

from effjax.train.checkpoint import checkpoint_manager, restore, save


def make_state(scale=1.0, width=3):
    params = {"dense": {"kernel": scale * jnp.ones((2, width)), "bias": scale * jnp.arange(width)}}
    return train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-2))


def step_state(state):
    grads = jax.tree.map(jnp.ones_like, state.params)
    return state.apply_gradients(grads=grads)


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_train_state_round_trip_restores_params_optimizer_and_step(tmp_path):
    state = step_state(step_state(make_state(2.0)))
    manager = checkpoint_manager(tmp_path)
    save(manager, int(state.step), state)

    restored = restore(checkpoint_manager(tmp_path, read_only=True), make_state())
    assert int(restored.step) == 2
    assert_trees_equal(restored.params, state.params)
    assert_trees_equal(restored.opt_state, state.opt_state)
    # The restored state keeps training exactly like the original.
    assert_trees_equal(step_state(restored).params, step_state(state).params)


def test_newest_step_by_default_and_old_steps_pruned(tmp_path):
    manager = checkpoint_manager(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        save(manager, step, {"w": jnp.full((2,), float(step))})
    assert manager.all_steps() == [2, 3]
    np.testing.assert_array_equal(restore(manager, {"w": jnp.zeros(2)})["w"], [3.0, 3.0])
    np.testing.assert_array_equal(restore(manager, {"w": jnp.zeros(2)}, step=2)["w"], [2.0, 2.0])


def test_save_interrupted_before_commit_leaves_previous_checkpoint(tmp_path, monkeypatch):
    good = make_state(1.0)
    save(checkpoint_manager(tmp_path, async_save=False), 1, good)

    async def power_cut(self):
        raise RuntimeError("killed before the rename")

    # All files of step 2 get written, then the commit (rename into place) never happens.
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", power_cut)
    with pytest.raises(RuntimeError, match="killed before the rename"):
        save(checkpoint_manager(tmp_path, async_save=False), 2, step_state(make_state(5.0)))
    monkeypatch.undo()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("2.")]
    assert leftovers and "orbax-checkpoint-tmp" in leftovers[0]

    restarted = checkpoint_manager(tmp_path)
    assert restarted.all_steps() == [1]
    restored = restore(restarted, make_state())
    assert int(restored.step) == 0
    assert_trees_equal(restored.params, good.params)
    # Training resumes: step 2 can be saved again.
    save(restarted, 2, step_state(good))
    assert restarted.all_steps() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]  # the half save is gone


def test_missing_checkpoint_is_named(tmp_path):
    manager = checkpoint_manager(tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished checkpoint in"):
        restore(manager, make_state())
    save(manager, 1, make_state())
    with pytest.raises(
        FileNotFoundError, match=r"no checkpoint for step 7 .* finished steps: \[1\]"
    ):
        restore(manager, make_state(), step=7)


def test_incompatible_target_names_the_leaves(tmp_path):
    manager = checkpoint_manager(tmp_path)
    save(manager, 1, make_state(width=3))
    with pytest.raises(
        ValueError, match=r"params/dense/kernel: checkpoint shape \(2, 3\), target shape \(2, 4\)"
    ):
        restore(manager, make_state(width=4))
    with pytest.raises(ValueError, match="missing in checkpoint: extra"):
        restore(manager, {"extra": jnp.zeros(1)})


def test_saving_an_existing_step_keeps_the_saved_one(tmp_path):
    manager = checkpoint_manager(tmp_path)
    assert save(manager, 1, {"w": jnp.ones(2)})
    assert not save(manager, 1, {"w": jnp.zeros(2)})  # orbax alone would raise
    np.testing.assert_array_equal(restore(manager, {"w": jnp.zeros(2)})["w"], [1.0, 1.0])


def test_restore_places_arrays_on_the_given_shardings(tmp_path):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    state = step_state(make_state(3.0, width=8))
    save(checkpoint_manager(tmp_path), 1, state)
    mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    over_model = NamedSharding(mesh, PartitionSpec(None, "model"))
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(lambda: make_state(width=8))
    shardings = jax.tree.map(lambda leaf: over_model if leaf.ndim == 2 else replicated, abstract)

    restored = restore(checkpoint_manager(tmp_path), abstract, shardings=shardings)
    kernel = restored.params["dense"]["kernel"]
    assert kernel.sharding == over_model
    assert {shard.data.shape for shard in kernel.addressable_shards} == {(2, 4)}
    assert_trees_equal(restored.params, state.params)
    assert_trees_equal(restored.opt_state, state.opt_state)


def test_manager_without_create_writes_nothing(tmp_path):
    manager = checkpoint_manager(tmp_path / "later", create=False)
    assert manager.latest_step() is None
    assert not (tmp_path / "later").exists()
