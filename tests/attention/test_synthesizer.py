import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax import testing
from effjax.attention import (
    dense_synthesizer_logits,
    dot_product_attention,
    factorized_dense_logits,
    factorized_random_logits,
    random_synthesizer_logits,
    synthesizer_attention,
)

T, N, H, L = 7, 2, 4, 10


def relu_np(x):
    return np.maximum(x, 0.0)


def test_logit_makers_equal_numpy():
    keys = jax.random.split(jax.random.key(0), 9)
    x = jax.random.normal(keys[0], (2, T, N, H))
    w1, b1 = jax.random.normal(keys[1], (N, H, 5)), jax.random.normal(keys[2], (N, 5))
    w2, b2 = jax.random.normal(keys[3], (N, 5, L)), jax.random.normal(keys[4], (N, L))
    xn = np.asarray(x, np.float64)
    hidden = relu_np(np.einsum("btnh,nhf->bntf", xn, w1) + np.asarray(b1)[None, :, None])
    want = np.einsum("bntf,nfl->bntl", hidden, w2) + np.asarray(b2)[None, :, None]
    got = dense_synthesizer_logits(x, w1, b1, w2, b2, kv_len=T)
    np.testing.assert_allclose(got, want[..., :T], rtol=1e-5, atol=1e-4)

    wa, ba = jax.random.normal(keys[5], (N, 5, 3)), jnp.zeros((N, 3))
    wb, bb = jax.random.normal(keys[6], (N, 5, 4)), jnp.ones((N, 4))
    fa = np.einsum("bntf,nfa->bnta", hidden, wa)
    fb = np.einsum("bntf,nfc->bntc", hidden, wb) + 1.0
    got = factorized_dense_logits(x, w1, b1, wa, ba, wb, bb, kv_len=T)
    for s in range(T):  # key s gets A[s mod a] * B[s // a]
        np.testing.assert_allclose(
            got[..., s], fa[..., s % 3] * fb[..., s // 3], rtol=1e-5, atol=1e-4
        )

    table = jax.random.normal(keys[7], (N, L, L))
    got = random_synthesizer_logits(table, q_len=3, kv_len=T)  # decoding: rows 4, 5, 6
    np.testing.assert_array_equal(got[0], table[:, 4:7, :T])
    positions = jnp.array([[0, 3, 6], [2, 2, 5]])  # decoding rows at their own slots
    got = random_synthesizer_logits(table, q_len=3, kv_len=T, positions=positions)
    np.testing.assert_array_equal(got[1], table[:, [2, 2, 5], :T])
    got = factorized_random_logits(r1 := jax.random.normal(keys[8], (N, L, 3)), r1, q_len=3,
                                   kv_len=T, positions=positions)  # fmt: skip
    np.testing.assert_allclose(got[0], np.einsum("ntk,nsk->nts", r1[:, [0, 3, 6]], r1[:, :T]),
                               atol=1e-5)  # fmt: skip
    r1, r2 = jax.random.normal(keys[8], (2, N, L, 3))
    got = factorized_random_logits(r1, r2, q_len=T, kv_len=T)
    np.testing.assert_allclose(got[0], np.einsum("ntk,nsk->nts", r1[:, :T], r2[:, :T]), atol=1e-5)
    with pytest.raises(ValueError, match="covers 10 positions but the sequence needs 11"):
        random_synthesizer_logits(table, q_len=11, kv_len=11)


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_equals_softmax_of_synthetic_plus_weighted_dot_product(alpha):
    q, k, v = testing.random_qkv(
        jax.random.key(1), q_len=T, num_heads=N, num_kv_heads=1, head_dim=H
    )
    logits = jax.random.normal(jax.random.key(2), (1, N, T, T)) * 3
    padding = testing.random_padding_mask(jax.random.key(3), 2, T)

    def variant(q, k, v, logits):
        return synthesizer_attention(
            q, k, v, synthetic_logits=logits, dot_product_weight=alpha, padding_mask=padding,
            is_causal=True,
        )  # fmt: skip

    def reference(q, k, v, logits):  # softmax(B + alpha QK^T / sqrt(H)) V, by hand
        kk = jnp.repeat(k, N, axis=2)
        scores = logits + alpha * jnp.einsum("btnh,bsnh->bnts", q, kk) / np.sqrt(H)
        mask = padding[:, None, None, :] & jnp.tril(jnp.ones((T, T), bool))[None, None]
        weights = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)
        return jnp.einsum("bnts,bsnh->btnh", weights, jnp.repeat(v, N, axis=2))

    args = (q, k, v, logits)
    np.testing.assert_allclose(jax.jit(variant)(*args), jax.jit(reference)(*args), atol=1e-5)
    c = jax.random.normal(jax.random.key(4), q.shape)
    got = jax.jit(jax.grad(lambda *a: jnp.sum(variant(*a) * c), argnums=range(4)))(*args)
    want = jax.jit(jax.grad(lambda *a: jnp.sum(reference(*a) * c), argnums=range(4)))(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_learned_mixture_weight_may_be_traced_and_is_differentiable():
    q, k, v = testing.random_qkv(jax.random.key(5), q_len=T, num_heads=N)
    logits = jnp.zeros((1, N, T, T))

    def out(alpha):
        return synthesizer_attention(q, k, v, synthetic_logits=logits, dot_product_weight=alpha)

    np.testing.assert_allclose(jax.jit(out)(1.0), dot_product_attention(q, k, v), atol=1e-5)
    assert float(jnp.abs(jax.grad(lambda a: jnp.sum(out(a) ** 2))(0.5))) > 0


def test_registered_and_rejects_bad_input():
    assert ea.get("synthesizer") is synthesizer_attention
    q, k, v = testing.random_qkv(jax.random.key(6), q_len=T, num_heads=N)
    with pytest.raises(ValueError, match="dot_product_weight must be >= 0"):
        synthesizer_attention(
            q, k, v, synthetic_logits=jnp.zeros((1, N, T, T)), dot_product_weight=-1
        )
    with pytest.raises(ValueError, match=r"bias must be broadcastable to .* got \(1, 2, 7, 6\)"):
        synthesizer_attention(q, k, v, synthetic_logits=jnp.zeros((1, N, T, 6)))
