"""Unstructured, N:M and gradual pruning; masks kept through optax training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from effjax.compress import (
    apply_masks,
    init_prune_state,
    keep_masks,
    magnitude_masks,
    make_prune_step,
    movement_scores,
    nm_masks,
    polynomial_sparsity_schedule,
    score_masks,
)


@pytest.fixture
def params(normal):
    return {
        "dense_0": {"kernel": normal((16, 8), seed=1), "bias": jnp.ones(8)},
        "dense_1": {"kernel": normal((8, 12), seed=2, scale=3.0), "bias": jnp.ones(12)},
        "norm": {"scale": normal((12,), seed=3)},
    }


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.77])
def test_layer_scope_prunes_exactly_the_smallest_magnitudes_of_each_kernel(sparsity, params):
    masks = magnitude_masks(params, sparsity, scope="layer")
    for name in ("dense_0", "dense_1"):
        w, keep = np.abs(np.asarray(params[name]["kernel"])), np.asarray(masks[name]["kernel"])
        assert (~keep).sum() == round(sparsity * w.size)
        if 0 < (~keep).sum() < w.size:
            assert w[~keep].max() <= w[keep].min()
        assert np.asarray(masks[name]["bias"]).all()  # biases untouched by default
    assert np.asarray(masks["norm"]["scale"]).all()


def test_global_scope_ranks_all_kernels_on_one_scale(params):
    masks = magnitude_masks(params, 0.5, scope="global")
    kernels = [params[n]["kernel"] for n in ("dense_0", "dense_1")]
    keeps = [masks[n]["kernel"] for n in ("dense_0", "dense_1")]
    w = np.abs(np.concatenate([np.ravel(k) for k in kernels]))
    keep = np.concatenate([np.ravel(k) for k in keeps])
    assert (~keep).sum() == round(0.5 * w.size)
    assert w[~keep].max() <= w[keep].min()
    # dense_1 is 3x larger in scale, so the global threshold prunes dense_0 much more.
    assert (~keeps[0]).mean() > 0.5 > (~keeps[1]).mean()


def test_ties_are_broken_by_flat_index_so_masks_are_deterministic():
    masks = magnitude_masks({"w": jnp.ones((2, 4))}, 0.25)
    assert masks["w"].tolist() == [[False, False, True, True], [True, True, True, True]]


def test_masks_work_under_jit_with_a_traced_sparsity(params):
    fn = jax.jit(lambda p, s: magnitude_masks(p, s, scope="global"))
    for sparsity in (0.3, 0.6):
        jitted = fn(params, sparsity)
        eager = magnitude_masks(params, sparsity, scope="global")
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, jitted, eager))


def test_nm_masks_keep_exactly_n_largest_in_every_group_along_the_input_axis(normal):
    w = normal((16, 6), seed=4)
    keep = np.asarray(nm_masks({"kernel": w}, 2, 4)["kernel"])
    groups = keep.reshape(4, 4, 6)
    assert (groups.sum(axis=1) == 2).all()
    mags = np.abs(np.asarray(w)).reshape(4, 4, 6)
    kept_min = np.where(groups, mags, np.inf).min(axis=1)
    dropped_max = np.where(groups, -np.inf, mags).max(axis=1)
    assert (kept_min >= dropped_max).all()


def test_bad_input_raises_value_error_naming_it(params):
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            magnitude_masks(params, bad)
    with pytest.raises(ValueError, match="n=5, m=4"):
        nm_masks(params, 5, 4)
    with pytest.raises(ValueError, match="filter_fn selects no parameter"):
        magnitude_masks(params, 0.5, filter_fn=lambda path, leaf: False)
    with pytest.raises(ValueError, match="filter_fn selects no parameter"):
        nm_masks(params, 2, 4, filter_fn=lambda path, leaf: path[-1] == "missing")
    with pytest.raises(ValueError, match=r"divisible by m=5"):
        nm_masks(params, 2, 5)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(params, 0.5, scope="row")
    with pytest.raises(ValueError, match="final_sparsity"):
        polynomial_sparsity_schedule(1.0, begin_step=0, end_step=10)


def test_filter_fn_can_select_biases(params):
    masks = magnitude_masks(params, 0.5, filter_fn=lambda path, leaf: path[-1] == "bias")
    assert (~np.asarray(masks["dense_0"]["bias"])).sum() == 4
    assert np.asarray(masks["dense_0"]["kernel"]).all()


def test_keep_masks_keeps_pruned_weights_exactly_zero_through_adamw(params, normal):
    masks = magnitude_masks(params, 0.5)
    params = apply_masks(params, masks)
    optimizer = optax.chain(optax.adamw(1e-2, weight_decay=0.1), keep_masks(masks))
    state = optimizer.init(params)
    x = normal((4, 16), seed=5)

    def loss(p):
        h = jnp.tanh(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"][None])
        return jnp.sum((h @ p["dense_1"]["kernel"] * p["norm"]["scale"][None] - 1.0) ** 2)

    @jax.jit
    def step(params, state):
        updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    start = params
    for _ in range(5):
        params, state = step(params, state)
        for name in ("dense_0", "dense_1"):
            kernel, keep = np.asarray(params[name]["kernel"]), np.asarray(masks[name]["kernel"])
            assert (kernel[~keep] == 0.0).all()
    changed = np.asarray(params["dense_0"]["kernel"] != start["dense_0"]["kernel"])
    assert changed[np.asarray(masks["dense_0"]["kernel"])].all()


def test_polynomial_schedule_matches_zhu_and_gupta_eq_1():
    schedule = polynomial_sparsity_schedule(0.9, begin_step=10, end_step=110, initial_sparsity=0.1)
    for t, expected in ((0, 0.1), (10, 0.1), (35, 0.9 - 0.8 * 0.75**3), (110, 0.9), (500, 0.9)):
        np.testing.assert_allclose(schedule(t), expected, rtol=1e-6)


def test_movement_scores_accumulate_minus_weight_times_gradient():
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    grads = {"w": jnp.array([[-1.0, -1.0], [2.0, 0.0]])}
    scores = movement_scores(params, grads)
    scores = movement_scores(params, grads, scores)
    np.testing.assert_allclose(scores["w"], [[2.0, -4.0], [-2.0, 0.0]])
    keep = score_masks(scores, 0.5)["w"]
    assert keep.tolist() == [[True, False], [False, True]]


@pytest.mark.parametrize("method", ["magnitude", "movement"])
def test_prune_step_follows_the_schedule_and_keeps_pruned_weights_zero(method, params, normal):
    x = normal((4, 16), seed=6)

    def loss_fn(p, batch):
        return jnp.mean((batch @ p["dense_0"]["kernel"] @ p["dense_1"]["kernel"]) ** 2)

    optimizer = optax.adam(1e-2)
    schedule = polynomial_sparsity_schedule(0.75, begin_step=0, end_step=4)
    step = make_prune_step(
        loss_fn=loss_fn, optimizer=optimizer, schedule=schedule, method=method, update_every=2
    )
    state = init_prune_state(params, optimizer)
    for t in range(1, 7):
        state, metrics = step(state, x)
        np.testing.assert_allclose(metrics["sparsity"], schedule(t))
        kernel = np.asarray(state.params["dense_1"]["kernel"])
        keep = np.asarray(state.masks["dense_1"]["kernel"])
        assert (kernel[~keep] == 0).all()
        refreshed_at = t - t % 2
        expected = round(float(schedule(refreshed_at)) * keep.size) if refreshed_at else 0
        assert (~keep).sum() == expected
    assert (~np.asarray(state.masks["dense_1"]["kernel"])).mean() == 0.75


def test_apply_masks_zeroes_exactly_the_dropped_entries(params):
    masks = magnitude_masks(params, 0.3)
    pruned = apply_masks(params, masks)
    leaf, keep = np.asarray(pruned["dense_0"]["kernel"]), np.asarray(masks["dense_0"]["kernel"])
    np.testing.assert_array_equal(leaf[keep], np.asarray(params["dense_0"]["kernel"])[keep])
    assert (leaf[~keep] == 0).all()
