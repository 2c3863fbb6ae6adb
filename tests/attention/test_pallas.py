"""implementation="pallas": JAX's splash-attention kernels, run here in Pallas interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import testing
from effjax.attention import local_mask, pallas_attention

jit_pallas = jax.jit(
    pallas_attention,
    static_argnames=("is_causal", "scale", "window_size", "block_q", "block_kv", "interpret"),
)

# (T, S, K, causal, window, padded) with N = 4. Splash tiles are 128 wide: T or S above 128
# spans two tiles; T != S checks the bottom-right offset; T > S causal leaves early queries
# with no key; random padding leaves some rows with no key inside their window.
SLOW = pytest.mark.slow
CASES = [
    (20, 140, 1, True, None, True),
    (24, 24, 2, False, (3, 2), True),
    pytest.param(16, 16, 4, False, None, False, marks=SLOW),
    pytest.param(140, 20, 2, True, None, False, marks=SLOW),
    pytest.param(30, 30, 2, True, 4, False, marks=SLOW),
]


@pytest.mark.parametrize(("t", "s", "k", "is_causal", "window", "padded"), CASES)
def test_interpret_mode_equals_dense_forward_and_gradients(rng, t, s, k, is_causal, window, padded):
    q, kk, v = testing.random_qkv(rng, batch=2, q_len=t, kv_len=s, num_heads=4, num_kv_heads=k)
    testing.check_against_reference(
        jit_pallas,
        q,
        kk,
        v,
        mask=None if window is None else local_mask(t, s, window, is_causal=is_causal),
        padding_mask=testing.random_padding_mask(jax.random.key(3), 2, s) if padded else None,
        is_causal=is_causal,
        window_size=window,
        atol=2e-5,
    )


def test_a_sequence_with_no_key_gives_zeros(rng):
    q, k, v = testing.random_qkv(rng, batch=2, q_len=8, num_heads=2)
    padding = jnp.array([[True] * 8, [False] * 8])
    out = jit_pallas(q, k, v, padding_mask=padding)
    np.testing.assert_array_equal(out[1], 0.0)
    assert np.abs(np.asarray(out[0])).min() > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"block_kv": 64}, "block_kv"),
        ({"block_q": 0}, "block_q"),
        ({"window_size": -1}, "window_size"),
        ({"padding_mask": jnp.ones((2, 5), bool)}, "padding_mask"),
    ],
)
def test_bad_arguments_raise(rng, kwargs, name):
    q, k, v = testing.random_qkv(rng, q_len=8)
    with pytest.raises(ValueError, match=name):
        pallas_attention(q, k, v, **kwargs)


def test_value_head_dim_must_match_key(rng):
    q, k, _ = testing.random_qkv(rng, q_len=8)
    with pytest.raises(ValueError, match="head dims"):
        pallas_attention(q, k, jnp.ones((*k.shape[:3], 3)))
