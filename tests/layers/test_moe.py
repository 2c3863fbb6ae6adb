"""SwitchFeedForward against a loop-over-tokens numpy routing reference, hand values of
the auxiliary losses, and expert parallelism on 8 host devices."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from effjax.layers.moe import MOE_LOSSES, SwitchFeedForward, expert_capacity, moe_aux_losses

B, T, D, F, E = 2, 12, 8, 16, 4


def _routing_reference(probs, valid, top_k, capacity):
    """Per token and choice: (expert, combine weight or 0 when dropped), by a plain loop."""
    b, t, e = probs.shape
    weights = np.zeros((b, t, e))
    kept_any = np.zeros((b, t), bool)
    for g in range(b):
        order = np.argsort(-probs[g], axis=-1, kind="stable")[:, :top_k]
        gates = np.take_along_axis(probs[g], order, axis=-1)
        if top_k == 2:
            gates = gates / gates.sum(-1, keepdims=True)
        load = np.zeros(e, int)
        for k in range(top_k):  # all first choices before any second choice
            for s in range(t):
                if not valid[g, s]:
                    continue
                expert = order[s, k]
                if load[expert] < capacity:
                    weights[g, s, expert] += gates[s, k]
                    kept_any[g, s] = True
                load[expert] += 1
    return weights, kept_any


def _dense_experts(params, x):
    """Every expert on every token: ``[B, T, D] -> [B, T, E, D]`` (jnp, differentiable)."""
    p = params["experts"]
    h = jnp.einsum("btd,edf->btef", x, p["intermediate"]["kernel"])
    h = h + p["intermediate"]["bias"][None, None]
    h = jax.nn.gelu(h)
    return jnp.einsum("btef,efd->bted", h, p["output"]["kernel"]) + p["output"]["bias"][None, None]


def _routing(params, x, valid, top_k, capacity_factor):
    """The numpy loop's routing of ``x`` and the aux losses by their formulas."""
    logits = np.asarray(x @ params["router"])
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    capacity = expert_capacity(x.shape[1], E, capacity_factor, top_k)
    weights, kept_any = _routing_reference(probs, valid, top_k, capacity)
    real = valid.astype(np.float32)
    n = real.sum()
    first = np.eye(E)[np.argmax(probs, -1)]
    f = (first * real[..., None]).sum((0, 1)) / n
    p_mean = (probs * real[..., None]).sum((0, 1)) / n
    z = np.log(np.exp(logits).sum(-1))
    aux = {
        "load_balancing_loss": E * np.sum(f * p_mean),
        "router_z_loss": np.sum(z**2 * real) / n,
        "tokens_dropped": np.sum((~kept_any) & valid) / n,
    }
    top = np.argsort(-probs, axis=-1, kind="stable")[..., :top_k]
    selected = np.any(np.arange(E) == top[..., None], axis=-2)
    return weights > 0, selected, aux


def _reference_out(params, x, chosen, selected, top_k):
    """Output for fixed routing choices, the gates differentiable as the router's (top-2:
    normalised over both selected experts, also when one of them dropped the token)."""
    probs = jax.nn.softmax(x @ params["router"], axis=-1)
    if top_k == 2:
        probs = probs / jnp.sum(jnp.where(selected, probs, 0.0), -1, keepdims=True)
    gates = jnp.where(chosen, probs, 0.0)
    return jnp.sum(_dense_experts(params, x) * gates[..., None], axis=2)


@functools.cache
def _setup(top_k):
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    valid = np.ones((B, T), bool)
    valid[1, 9:] = False
    moe = SwitchFeedForward(num_experts=E, d_ff=F, capacity_factor=0.75, top_k=top_k)
    params = moe.init(jax.random.key(0), x)["params"]
    # A sharper router than the init's, so that experts overflow and tokens drop.
    params = {**params, "router": params["router"] * 30.0}
    return moe, params, x, valid


def _apply(moe, params, x, valid):
    out, aux = moe.apply({"params": params}, x, valid, mutable=[MOE_LOSSES])
    return out, moe_aux_losses(aux)


