import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import testing
from effjax.attention import dot_product_attention, global_local_attention, global_local_mask

# One compilation per case instead of one per operation: keeps the tests fast.
jit_global_local = jax.jit(
    global_local_attention,
    static_argnames=(
        "window_size",
        "is_causal",
        "dilation",
        "scale",
        "block_size",
        "max_global_tokens",
    ),
)

SLOW = pytest.mark.slow  # the other cases run with the slow tests

CASES = [  # (K, window, dilation, block_size, causal) with T = 13, N = 4
    pytest.param(2, (2, 3), 1, 4, False, marks=SLOW),
    pytest.param(2, (2, 3), 1, 4, True, marks=SLOW),
    (1, (2, 1), 3, 4, True),  # dilated, causal, MQA: the fast case
    pytest.param(2, 100, 1, None, False, marks=SLOW),
    pytest.param(2, (0, 0), 2, None, False, marks=SLOW),
]


def random_globals(t: int) -> jax.Array:
    return jax.random.bernoulli(jax.random.key(5), 0.2, (2, t)).at[:, 0].set(True)


@pytest.mark.parametrize(("k", "window", "dilation", "block", "is_causal"), CASES)
def test_equals_dense_with_longformer_mask(rng, k, window, dilation, block, is_causal):
    t = 13
    q, kk, v = testing.random_qkv(rng, batch=2, q_len=t, num_heads=4, num_kv_heads=k)
    padding = testing.random_padding_mask(jax.random.key(3), 2, t)
    g = random_globals(t)
    testing.check_against_reference(
        jit_global_local,
        q,
        kk,
        v,
        mask=global_local_mask(g, window, dilation=dilation, is_causal=is_causal),
        padding_mask=padding,
        is_causal=is_causal,
        window_size=window,
        global_mask=g,
        max_global_tokens=int(g.sum(axis=1).max()),
        dilation=dilation,
        block_size=block,
    )


def test_mask_by_hand():
    g = jnp.array([[False, False, True, False, False]])
    np.testing.assert_array_equal(
        global_local_mask(g, (1, 0))[0, 0].astype(int),
        [[1, 0, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]],
    )


def test_traced_global_mask_under_jit_with_a_static_bound(rng):
    q, k, v = testing.random_qkv(rng, q_len=13, num_kv_heads=2)
    g = random_globals(13)
    fn = jax.jit(
        lambda q, k, v, g: global_local_attention(
            q, k, v, window_size=2, global_mask=g, max_global_tokens=8
        )
    )
    want = dot_product_attention(q, k, v, mask=global_local_mask(g, 2))
    np.testing.assert_allclose(fn(q, k, v, g), want, atol=1e-5)
    # A NumPy mask closed over by a jitted function stays concrete: M is counted from it.
    g_numpy = np.asarray(g)
    closed = jax.jit(
        lambda q, k, v: global_local_attention(q, k, v, window_size=2, global_mask=g_numpy)
    )
    np.testing.assert_allclose(closed(q, k, v), want, atol=1e-5)


@pytest.mark.slow
def test_no_global_token_is_local_attention(rng):
    q, k, v = testing.random_qkv(rng, q_len=12, num_heads=2)
    g = jnp.zeros((2, 12), bool)
    want = dot_product_attention(q, k, v, mask=global_local_mask(g, 2))
    np.testing.assert_allclose(
        global_local_attention(q, k, v, window_size=2, global_mask=g), want, atol=1e-5
    )


def test_bfloat16_inputs(rng):
    q, k, v = testing.random_qkv(rng, q_len=13, num_kv_heads=2, dtype=jnp.bfloat16)
    g = random_globals(13)
    out = jit_global_local(q, k, v, window_size=3, global_mask=g, max_global_tokens=13)
    assert out.dtype == jnp.bfloat16
    want = dot_product_attention(
        *(x.astype(jnp.float32) for x in (q, k, v)), mask=global_local_mask(g, 3)
    )
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=3e-2)


def test_bad_arguments_raise(rng):
    q, k, v = testing.random_qkv(rng, q_len=8)
    g = jnp.zeros((2, 8), bool).at[:, :3].set(True)
    with pytest.raises(ValueError, match="global_mask"):
        global_local_attention(q, k, v, window_size=2, global_mask=jnp.zeros((2, 7), bool))
    with pytest.raises(ValueError, match="global_mask"):
        global_local_attention(q, k, v, window_size=2, global_mask=jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="window_size"):
        global_local_attention(q, k, v, window_size=-2, global_mask=g)
    with pytest.raises(ValueError, match="max_global_tokens=2"):
        global_local_attention(q, k, v, window_size=2, global_mask=g, max_global_tokens=2)
    with pytest.raises(ValueError, match="max_global_tokens"):
        jax.jit(lambda g: global_local_attention(q, k, v, window_size=2, global_mask=g))(g)
    q2, k2, v2 = testing.random_qkv(rng, q_len=8, kv_len=9)
    with pytest.raises(ValueError, match="self-attention"):
        global_local_attention(q2, k2, v2, window_size=2, global_mask=g)
    with pytest.raises(ValueError, match=r"key_global has shape \(2, 9, 4, 8\), must be"):
        global_local_attention(q, k, v, window_size=2, global_mask=g, global_qkv=(q, k2, v))


def test_separate_global_projections_feed_only_the_global_rows(rng):
    # Longformer: global rows are dense attention of the global projections (padding
    # respected); the other rows, including their view of global keys, keep q, k, v.
    q, k, v = testing.random_qkv(rng, q_len=11, num_kv_heads=2)
    qg, kg, vg = testing.random_qkv(jax.random.fold_in(rng, 1), q_len=11, num_kv_heads=2)
    g = jnp.zeros((2, 11), bool).at[0, 4].set(True).at[:, 0].set(True)
    padding = jnp.arange(11)[None] < jnp.array([[11], [8]])

    @jax.jit
    def attend(global_qkv):
        return global_local_attention(
            q, k, v, window_size=2, global_mask=g, padding_mask=padding, global_qkv=global_qkv
        )

    _, grads = jax.jit(jax.value_and_grad(lambda qkv: attend(qkv).sum()))((qg, kg, vg))
    want_global = dot_product_attention(qg, kg, vg, padding_mask=padding)
    want = jnp.where(g[:, :, None, None], want_global, attend(None))
    np.testing.assert_allclose(attend((qg, kg, vg)), want, atol=1e-5)

    # Gradients reach the global projections only through the global rows.
    @jax.jit
    def want_grads(cotangent):
        def dense(a, b, c):
            return dot_product_attention(a, b, c, padding_mask=padding)

        return jax.vjp(dense, qg, kg, vg)[1](cotangent)

    ones = jnp.where(g[:, :, None, None], 1.0, 0.0) * jnp.ones_like(q)
    for got_grad, want_grad in zip(grads, want_grads(ones), strict=True):
        np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)


def test_flags_beyond_max_global_tokens_are_ordinary_tokens_under_jit(rng):
    q, k, v = testing.random_qkv(rng, q_len=24, num_kv_heads=2)
    g = jnp.zeros((2, 24), bool).at[:, 3].set(True).at[:, 12].set(True)
    fn = jax.jit(
        lambda g: global_local_attention(q, k, v, window_size=2, global_mask=g, max_global_tokens=1)
    )
    kept = jnp.zeros_like(g).at[:, 3].set(True)  # token 12 overflows: local only
    want = dot_product_attention(q, k, v, mask=global_local_mask(kept, 2))
    np.testing.assert_allclose(fn(g), want, atol=1e-5)
