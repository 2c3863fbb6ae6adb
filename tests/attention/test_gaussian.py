import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax import testing
from effjax.attention import gaussian_attention

gaussian = jax.jit(
    gaussian_attention, static_argnames=("offsets", "widths", "window_size", "is_causal")
)


def weights_reference(t, s, offsets, widths, window, is_causal, padding):
    """The paper's fixed weights, by loops: A[b, n, t, s] over the visible keys."""
    batch, num_heads = padding.shape[0], len(offsets)
    a = np.zeros((batch, num_heads, t, s))
    for b in range(batch):
        for n in range(num_heads):
            for i in range(t):
                p = i + s - t
                for j in range(s):
                    rel = j - p
                    visible = abs(rel) <= window and padding[b, j] and not (is_causal and rel > 0)
                    if visible:
                        a[b, n, i, j] = np.exp(-((rel - offsets[n]) ** 2) / (2 * widths[n] ** 2))
            total = a[b, n].sum(-1, keepdims=True)
            a[b, n] = np.where(total > 0, a[b, n] / np.where(total > 0, total, 1), 0)
    return a


@pytest.mark.parametrize(("t", "s", "is_causal", "window"), [
    (11, 11, False, 3),
    pytest.param(11, 11, True, 20, marks=pytest.mark.slow),
    (6, 11, True, 2),
    pytest.param(11, 7, False, 4, marks=pytest.mark.slow),
])  # fmt: skip
def test_equals_numpy_reference_forward_and_backward(t, s, is_causal, window):
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=t, kv_len=s, num_heads=4, num_kv_heads=2)
    padding = np.asarray(testing.random_padding_mask(jax.random.key(1), 2, s))
    offsets, widths = (-1.0, 1.0, 0.0, 2.5), (1.0, 1.5, 2.0, 2.5)
    options = {"offsets": offsets, "widths": widths, "window_size": window, "is_causal": is_causal}
    a = weights_reference(t, s, offsets, widths, window, is_causal, padding)
    heads_v = np.repeat(
        np.asarray(v, np.float64), 2, axis=2
    )  # query head n reads value head n // 2
    want = np.einsum("bnts,bsnh->btnh", a, heads_v)
    out = gaussian(q, k, v, padding_mask=jnp.asarray(padding), **options)
    np.testing.assert_allclose(out, want, atol=1e-5)

    c = jax.random.normal(jax.random.key(2), out.shape)
    grad_v = jax.grad(
        lambda v: jnp.sum(gaussian(q, k, v, padding_mask=jnp.asarray(padding), **options) * c)
    )(v)
    want_grad = np.einsum("bnts,btnh->bsnh", a, np.asarray(c, np.float64))
    want_grad = want_grad.reshape(2, s, 2, 2, -1).sum(3)  # the two query heads of a value head
    np.testing.assert_allclose(grad_v, want_grad, atol=1e-5)


def test_default_window_truncates_only_the_negligible_tail():
    q, k, v = testing.random_qkv(jax.random.key(3), q_len=40, num_heads=2)
    exact = gaussian(q, k, v, widths=(1.0, 2.0), window_size=40)
    np.testing.assert_allclose(gaussian(q, k, v, widths=(1.0, 2.0)), exact, atol=1e-4)


def test_defaults_are_the_papers_previous_and_next_token_heads():
    v = jnp.arange(8.0).reshape(1, 8, 1, 1)
    v = jnp.broadcast_to(v, (1, 8, 2, 1))
    out = gaussian_attention(v, v, v, widths=0.05)[0, :, :, 0]
    np.testing.assert_allclose(out[1:, 0], np.arange(7.0), atol=1e-6)  # head 0: previous
    np.testing.assert_allclose(out[:-1, 1], np.arange(1.0, 8.0), atol=1e-6)  # head 1: next
    causal = gaussian_attention(v, v, v, widths=0.05, is_causal=True)[0, :, :, 0]
    np.testing.assert_allclose(causal[:, 1], np.arange(8.0), atol=1e-6)  # head 1: itself


def test_no_key_gives_zeros_and_padded_values_are_ignored():
    q, k, v = testing.random_qkv(jax.random.key(4), q_len=9, num_heads=2)
    padding = jnp.arange(9)[None, :] < jnp.array([[9], [4]])
    fn = jax.jit(lambda v: gaussian_attention(q, k, v, padding_mask=padding, window_size=2))
    poisoned = v.at[1, 4:].set(jnp.inf)
    np.testing.assert_array_equal(fn(poisoned), fn(v))
    assert np.all(np.asarray(fn(v))[1, 7:] == 0.0), "queries 7, 8 see only padded keys"
    assert np.all(np.isfinite(jax.grad(lambda v: jnp.sum(fn(v)))(v)))


def test_registered_and_rejects_bad_options():
    assert ea.get("gaussian") is gaussian_attention
    q, k, v = testing.random_qkv(jax.random.key(5), q_len=6, num_heads=4)
    with pytest.raises(ValueError, match=r"offsets must .* N=4, got \(3,\)"):
        gaussian_attention(q, k, v, offsets=(0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="widths must be > 0"):
        gaussian_attention(q, k, v, widths=0.0)
    with pytest.raises(ValueError, match="window_size must be >= 0"):
        gaussian_attention(q, k, v, window_size=-1)
    with pytest.raises(ValueError, match=r"padding_mask must have shape \[B, S\]"):
        gaussian_attention(q, k, v, padding_mask=jnp.ones((2, 5), bool))