@pytest.mark.parametrize("top_k", [1, 2])
def test_matches_routing_reference_forward_and_backward(top_k):
    moe, params, x, valid = _setup(top_k)
    out, aux = jax.jit(functools.partial(_apply, moe))(params, x, valid)
    chosen, selected, ref_aux = _routing(params, x, valid, top_k, 0.75)
    ref_out = _reference_out(params, x, chosen, selected, top_k)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    for name, value in ref_aux.items():
        np.testing.assert_allclose(aux[name], value, rtol=1e-5, err_msg=name)
    assert np.any((selected & ~chosen)[valid])  # the capacity actually binds
    assert (float(aux["tokens_dropped"]) > 0) == (top_k == 1)
    assert not np.any(out[1, 9:])  # padding is never routed

    probe = jax.random.normal(jax.random.key(2), out.shape)
    loss = lambda p, x: jnp.sum(_apply(moe, p, x, valid)[0] * probe)  # noqa: E731
    ref_loss = lambda p, x: jnp.sum(_reference_out(p, x, chosen, selected, top_k) * probe)  # noqa: E731
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    ref_grads = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(params, x)
    assert float(jnp.abs(grads[0]["router"]).max()) > 0  # the router learns through the gates
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, ref_grads)


def test_hand_values_of_a_uniform_router():
    moe, params, x, _ = _setup(1)
    params = {**params, "router": jnp.zeros_like(params["router"])}
    out, aux = _apply(moe, params, x, None)
    # Uniform probabilities: every token picks expert 0, which takes `capacity` of each row.
    capacity = expert_capacity(T, E, 0.75)
    assert capacity == math.ceil(T * 0.75 / E) == 3
    np.testing.assert_allclose(aux["load_balancing_loss"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(aux["router_z_loss"], math.log(E) ** 2, rtol=1e-6)
    np.testing.assert_allclose(aux["tokens_dropped"], 1 - capacity / T, rtol=1e-6)
    np.testing.assert_allclose(aux["aux_loss"], 1e-2 + 1e-3 * math.log(E) ** 2, rtol=1e-6)
    assert not np.any(out[:, capacity:])  # dropped tokens: zero, so x + MoE(x) = x


def test_bfloat16_keeps_the_router_in_float32():
    moe, params, x, valid = _setup(1)
    out32, aux32 = _apply(moe, params, x, valid)
    out16, aux16 = _apply(moe.clone(dtype=jnp.bfloat16), params, x, valid)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=0.05)
    for name in aux32:  # same float32 routing decisions and losses
        np.testing.assert_array_equal(aux16[name], aux32[name])


def test_expert_parallel_equals_single_device():
    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 host devices)")
    mesh = Mesh(np.asarray(devices[:8]).reshape(2, 4), ("data", "expert"))
    moe, params, x, valid = _setup(2)
    sharded = moe.clone(expert_axis="expert")

    def loss(module, p, x):
        out, aux = _apply(module, p, x, valid)
        return jnp.sum(out**2) + aux["load_balancing_loss"], out

    single = jax.jit(jax.value_and_grad(functools.partial(loss, moe), has_aux=True))(params, x)
    expert_split = lambda a: NamedSharding(mesh, PartitionSpec("expert"))  # noqa: E731
    p_sharded = {
        "router": jax.device_put(params["router"], NamedSharding(mesh, PartitionSpec())),
        "experts": jax.tree.map(lambda a: jax.device_put(a, expert_split(a)), params["experts"]),
    }
    x_sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    with jax.set_mesh(mesh):
        run = jax.jit(jax.value_and_grad(functools.partial(loss, sharded), has_aux=True))
        parallel = run(p_sharded, x_sharded)
        hlo = run.lower(p_sharded, x_sharded).compile().as_text()
    assert "all-to-all" in hlo or "all-gather" in hlo  # tokens really move between devices
    kernel_grad = parallel[1]["experts"]["intermediate"]["kernel"]
    assert kernel_grad.sharding.shard_shape(kernel_grad.shape)[0] == E // 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), parallel, single)


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({}, (2, 4), "x must be"),
        ({"top_k": 3}, (2, 4, 8), "top_k"),
        ({"capacity_factor": 0.0}, (2, 4, 8), "capacity_factor"),
    ],
)
def test_bad_input(kwargs, shape, match):
    moe = SwitchFeedForward(num_experts=E, d_ff=F, **kwargs)
    with pytest.raises(ValueError, match=match):
        moe.init(jax.random.key(0), jnp.ones(shape))
