import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers import ReversibleStack


class Branch(nn.Module):
    """LayerNorm -> Dense -> gelu -> dropout -> Dense: a residual branch with randomness."""

    hidden: int = 32
    dropout_rate: float = 0.3

    @nn.compact
    def __call__(self, x, deterministic=True):
        h = nn.gelu(nn.Dense(self.hidden)(nn.LayerNorm()(x)))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return nn.Dense(x.shape[-1])(h)


def stack(num_layers, reversible=True, hidden=32):
    def branch():
        return Branch(hidden=hidden)

    return ReversibleStack(f=branch, g=branch, num_layers=num_layers, reversible=reversible)


def loss_fn(module, deterministic=False):
    def loss(params, x, rng):
        y1, y2 = module.apply(
            {"params": params}, x, x, deterministic=deterministic, rngs={"dropout": rng}
        )
        return jnp.sum(jnp.sin(y1) * y2)

    return loss


def hand_written_stack(params, x, num_layers):
    """The residual recurrence written out, without dropout."""
    branch = Branch()
    x1 = x2 = x
    for i in range(num_layers):
        layer = jax.tree.map(lambda p, i=i: p[i], params["layers"])
        x1 = x1 + branch.apply({"params": layer["f"]}, x2)
        x2 = x2 + branch.apply({"params": layer["g"]}, x1)
    return x1, x2


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (2, 16, 8))


def test_forward_is_the_residual_recurrence(x):
    module = stack(3)
    params = module.init(jax.random.key(1), x, x)["params"]
    got = jax.jit(module.apply)({"params": params}, x, x)
    want = jax.jit(hand_written_stack, static_argnums=2)(params, x, 3)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_gradients_equal_the_ordinary_stack(x, deterministic):
    params = stack(3).init(jax.random.key(1), x, x)["params"]
    args = (params, x, jax.random.key(3))
    got = jax.jit(jax.grad(loss_fn(stack(3), deterministic), argnums=(0, 1)))(*args)
    want = jax.jit(jax.grad(loss_fn(stack(3, False), deterministic), argnums=(0, 1)))(*args)
    np.testing.assert_allclose(
        loss_fn(stack(3), deterministic)(*args),
        loss_fn(stack(3, False), deterministic)(*args),
        rtol=1e-6,
    )
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


def test_dropout_is_active_and_replayed(x):
    """With dropout on, a new key changes the output; the same key gives the same output."""
    module = stack(2)
    params = module.init(jax.random.key(1), x, x)["params"]
    loss = jax.jit(loss_fn(module))
    assert loss(params, x, jax.random.key(3)) == loss(params, x, jax.random.key(3))
    assert loss(params, x, jax.random.key(3)) != loss(params, x, jax.random.key(4))


def training_temp_bytes(num_layers, reversible):
    x = jnp.zeros((2, 64, 32))
    module = stack(num_layers, reversible, hidden=128)
    params = jax.eval_shape(lambda: module.init(jax.random.key(1), x, x)["params"])
    grad = jax.jit(jax.grad(loss_fn(module), argnums=(0, 1)))
    compiled = grad.lower(params, x, jax.random.key(3)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_training_memory_does_not_grow_with_depth():
    """XLA's compiled temp memory of the gradient (an exact compiler figure): 2 vs 12 layers."""
    reversible = training_temp_bytes(12, True) / training_temp_bytes(2, True)
    ordinary = training_temp_bytes(12, False) / training_temp_bytes(2, False)
    assert reversible <= 1.5, reversible
    assert ordinary >= 4.0, ordinary


def test_rejects_mismatched_halves(x):
    with pytest.raises(ValueError, match="x1 and x2"):
        stack(2).init(jax.random.key(0), x, x[:, :8])
