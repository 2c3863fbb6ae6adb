"""Head and neuron pruning: a physically smaller block equals its masked twin."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.compress import (
    head_importance,
    keep_top,
    mask_heads,
    mask_neurons,
    neuron_importance,
    remove_heads,
    remove_neurons,
)
from effjax.layers import MultiHeadAttention


class Block(nn.Module):
    """A post-norm-free transformer block: x + attn(x), then + ff(.)."""

    num_heads: int
    head_dim: int
    ff_width: int

    @nn.compact
    def __call__(self, x):
        x = x + MultiHeadAttention(
            num_heads=self.num_heads, qkv_features=self.num_heads * self.head_dim, name="attn"
        )(x)
        hidden = nn.gelu(nn.Dense(self.ff_width, name="ff_in")(x))
        return x + nn.Dense(x.shape[-1], name="ff_out")(hidden)


D, N, H, F = 16, 4, 4, 32


@pytest.fixture
def block(normal, random_init):
    x = normal((2, 7, D))
    model = Block(N, H, F)
    return model, random_init(model, x, seed=1), x


def _loss(model, params, x):
    return jnp.mean(model.apply({"params": params}, x) ** 2)


@pytest.mark.parametrize("criterion", ["magnitude", "gradient"])
def test_removed_heads_and_neurons_give_the_masked_models_outputs(block, criterion):
    model, params, x = block
    grads = (
        jax.jit(jax.grad(lambda p: _loss(model, p, x)))(params) if criterion == "gradient" else None
    )
    heads = keep_top(head_importance(params["attn"], grads and grads["attn"]), 2)
    neurons = keep_top(
        neuron_importance(params["ff_in"], params["ff_out"], grads and grads["ff_out"]), 20
    )

    masked = dict(params, attn=mask_heads(params["attn"], heads))
    masked["ff_in"], masked["ff_out"] = mask_neurons(params["ff_in"], params["ff_out"], neurons)
    small = dict(params, attn=remove_heads(params["attn"], heads))
    small["ff_in"], small["ff_out"] = remove_neurons(params["ff_in"], params["ff_out"], neurons)

    # flax checks at apply that every param has the shape the smaller config declares.
    small_model = Block(num_heads=2, head_dim=H, ff_width=20)
    apply = jax.jit(model.apply)
    expected = apply({"params": masked}, x)
    got = jax.jit(small_model.apply)({"params": small}, x)
    assert small["attn"]["query"]["kernel"].shape == (D, 2, H)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # and pruning changed the model: the masked twin differs from the full one.
    assert not np.allclose(expected, apply({"params": params}, x), atol=1e-3)


def test_gradient_head_importance_is_the_derivative_of_a_head_gate(block):
    # Michel et al. (2019): I_h = |dL/d xi_h| for out = sum_h xi_h * head_h @ W_out[h].
    model, params, x = block

    def gated_loss(gates):
        attn = dict(params["attn"])
        attn["out"] = dict(attn["out"], kernel=attn["out"]["kernel"] * gates[:, None, None])
        return _loss(model, dict(params, attn=attn), x)

    expected = jnp.abs(jax.jit(jax.grad(gated_loss))(jnp.ones(N)))
    grads = jax.jit(jax.grad(lambda p: _loss(model, p, x)))(params)
    np.testing.assert_allclose(head_importance(params["attn"], grads["attn"]), expected, rtol=1e-4)


def test_magnitude_head_importance_is_the_l1_norm_of_the_heads_weights(block):
    _, params, _ = block
    attn = params["attn"]
    expected = (
        sum(
            np.abs(np.asarray(attn[n]["kernel"])[:, 1]).sum() + np.abs(attn[n]["bias"][1]).sum()
            for n in ("query", "key", "value")
        )
        + np.abs(np.asarray(attn["out"]["kernel"])[1]).sum()
    )
    np.testing.assert_allclose(head_importance(attn)[1], expected, rtol=1e-5)


def test_keep_top_and_bad_input():
    assert keep_top(jnp.array([0.5, 2.0, 0.5, 1.0]), 2).tolist() == [False, True, False, True]
    assert keep_top(jnp.array([1.0, 1.0, 1.0]), 2).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="num_keep"):
        keep_top(jnp.ones(4), 0)
    gqa = {
        "query": {"kernel": jnp.ones((D, 4, H))},
        "key": {"kernel": jnp.ones((D, 2, H))},
        "value": {"kernel": jnp.ones((D, 2, H))},
        "out": {"kernel": jnp.ones((4, H, D))},
    }
    with pytest.raises(ValueError, match="key kernel"):
        head_importance(gqa)
