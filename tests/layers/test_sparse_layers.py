"""The sparse variants by name in MultiHeadAttention, the local decoding cache, BigBird's rng."""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.attention import (
    block_sparse_attention,
    block_sparse_mask,
    dot_product_attention,
    global_local_mask,
    local_mask,
)
from effjax.layers import MultiHeadAttention
from effjax.layers.cores import evaluation_key
from effjax.models import Encoder, EncoderConfig

B, T, D = 2, 13, 16


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (B, T, D))


def dense_with(mask):
    return functools.partial(dot_product_attention, mask=mask)


def assert_layers_agree(x, sparse: MultiHeadAttention, dense: MultiHeadAttention, **call):
    variables = jax.jit(sparse.init)(jax.random.key(1), x)
    np.testing.assert_allclose(
        jax.jit(sparse.apply)(variables, x, **call),
        jax.jit(dense.apply)(variables, x, **call),
        atol=1e-5,
    )


@pytest.mark.parametrize("is_causal", [pytest.param(False, marks=pytest.mark.slow), True])
def test_local_by_name_equals_dense_with_its_mask(x, is_causal):
    options = {"window_size": (3, 2), "dilation": 2, "block_size": 4}
    mask = local_mask(T, T, (3, 2), dilation=2)[None, None]
    common = {"num_heads": 4, "num_kv_heads": 2, "is_causal": is_causal}
    padding = jnp.arange(T)[None] < jnp.array([[T], [9]])
    assert_layers_agree(
        x,
        MultiHeadAttention(attention="local", attention_options=options, **common),
        MultiHeadAttention(attention=dense_with(mask), **common),
        padding_mask=padding,
    )


def test_global_local_by_name_equals_dense_with_its_mask(x):
    g = jnp.zeros((B, T), bool).at[:, 0].set(True).at[1, 7].set(True)
    sparse = MultiHeadAttention(
        num_heads=4, attention="global_local", attention_options={"window_size": 2}
    )
    dense = MultiHeadAttention(num_heads=4, attention=dense_with(global_local_mask(g, 2)))
    variables = jax.jit(sparse.init)(jax.random.key(1), x)
    # The global tokens are a call argument of the layer (per-batch data, not an option).
    got = jax.jit(lambda v: sparse.apply(v, x, global_mask=g))(variables)
    np.testing.assert_allclose(got, jax.jit(dense.apply)(variables, x), atol=1e-5)


def test_block_sparse_by_name_uses_a_fixed_key_when_deterministic(x):
    options = {"block_size": 2, "num_random_blocks": 1, "num_global_blocks": 1}
    layer = MultiHeadAttention(num_heads=4, attention="block_sparse", attention_options=options)
    variables = jax.jit(layer.init)(jax.random.key(1), x)
    # The fixed evaluation key of a top-level layer's core (module path "core").
    key = jax.random.fold_in(jax.random.key(0), zlib.crc32(b"core"))
    mask = block_sparse_mask(T, rng=key, **options)[None, None]
    dense = MultiHeadAttention(num_heads=4, attention=dense_with(mask))
    np.testing.assert_allclose(
        jax.jit(layer.apply)(variables, x), jax.jit(dense.apply)(variables, x), atol=1e-5
    )


def test_block_sparse_draws_from_the_attention_stream_when_training(x):
    options = {"block_size": 2, "num_random_blocks": 1, "num_global_blocks": 1}
    layer = MultiHeadAttention(num_heads=4, attention="block_sparse", attention_options=options)
    variables = jax.jit(layer.init)(jax.random.key(1), x)
    apply = jax.jit(layer.apply, static_argnames="deterministic")

    def train(key):
        return apply(variables, x, deterministic=False, rngs={"attention": key})

    a, b = jax.random.key(5), jax.random.key(6)
    np.testing.assert_array_equal(train(a), train(a))
    assert not np.allclose(train(a), train(b))
    assert not np.allclose(train(a), apply(variables, x, deterministic=True))


