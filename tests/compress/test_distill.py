"""Distillation losses against hand-computed values, the train step, student initialisation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from effjax.compress import (
    attention_transfer_loss,
    every_other_layer,
    hidden_cosine_loss,
    hidden_mse_loss,
    init_distill_state,
    init_student_from_teacher,
    kd_loss,
    make_distill_step,
    value_relation_loss,
)


def test_kd_loss_matches_hand_computed_value_with_temperature_and_mask():
    # At T = 2: teacher logits (2 ln 3, 0) -> probs (3/4, 1/4); student (0, 0) -> (1/2, 1/2).
    teacher = jnp.array([[2 * math.log(3.0), 0.0], [1.0, -1.0], [9.0, -9.0]])
    student = jnp.array([[0.0, 0.0], [1.0, -1.0], [-9.0, 9.0]])
    mask = jnp.array([True, True, False])  # the third, very wrong, position must not count
    loss = kd_loss(student, teacher, temperature=2.0, mask=mask)
    kl_first = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    expected = 2.0**2 * (kl_first + 0.0) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_kd_loss_gradient_is_temperature_times_probability_gap():
    # Hinton et al. (2015): dL/dz_s = T * (q_s - p_t) per position (divided by the count).
    student = jnp.array([[0.3, -1.0, 2.0]])
    teacher = jnp.array([[1.0, 0.5, -0.5]])
    t = 3.0
    grad = jax.jit(jax.grad(lambda z: kd_loss(z, teacher, temperature=t)))(student)
    expected = t * (jax.nn.softmax(student / t) - jax.nn.softmax(teacher / t))
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    teacher_grad = jax.jit(jax.grad(lambda z: kd_loss(student, z, temperature=t)))(teacher)
    assert float(jnp.abs(teacher_grad).max()) == 0


def test_kd_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=0.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), temperature=1.0)
    with pytest.raises(ValueError, match="mask"):
        kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=1.0, mask=jnp.ones(3, bool))


def test_hidden_losses_match_hand_values_through_a_layer_map():
    s0 = jnp.array([[1.0, 0.0], [5.0, 5.0]])
    t = [jnp.zeros((2, 2)), jnp.array([[1.0, 1.0], [0.0, 7.0]])]
    mask = jnp.array([True, False])
    # student layer 0 <-> teacher layer 1; only the first position counts.
    cos = hidden_cosine_loss([s0], t, layer_map=[(0, 1)], mask=mask)
    np.testing.assert_allclose(cos, 1.0 - 1.0 / math.sqrt(2.0), rtol=1e-6)
    mse = hidden_mse_loss([s0], t, layer_map=[(0, 1)], mask=mask)
    np.testing.assert_allclose(mse, (0.0 + 1.0) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="layer_map"):
        hidden_mse_loss([s0], t, layer_map=[(0, 2)])


def test_attention_transfer_loss_is_mean_row_kl_over_real_queries():
    teacher = jnp.array([[0.75, 0.25], [0.5, 0.5]])[None, None]  # [B=1, N=1, T=2, S=2]
    student = jnp.array([[0.5, 0.5], [0.1, 0.9]])[None, None]
    padding = jnp.array([[True, False]])
    loss = attention_transfer_loss(student, teacher, padding_mask=padding)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_value_relation_loss_is_zero_for_the_teacher_and_matches_a_direct_computation(normal):
    teacher = normal((2, 5, 4, 8), seed=0)
    student = normal((2, 5, 2, 8), seed=1)  # fewer heads, so relation heads are re-split
    loss = jax.jit(value_relation_loss, static_argnames="num_relation_heads")
    assert float(loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)

    def relation(v, heads):
        b, t, n, h = v.shape
        v = np.asarray(v, np.float64).reshape(b, t, heads, n * h // heads)
        logits = np.einsum("btrd,bsrd->brts", v, v) / math.sqrt(n * h // heads)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    rt, rs = relation(teacher, 2), relation(student, 2)
    expected = np.mean(np.sum(rt * (np.log(rt) - np.log(rs)), axis=-1))
    got = loss(student, teacher, num_relation_heads=2)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_every_other_layer_and_student_initialisation():
    assert every_other_layer(12, 6) == (0, 2, 4, 7, 9, 11)  # DistilBERT's extraction
    assert every_other_layer(6, 3) == (0, 3, 5)
    assert every_other_layer(4, 4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="num_student_layers"):
        every_other_layer(3, 6)
    teacher = {
        "embeddings": {"w": jnp.ones(2)},
        "encoder": {f"layer_{i}": {"w": jnp.full(2, float(i))} for i in range(6)},
    }
    student = init_student_from_teacher(teacher, (0, 2, 4), layer_name="layer_{}")
    assert sorted(student["encoder"]) == ["layer_0", "layer_1", "layer_2"]
    assert [float(student["encoder"][f"layer_{j}"]["w"][0]) for j in range(3)] == [0.0, 2.0, 4.0]
    assert student["embeddings"] is teacher["embeddings"] or np.array_equal(
        student["embeddings"]["w"], teacher["embeddings"]["w"]
    )
    with pytest.raises(ValueError, match="teacher_layers"):
        init_student_from_teacher(teacher, (0, 7), layer_name="layer_{}")
    with pytest.raises(ValueError, match="layer_name"):
        init_student_from_teacher(teacher, (0,), layer_name="block_{}")


def _linear_distillation(optimizer, normal):
    step = make_distill_step(
        student_apply=lambda p, x: x @ p["w"],
        teacher_apply=lambda p, x: x @ p["w"],
        loss_fn=lambda s, t, x: hidden_mse_loss(s, t),
        optimizer=optimizer,
    )
    teacher = {"w": normal((8, 4), seed=1)}
    student = {"w": jnp.zeros((8, 4))}
    batch = normal((16, 8), seed=2)
    return step, init_distill_state(student, teacher, optimizer), batch


def test_distill_step_trains_student_towards_frozen_teacher(normal):
    step, state, batch = _linear_distillation(optax.adam(0.05), normal)
    teacher_before = np.asarray(state.teacher_params["w"])
    losses = []
    for _ in range(100):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 1e-2 * losses[0]
    np.testing.assert_array_equal(state.teacher_params["w"], teacher_before)
    assert int(state.step) == 100


def test_distill_step_on_a_data_parallel_mesh_equals_single_device(normal):
    step, state, batch = _linear_distillation(optax.sgd(0.1), normal)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    replicated = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    sharded_state, sharded_metrics = step(replicated, sharded_batch)
    single_state, single_metrics = step(state, batch)
    np.testing.assert_allclose(sharded_metrics["loss"], single_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(sharded_state.params["w"], single_state.params["w"], rtol=1e-5)
