import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers import FeedForward


@pytest.mark.parametrize("chunk_size", [4, 7, 64])
def test_chunked_equals_unchunked(chunk_size):
    x = jax.random.normal(jax.random.key(0), (2, 30, 16))
    whole = FeedForward(d_ff=48)
    params = whole.init(jax.random.key(1), x)
    chunked = FeedForward(d_ff=48, chunk_size=chunk_size)
    c = jax.random.normal(jax.random.key(2), x.shape)

    def loss(module):
        return lambda p, x: jnp.sum(module.apply(p, x) * c)

    np.testing.assert_allclose(
        jax.jit(chunked.apply)(params, x), jax.jit(whole.apply)(params, x), atol=1e-5
    )
    got = jax.jit(jax.grad(loss(chunked), argnums=(0, 1)))(params, x)
    want = jax.jit(jax.grad(loss(whole), argnums=(0, 1)))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_matches_the_formula():
    x = jax.random.normal(jax.random.key(0), (1, 5, 8))
    ff = FeedForward(d_ff=12, chunk_size=2)
    params = ff.init(jax.random.key(1), x)["params"]
    w_in, w_out = params["intermediate"], params["output"]
    want = jax.nn.gelu(x @ w_in["kernel"] + w_in["bias"][None, None]) @ w_out["kernel"]
    np.testing.assert_allclose(
        ff.apply({"params": params}, x), want + w_out["bias"][None, None], atol=1e-5
    )


def test_activation_by_name_matches_hugging_face_gelu():
    """``"gelu"`` is the exact erf GELU (transformers' ``hidden_act="gelu"``), not flax's
    tanh approximation, and the parameters are those of two ``nn.Dense`` layers."""
    x = jax.random.normal(jax.random.key(0), (1, 5, 8))
    ff = FeedForward(d_ff=12, activation="gelu")
    params = ff.init(jax.random.key(1), x)["params"]
    h = nn.Dense(12).apply({"params": params["intermediate"]}, x)
    want = nn.Dense(8).apply({"params": params["output"]}, jax.nn.gelu(h, approximate=False))
    np.testing.assert_allclose(ff.apply({"params": params}, x), want, atol=1e-5)


def test_rejects_unknown_activation_name():
    x = jnp.zeros((1, 4, 4))
    with pytest.raises(ValueError, match="hidden_act='nope'"):
        FeedForward(d_ff=8, activation="nope").init(jax.random.key(0), x)


def gradient_temp_bytes(chunk_size):
    x = jnp.zeros((1, 2048, 16))
    ff = FeedForward(d_ff=512, chunk_size=chunk_size)
    params = jax.eval_shape(lambda: ff.init(jax.random.key(1), x))
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(ff.apply(p, x) ** 2), argnums=(0, 1)))
    return grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes


def test_chunking_bounds_hidden_activation_memory():
    """XLA's compiled temp memory of the gradient: the [T, d_ff] hidden activation (4 MiB here)
    is stored unchunked; chunks of 64 positions hold 128 KiB at a time (the rest of the chunked
    figure is a few [T, D] buffers)."""
    hidden_bytes = 2048 * 512 * 4
    assert gradient_temp_bytes(None) >= hidden_bytes
    assert gradient_temp_bytes(64) < hidden_bytes / 4


def test_rejects_bad_chunk_size():
    x = jnp.zeros((1, 8, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        FeedForward(d_ff=8, chunk_size=0).init(jax.random.key(0), x)