def test_evaluation_key_depends_on_the_layer_path():
    class Path:
        def __init__(self, path):
            self.path = path

    assert (evaluation_key(Path(("a",))) != evaluation_key(Path(("b",)))).any()


def test_block_sparse_function_and_layer_options_agree(x):
    # An explicit rng in attention_options wins over the hook's.
    key = jax.random.key(9)
    options = {"block_size": 4, "num_random_blocks": 1, "rng": key}
    by_name = MultiHeadAttention(num_heads=4, attention="block_sparse", attention_options=options)
    by_fn = MultiHeadAttention(
        num_heads=4, attention=functools.partial(block_sparse_attention, **options)
    )
    variables = jax.jit(by_name.init)(jax.random.key(1), x)
    np.testing.assert_array_equal(
        jax.jit(by_name.apply)(variables, x), jax.jit(by_fn.apply)(variables, x)
    )


@pytest.mark.parametrize(
    ("window", "dilation", "step"),
    [
        pytest.param((3, 1), 1, 1, marks=pytest.mark.slow),
        pytest.param(2, 2, 1, marks=pytest.mark.slow),
        pytest.param(4, 1, 3, marks=pytest.mark.slow),
        ((3, 1), 2, 3),  # (left, right) window, dilated, three tokens per step: the fast case
    ],
)
def test_local_decode_equals_full_causal_pass(window, dilation, step):
    length = 12
    x = jax.random.normal(jax.random.key(0), (B, length, D))
    layer = MultiHeadAttention(
        num_heads=4,
        num_kv_heads=2,
        is_causal=True,
        attention="local",
        attention_options={"window_size": window, "dilation": dilation},
    )
    variables = jax.jit(layer.init)(jax.random.key(1), x)
    full = jax.jit(layer.apply)(variables, x)

    decoder = layer.clone(decode=True)
    cache = jax.jit(decoder.init)(jax.random.key(1), x)["cache"]
    # The cache holds the window, not the sequence.
    left = window if isinstance(window, int) else window[0]
    assert cache["core"]["cached_key"].shape == (B, left * dilation, 2, D // 4)
    run = jax.jit(
        lambda cache, tok: decoder.apply({**variables, "cache": cache}, tok, mutable=["cache"])
    )
    outs = []
    for t in range(0, length, step):
        out, mutated = run(cache, x[:, t : t + step])
        cache = mutated["cache"]
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def test_pallas_block_sparse_layer_keeps_one_pattern_per_layer_in_training(x):
    # Splash masks are static: on "pallas" the layer's evaluation key draws the pattern,
    # in training too, so it equals the XLA layer in evaluation (and ignores the stream).
    options = {"block_size": 2, "num_random_blocks": 1, "num_global_blocks": 1}
    xla = MultiHeadAttention(num_heads=4, attention="block_sparse", attention_options=options)
    pallas = xla.clone(attention_options={**options, "implementation": "pallas"})
    variables = jax.jit(xla.init)(jax.random.key(1), x)
    train = jax.jit(functools.partial(pallas.apply, deterministic=False))
    np.testing.assert_allclose(
        train(variables, x, rngs={"attention": jax.random.key(5)}),
        jax.jit(xla.apply)(variables, x),
        atol=1e-5,
    )


def test_a_config_chooses_the_implementation():
    config = EncoderConfig(
        vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
        attention="local", attention_options={"window_size": 3},
    )  # fmt: skip
    ids = jax.random.randint(jax.random.key(0), (2, 20), 3, 50)
    model = Encoder(config)
    variables = model.init(jax.random.key(1), ids)
    on_pallas = Encoder(
        config.replace(attention_options={"window_size": 3, "implementation": "pallas"})
    )
    np.testing.assert_allclose(
        jax.jit(on_pallas.apply)(variables, ids), jax.jit(model.apply)(variables, ids), atol=1e-5
    )
    with pytest.raises(ValueError, match=r"LocalCore: implementation must be one of \(None, "):
        MultiHeadAttention(
            num_heads=2, attention="local", attention_options={"implementation": "cudnn"}
        )
