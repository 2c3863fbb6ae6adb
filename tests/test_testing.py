import functools

import jax
import jax.numpy as jnp
import pytest

from effjax import testing
from effjax.attention import dot_product_attention, masks


def test_reference_check_passes_for_equal_and_fails_for_wrong_mask():
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=10, num_heads=4, num_kv_heads=2)
    causal = masks.causal_mask(10, 10)
    causal_fn = functools.partial(dot_product_attention, mask=causal[None, None])
    testing.check_against_reference(
        causal_fn, q, k, v, mask=causal, padding_mask=jnp.ones((2, 10), bool)
    )
    with pytest.raises(AssertionError, match="forward output differs"):
        testing.check_against_reference(causal_fn, q, k, v, mask=causal.T)


def test_reference_check_catches_wrong_gradient():
    @jax.custom_vjp
    def wrong_grad(q, k, v, **kw):
        return dot_product_attention(q, k, v, **kw)

    def fwd(q, k, v, **kw):
        return dot_product_attention(q, k, v, **kw), (q, k, v)

    def bwd(res, g):
        return tuple(2 * jnp.ones_like(x) for x in res)

    wrong_grad.defvjp(fwd, bwd)
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=4)
    with pytest.raises(AssertionError, match="gradient with respect to query"):
        testing.check_against_reference(lambda q, k, v, **_: wrong_grad(q, k, v), q, k, v)
