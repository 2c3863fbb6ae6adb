import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import effjax.attention as ea
from effjax.attention import dot_product_attention
from effjax.layers import MultiHeadAttention

B, T, D = 2, 12, 32


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (B, T, D))


def manual_forward(params, x, num_heads, num_kv_heads, **attention_kwargs):
    def proj(p, inp):
        return jnp.einsum("btd,dnh->btnh", inp, p["kernel"]) + p["bias"][None, None]

    q = proj(params["query"], x)
    k = proj(params["key"], x)
    v = proj(params["value"], x)
    assert q.shape[2] == num_heads and k.shape[2] == num_kv_heads
    o = dot_product_attention(q, k, v, **attention_kwargs)
    return (
        jnp.einsum("btnh,nhd->btd", o, params["out"]["kernel"]) + params["out"]["bias"][None, None]
    )


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_layer_equals_hand_projection(x, num_kv_heads):
    layer = MultiHeadAttention(num_heads=4, num_kv_heads=num_kv_heads, is_causal=True)
    variables = layer.init(jax.random.key(1), x)
    pad = jnp.arange(T)[None, :] < jnp.array([[T], [7]])
    got = layer.apply(variables, x, padding_mask=pad)
    want = manual_forward(variables["params"], x, 4, num_kv_heads, is_causal=True, padding_mask=pad)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_padded_inputs_do_not_change_real_outputs(x):
    layer = MultiHeadAttention(num_heads=4)
    variables = layer.init(jax.random.key(1), x)
    pad = jnp.arange(T)[None, :] < 8
    pad = jnp.broadcast_to(pad, (B, T))
    x2 = x.at[:, 8:].set(100.0)
    out1 = layer.apply(variables, x, padding_mask=pad)
    out2 = layer.apply(variables, x2, padding_mask=pad)
    np.testing.assert_allclose(out1[:, :8], out2[:, :8], atol=1e-5)


def test_variant_by_name_and_function_agree(x):
    by_name = MultiHeadAttention(num_heads=4, attention="dense")
    by_fn = MultiHeadAttention(num_heads=4, attention=dot_product_attention)
    variables = by_name.init(jax.random.key(1), x)
    np.testing.assert_array_equal(by_name.apply(variables, x), by_fn.apply(variables, x))


def test_nnx_bridge_gives_identical_outputs(x):
    linen_layer = MultiHeadAttention(num_heads=4, num_kv_heads=2, is_causal=True)
    bridged = nnx.bridge.ToNNX(linen_layer, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(bridged, x)
    params = nnx.to_pure_dict(nnx.state(bridged, nnx.Param))
    np.testing.assert_array_equal(bridged(x), linen_layer.apply({"params": params}, x))


def test_decode_token_by_token_equals_full_causal_pass(x):
    layer = MultiHeadAttention(num_heads=4, num_kv_heads=2, is_causal=True)
    variables = layer.init(jax.random.key(1), x)
    full = layer.apply(variables, x)

    decoder = layer.clone(decode=True)
    cache = decoder.init(jax.random.key(1), x)["cache"]
    step = jax.jit(
        lambda cache, tok: decoder.apply({**variables, "cache": cache}, tok, mutable=["cache"])
    )
    outs = []
    for t in range(T):
        out, mutated = step(cache, x[:, t : t + 1])
        cache = mutated["cache"]
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def test_decode_needs_causal_and_a_cache():
    x = jnp.ones((1, 4, 16))
    with pytest.raises(ValueError, match="requires is_causal=True"):
        MultiHeadAttention(num_heads=2, decode=True).init(jax.random.key(0), x)
    # An unregistered function is wrapped generically: it has no cache.
    no_cache = MultiHeadAttention(
        num_heads=2, decode=True, is_causal=True, attention=lambda q, k, v, **kw: q
    )
    with pytest.raises(ValueError, match="has no decoding cache"):
        no_cache.init(jax.random.key(0), x)


def test_dropout_only_when_not_deterministic(x):
    layer = MultiHeadAttention(num_heads=4, dropout_rate=0.5)
    variables = layer.init(jax.random.key(1), x)
    plain = MultiHeadAttention(num_heads=4).apply(variables, x)
    np.testing.assert_array_equal(layer.apply(variables, x, deterministic=True), plain)
    dropped = layer.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(dropped, plain)


def test_bad_head_counts_raise():
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        MultiHeadAttention(num_heads=4, num_kv_heads=3).init(jax.random.key(0), jnp.ones((1, 2, 8)))
    with pytest.raises(ValueError, match="qkv_features=10 must be divisible by num_heads=4"):
        MultiHeadAttention(num_heads=4, qkv_features=10).init(
            jax.random.key(0), jnp.ones((1, 2, 8))
        )


def _gaussian_core(q, k, v, params, pad):
    return ea.gaussian_attention(q, k, v, widths=(1.0, 2.0, 1.0, 0.5), padding_mask=pad)


def _random_synthesizer_core(q, k, v, params, pad):
    logits = ea.random_synthesizer_logits(params["core"]["table"], q_len=T, kv_len=T)
    return ea.synthesizer_attention(q, k, v, synthetic_logits=logits, padding_mask=pad)


@pytest.mark.parametrize(
    ("attention", "options", "reference"),
    [
        ("gaussian", {"widths": [1.0, 2.0, 1.0, 0.5]}, _gaussian_core),
        ("synthesizer", {"kind": "random"}, _random_synthesizer_core),
        ("synthesizer", {"kind": "random", "mixture": True}, None),
    ],
)
def test_cores_that_ignore_queries_and_keys_get_no_projections(x, attention, options, reference):
    layer = MultiHeadAttention(num_heads=4, num_kv_heads=2, attention=attention,
                               attention_options=options)  # fmt: skip
    params = layer.init(jax.random.key(1), x)["params"]
    assert {"value", "out"} <= set(params)
    assert ({"query", "key"} & set(params)) == ({"query", "key"} if reference is None else set())
    if reference is None:
        return
    # The output is the core on the value projection alone, whatever the queries/keys are.
    pad = jnp.arange(T)[None, :] < jnp.array([[T], [7]])
    value = (
        jnp.einsum("btd,dkh->btkh", x, params["value"]["kernel"])
        + params["value"]["bias"][None, None]
    )
    q = jax.random.normal(jax.random.key(2), (B, T, 4, 8))
    out = reference(q, q[:, :, :2], value, params, pad)
    want = (
        jnp.einsum("btnh,nhd->btd", out, params["out"]["kernel"])
        + params["out"]["bias"][None, None]
    )
    got = layer.apply({"params": params}, x, padding_mask=pad)
    np.testing.assert_allclose(got, want, atol=1e-5)
