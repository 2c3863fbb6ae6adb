import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax import testing
from effjax.attention.lowrank import linformer_attention


def test_identity_projections_equal_dense_attention():
    num_kv_heads = 2  # GQA
    q, k, v = testing.random_qkv(
        jax.random.key(0), q_len=12, kv_len=16, num_heads=4, num_kv_heads=num_kv_heads
    )
    eye = jnp.eye(16)
    per_head = jnp.broadcast_to(eye, (num_kv_heads, 16, 16))
    testing.check_against_reference(linformer_attention, q, k, v, proj_k=eye, proj_v=eye)
    testing.check_against_reference(linformer_attention, q, k, v, proj_k=per_head, proj_v=per_head)


def test_random_projections_equal_attention_over_projected_keys():
    q, k, v = testing.random_qkv(jax.random.key(1), q_len=10, num_heads=4, num_kv_heads=2)
    e = jax.random.normal(jax.random.key(2), (2, 4, 10))  # one [k, S] per key/value head
    f = jax.random.normal(jax.random.key(3), (2, 4, 10))
    got = linformer_attention(q, k, v, proj_k=e, proj_v=f)
    # By hand: head n uses key/value head n // 2 and its projections.
    for n in range(4):
        h = n // 2
        pk = jnp.einsum("ps,bsd->bpd", e[h], k[:, :, h])
        pv = jnp.einsum("ps,bsd->bpd", f[h], v[:, :, h])
        weights = jax.nn.softmax(jnp.einsum("btd,bpd->btp", q[:, :, n], pk) / np.sqrt(8), -1)
        np.testing.assert_allclose(got[:, :, n], jnp.einsum("btp,bpd->btd", weights, pv), atol=1e-5)


def test_keys_and_values_at_padded_positions_change_nothing():
    q, k, v = testing.random_qkv(jax.random.key(4), q_len=12, num_heads=2)
    pad = jnp.arange(12)[None, :] < jnp.array([[12], [5]])
    e = jax.random.normal(jax.random.key(5), (6, 12))
    fn = jax.jit(lambda q, k, v: linformer_attention(q, k, v, proj_k=e, proj_v=e, padding_mask=pad))
    k2 = k.at[1, 5:].set(1e3)
    v2 = v.at[1, 5:].set(-1e3)
    np.testing.assert_allclose(fn(q, k2, v2), fn(q, k, v), atol=1e-5)
    grads = jax.grad(lambda k: jnp.sum(fn(q, k, v)))(k)
    np.testing.assert_array_equal(grads[1, 5:], 0.0)
    all_padded = jnp.zeros((2, 12), bool)
    out = linformer_attention(q, k, v, proj_k=e, proj_v=e, padding_mask=all_padded)
    np.testing.assert_array_equal(out, 0.0)


def test_registered_and_rejects_causal_and_bad_projections():
    assert ea.get("linformer") is linformer_attention
    q, k, v = testing.random_qkv(jax.random.key(6), q_len=8, num_heads=2)
    e = jnp.ones((4, 8))
    with pytest.raises(ValueError, match="is_causal=True is not supported"):
        linformer_attention(q, k, v, proj_k=e, proj_v=e, is_causal=True)
    with pytest.raises(ValueError, match=r"proj_k must have shape .* got \(4, 9\)"):
        linformer_attention(q, k, v, proj_k=jnp.ones((4, 9)), proj_v=e)
    with pytest.raises(ValueError, match=r"proj_v must have shape .* got \(3, 4, 8\)"):
        linformer_attention(q, k, v, proj_k=e, proj_v=jnp.ones((3, 4, 8)))
