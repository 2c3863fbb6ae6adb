"""as_flax_attention_fn against flax.linen.dot_product_attention and flax's own layer."""

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.attention import local_attention
from effjax.layers import MultiHeadAttention, as_flax_attention_fn

dense_fn = as_flax_attention_fn("dense")


def _qkv(seed, batch_shape, t, s, n=2, h=3, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (*batch_shape, t, n, h), dtype)
    k = jax.random.normal(keys[1], (*batch_shape, s, n, h), dtype)
    v = jax.random.normal(keys[2], (*batch_shape, s, n, h), dtype)
    return q, k, v


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(data=st.data())
def test_dense_adapter_matches_flax_dot_product_attention(data):
    draw = data.draw
    batch_shape = draw(st.sampled_from([(), (2,), (2, 1), (1, 2)]), "batch dims")
    t, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    full = (*batch_shape, 2, t, s)
    rng = np.random.default_rng(seed)

    def logit_shape(rank):
        return tuple(draw(st.sampled_from([1, f])) for f in full[len(full) - rank :])

    mask_rank = draw(st.integers(0, len(full)), "mask rank")
    bias_rank = draw(st.integers(0, len(full)), "bias rank")
    mask = bias = None
    if mask_rank:
        # flax builds float 0/1 masks; key 0 stays visible (flax averages rows with no key).
        mask = (rng.random(logit_shape(mask_rank)) < 0.6).astype(np.float32)
        mask[..., 0] = 1.0
    if bias_rank:
        bias = rng.normal(size=logit_shape(bias_rank)).astype(np.float32)
    q, k, v = _qkv(seed, batch_shape, t, s)
    cotangent = jax.random.normal(jax.random.key(seed + 1), q.shape)
    got, want = _outputs_and_grads(q, k, v, bias, mask, cotangent)
    np.testing.assert_allclose(got[0], want[0], atol=2e-6)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)


@jax.jit
def _outputs_and_grads(q, k, v, bias, mask, cotangent):
    """(output, grads wrt q, k, v) of the adapter and of flax: one compiled program per shape."""

    def run(fn):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v, bias, mask) * cotangent)  # noqa: E731
        return fn(q, k, v, bias, mask), jax.grad(loss, (0, 1, 2))(q, k, v)

    got = run(dense_fn)
    # flax relies on numpy rank promotion for masks of lower rank; effjax does not.
    with jax.numpy_rank_promotion("allow"):
        return got, run(nn.dot_product_attention)


@pytest.mark.parametrize("broadcast", [True, False])
def test_weight_dropout_draws_flax_bits(broadcast):
    q, k, v = _qkv(1, (2, 3), 4, 5)
    kwargs = dict(
        dropout_rng=jax.random.key(7),
        dropout_rate=0.4,
        broadcast_dropout=broadcast,
        deterministic=False,
    )
    got = dense_fn(q, k, v, **kwargs)
    np.testing.assert_allclose(got, nn.dot_product_attention(q, k, v, **kwargs), atol=2e-6)
    assert np.abs(got - dense_fn(q, k, v)).max() > 0.1  # dropout did something
    np.testing.assert_array_equal(
        dense_fn(q, k, v, **{**kwargs, "deterministic": True}), dense_fn(q, k, v)
    )
    with pytest.raises(ValueError, match="needs dropout_rng"):
        dense_fn(q, k, v, dropout_rate=0.4, deterministic=False)


def _layer_pair(**kwargs):
    ours = nn.MultiHeadDotProductAttention(attention_fn=dense_fn, **kwargs)
    return ours, nn.MultiHeadDotProductAttention(**kwargs)


@pytest.mark.parametrize(
    ("force_fp32", "weights_dtype"), [(True, jnp.float32), (False, jnp.bfloat16)]
)
def test_sow_weights_in_flax_layer(force_fp32, weights_dtype):
    x = jax.random.normal(jax.random.key(2), (2, 3, 5, 8))  # two batch dims
    ours, theirs = _layer_pair(
        num_heads=2, dtype=jnp.bfloat16, force_fp32_for_softmax=force_fp32, deterministic=True
    )
    variables = theirs.init(jax.random.key(3), x)
    mask = nn.make_causal_mask(jnp.ones((2, 3, 5)))
    got, got_vars = ours.apply(variables, x, mask=mask, sow_weights=True, mutable="intermediates")
    want, want_vars = theirs.apply(
        variables, x, mask=mask, sow_weights=True, mutable="intermediates"
    )
    (w_got,), (w_want,) = (v["intermediates"]["attention_weights"] for v in (got_vars, want_vars))
    assert w_got.dtype == w_want.dtype == weights_dtype
    assert w_got.shape == (2, 3, 2, 5, 5)
    tol = 1e-2  # flax's logits are bfloat16 (dtype), effjax's float32
    np.testing.assert_allclose(
        np.asarray(w_got, np.float32), np.asarray(w_want, np.float32), atol=tol
    )
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=5e-2)
    _, no_sow = ours.apply(variables, x, mask=mask, mutable="intermediates")
    assert "intermediates" not in no_sow


