import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import testing
from effjax.attention import dot_product_attention, get, local_attention, local_mask

# One compilation per case instead of one per operation: keeps the tests fast.
jit_local = jax.jit(
    local_attention,
    static_argnames=("window_size", "is_causal", "dilation", "scale", "block_size"),
)

# (T, S, K, window, dilation, block_size, causal) with N = 4: lengths that are not multiples of the
# block, T != S (bottom-right aligned), GQA and MQA, dilation, a window wider than the sequence.
# Few distinct shapes, so the eager reference compiles its operations once for all cases.
SLOW = pytest.mark.slow  # the other cases run with the slow tests

CASES = [
    pytest.param(13, 13, 2, (2, 3), 1, 4, False, marks=SLOW),
    pytest.param(13, 13, 2, (2, 3), 1, 4, True, marks=SLOW),
    (10, 17, 2, (3, 1), 1, 4, False),
    pytest.param(17, 10, 2, (2, 2), 1, 4, True, marks=SLOW),
    pytest.param(13, 13, 2, (2, 1), 3, 4, False, marks=SLOW),
    (10, 17, 2, (2, 2), 2, 4, True),
    pytest.param(13, 13, 1, 100, 1, None, False, marks=SLOW),
    pytest.param(13, 13, 2, (0, 0), 2, None, True, marks=SLOW),
]


@pytest.mark.parametrize(("t", "s", "k", "window", "dilation", "block", "is_causal"), CASES)
def test_equals_dense_with_window_mask(rng, t, s, k, window, dilation, block, is_causal):
    q, kk, v = testing.random_qkv(rng, batch=2, q_len=t, kv_len=s, num_heads=4, num_kv_heads=k)
    padding = testing.random_padding_mask(jax.random.key(3), 2, s)
    testing.check_against_reference(
        jit_local,
        q,
        kk,
        v,
        mask=local_mask(t, s, window, dilation=dilation, is_causal=is_causal),
        padding_mask=padding,
        is_causal=is_causal,
        window_size=window,
        dilation=dilation,
        block_size=block,
    )


def test_default_block_on_a_longer_sequence(rng):
    q, k, v = testing.random_qkv(rng, batch=1, q_len=100, num_heads=2, head_dim=4)
    want = dot_product_attention(q, k, v, mask=local_mask(100, 100, (40, 5))[None, None])
    np.testing.assert_allclose(jit_local(q, k, v, window_size=(40, 5)), want, atol=1e-5)


def test_jit_and_registry_name(rng):
    q, k, v = testing.random_qkv(rng, q_len=10, kv_len=17, num_kv_heads=2)
    fn = jax.jit(lambda q, k, v: get("local")(q, k, v, window_size=3, is_causal=True))
    want = dot_product_attention(q, k, v, mask=local_mask(10, 17, 3)[None, None], is_causal=True)
    np.testing.assert_allclose(fn(q, k, v), want, atol=1e-5)


def test_bfloat16_inputs_give_bfloat16_close_to_float32(rng):
    q, k, v = testing.random_qkv(rng, q_len=10, kv_len=17, num_kv_heads=2, dtype=jnp.bfloat16)
    out = jit_local(q, k, v, window_size=(4, 2), block_size=4)
    assert out.dtype == jnp.bfloat16
    want = dot_product_attention(
        *(x.astype(jnp.float32) for x in (q, k, v)), mask=local_mask(10, 17, (4, 2))[None, None]
    )
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=3e-2)


def test_fully_padded_row_gives_zeros_and_finite_grads(rng):
    q, k, v = testing.random_qkv(rng, batch=1, q_len=12, num_heads=2)
    padding = jnp.arange(12)[None] < 3  # keys 3.. are padding: late queries see no key
    out = jit_local(q, k, v, window_size=(1, 1), padding_mask=padding, block_size=4)
    np.testing.assert_array_equal(out[0, 6:], 0.0)
    grads = jax.grad(
        lambda q: jnp.sum(jit_local(q, k, v, window_size=1, padding_mask=padding, block_size=4))
    )(q)
    assert np.isfinite(np.asarray(grads)).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window_size": -1}, "window_size"),
        ({"window_size": (2, -3)}, "window_size"),
        ({"window_size": 2, "dilation": 0}, "dilation"),
        ({"window_size": 2, "block_size": 0}, "block_size"),
        ({"window_size": 2, "padding_mask": jnp.ones((2, 5), bool)}, "padding_mask"),
    ],
)
def test_bad_arguments_raise(rng, kwargs, name):
    q, k, v = testing.random_qkv(rng, q_len=8)
    with pytest.raises(ValueError, match=name):
        local_attention(q, k, v, **kwargs)
