import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers import MultiHeadAttention

OPTIONS = {"num_hashes": 2, "num_buckets": 4, "chunk_size": 8}


def layers(**options):
    lsh = MultiHeadAttention(
        num_heads=2, attention="lsh", is_causal=True, attention_options=options
    )
    return lsh, MultiHeadAttention(num_heads=2, attention="dense", is_causal=True)


@pytest.mark.slow
def test_one_chunk_lsh_layer_equals_dense_layer_in_training_and_evaluation():
    x = jax.random.normal(jax.random.key(0), (2, 16, 8))
    lsh, dense = layers(**{**OPTIONS, "chunk_size": 16})
    variables = dense.init(jax.random.key(1), x)
    want = dense.apply(variables, x)
    train = lsh.apply(variables, x, deterministic=False, rngs={"attention": jax.random.key(2)})
    np.testing.assert_allclose(train, want, atol=1e-5)
    np.testing.assert_allclose(lsh.apply(variables, x), want, atol=1e-5)


def test_training_draws_new_rotations_and_evaluation_is_fixed():
    x = jax.random.normal(jax.random.key(0), (1, 64, 8))
    lsh, _ = layers(**OPTIONS)
    variables = jax.jit(lsh.init)(jax.random.key(1), x)
    apply = jax.jit(lsh.apply, static_argnames="deterministic")

    def train(seed):
        return apply(variables, x, deterministic=False, rngs={"attention": jax.random.key(seed)})

    np.testing.assert_array_equal(train(3), train(3))
    assert not np.allclose(train(3), train(4))
    evaluation = apply(variables, x, rngs={"attention": jax.random.key(5)})
    np.testing.assert_array_equal(evaluation, apply(variables, x))
    # Evaluation uses the rng given in the options when there is one.
    given, _ = layers(**OPTIONS, rng=jax.random.key(6))
    assert not np.allclose(jax.jit(given.apply)(variables, x), evaluation)


def test_shared_qk_layer_uses_queries_as_keys():
    from effjax.attention import lsh_attention

    x = jax.random.normal(jax.random.key(0), (1, 16, 32))
    options = {"shared_qk": True, "num_hashes": 2, "num_buckets": 4, "chunk_size": 4}
    layer = MultiHeadAttention(num_heads=4, attention="lsh", attention_options=options)
    variables = jax.jit(layer.init)(jax.random.key(1), x)
    params = variables["params"]
    assert "key" not in params

    def proj(p, inp):
        return jnp.einsum("btd,dnh->btnh", inp, p["kernel"]) + p["bias"][None, None]

    q, v = proj(params["query"], x), proj(params["value"], x)
    # The fixed evaluation key of a top-level layer's core (module path "core").
    rng = jax.random.fold_in(jax.random.key(0), zlib.crc32(b"core"))
    o = jax.jit(lambda q, v: lsh_attention(q, None, v, rng=rng, **options))(q, v)
    want = (
        jnp.einsum("btnh,nhd->btd", o, params["out"]["kernel"]) + params["out"]["bias"][None, None]
    )
    np.testing.assert_allclose(jax.jit(layer.apply)(variables, x), want, atol=1e-5)
    with pytest.raises(ValueError, match="shared_qk needs self-attention"):
        jax.eval_shape(layer.clone(num_kv_heads=2).init, jax.random.key(1), x)