def test_flax_layer_decoding_with_effjax_equals_flax():
    x = jax.random.normal(jax.random.key(4), (2, 6, 8))
    ours, theirs = _layer_pair(num_heads=2, decode=True, deterministic=True)
    variables = theirs.init(jax.random.key(5), x)
    outs = []
    for layer in (ours, theirs):
        cache = variables["cache"]
        steps = []
        for i in range(3):
            y, updated = layer.apply(
                {**variables, "cache": cache}, x[:, i : i + 1], mutable="cache"
            )
            cache = updated["cache"]
            steps.append(y)
        outs.append(jnp.concatenate(steps, axis=1))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_precision_reaches_both_products():
    q, k, v = _qkv(6, (1,), 3, 3)
    jaxpr = jax.make_jaxpr(lambda q, k, v: dense_fn(q, k, v, precision=jax.lax.Precision.HIGHEST))(
        q, k, v
    )
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 2
    assert all("HIGHEST" in str(e.params["precision"]) for e in dots)


def test_dtype_and_complex_inputs_follow_flax():
    q, k, v = _qkv(7, (2,), 4, 4)
    got = dense_fn(q, k, v, dtype=jnp.bfloat16)
    assert got.dtype == nn.dot_product_attention(q, k, v, dtype=jnp.bfloat16).dtype
    qc, kc, vc = (x + 0.5j * jnp.flip(x, -1) for x in (q, k, v))
    got = dense_fn(qc, kc, vc)
    assert got.dtype == jnp.complex64
    np.testing.assert_allclose(got, nn.dot_product_attention(qc, kc, vc), atol=1e-5)


def test_einsum_overrides_are_refused_not_ignored():
    q, k, v = _qkv(8, (), 3, 3)
    with pytest.raises(ValueError, match="qk_attn_weights_einsum"):
        dense_fn(q, k, v, qk_attn_weights_einsum=jnp.einsum, attn_weights_value_einsum=jnp.einsum)
    with pytest.raises(ValueError, match="einsum_dot_general"):
        dense_fn(q, k, v, einsum_dot_general=jax.lax.dot_general)


def test_sparse_variant_reads_flax_padding_mask():
    x = jax.random.normal(jax.random.key(9), (2, 12, 8))
    key_mask = jnp.arange(12)[None, :] < jnp.array([[12], [7]])
    seen = {}

    def local_spy(q, k, v, **kw):
        seen.update(kw)
        return local_attention(q, k, v, **kw)

    layer = nn.MultiHeadDotProductAttention(
        num_heads=2, attention_fn=as_flax_attention_fn(local_spy, window_size=2)
    )
    variables = layer.init(jax.random.key(10), x)
    got = layer.apply(variables, x, mask=key_mask[:, None, None, :])  # flax's [B, 1, 1, S]
    np.testing.assert_array_equal(seen["padding_mask"], key_mask)
    # The content of padded positions changes nothing in the real rows.
    x2 = x.at[1, 7:].set(100.0)
    again = layer.apply(variables, x2, mask=key_mask[:, None, None, :])
    np.testing.assert_allclose(again[1, :7], got[1, :7], atol=1e-5)
    assert np.abs(layer.apply(variables, x2)[1, :7] - got[1, :7]).max() > 1e-2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": jnp.ones((1, 1, 4, 4))}, "takes no dense mask"),
        ({"bias": jnp.ones((1, 1, 4, 4))}, "cannot take bias"),
        ({"module": object()}, "sow_weights"),
        ({"precision": jax.lax.Precision.HIGHEST}, "precision"),
        (
            {"dropout_rate": 0.1, "deterministic": False, "dropout_rng": jax.random.key(0)},
            "attention-weight dropout",
        ),
    ],
)
def test_sparse_variants_refuse_what_they_cannot_honour(kwargs, message):
    fn = as_flax_attention_fn("local", window_size=1)
    q = jnp.ones((1, 4, 2, 8))
    with pytest.raises(ValueError, match=message):
        fn(q, q, q, **kwargs)


def test_effjax_layer_parameters_work_in_flax_layer():
    x = jax.random.normal(jax.random.key(11), (2, 6, 8))
    ours = MultiHeadAttention(num_heads=2, is_causal=True)
    theirs = nn.MultiHeadDotProductAttention(num_heads=2, attention_fn=dense_fn)
    variables = ours.init(jax.random.key(12), x)
    assert jax.tree.structure(variables) == jax.tree.structure(theirs.init(jax.random.key(12), x))
    np.testing.assert_allclose(
        theirs.apply(variables, x, mask=nn.make_causal_mask(jnp.ones((2, 6)))),
        ours.apply(variables, x),
        atol=1e-5,
    )
