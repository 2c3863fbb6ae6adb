import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import testing
from effjax.attention import relative_position_attention, relative_shift, sinusoids
from effjax.layers import RelativePositionCore

relative = jax.jit(relative_position_attention, static_argnames=("is_causal",))


def direct_scores(q, k, r_of, u, v, scale):
    """Transformer-XL's four terms, O(T S) Python loops: A[b, n, i, j] with query i at
    key position i + S - T and ``r_of(d) [N, H]`` the embedding of distance d."""
    b, t, n, _ = q.shape
    s, group = k.shape[1], q.shape[2] // k.shape[2]
    scores = np.zeros((b, n, t, s))
    for i in range(t):
        for j in range(s):
            d = i + s - t - j
            r_d = r_of(d)
            for h in range(n):
                k_j = k[:, j, h // group]
                a = q[:, i, h] @ k_j.T  # content
                b_term = q[:, i, h] @ r_d[h]  # content-dependent position
                c = k_j @ u[h]  # global content bias
                d_term = r_d[h] @ v[h]  # global position bias
                scores[:, h, i, j] = scale * (np.diag(a) + b_term + c + d_term)
    return scores


def direct_attention(q, k, value, r_of, u, v, padding, is_causal):
    q, k, value, u, v = (np.asarray(x, np.float64) for x in (q, k, value, u, v))
    t, s = q.shape[1], k.shape[1]
    scores = direct_scores(q, k, r_of, u, v, q.shape[-1] ** -0.5)
    allowed = np.ones((t, s), bool)
    if is_causal:
        allowed = np.arange(s)[None] <= np.arange(t)[:, None] + (s - t)
    allowed = allowed[None, None] & padding[:, None, None, :]
    scores = np.where(allowed, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    group = q.shape[2] // k.shape[2]
    return np.einsum("bnts,bsnh->btnh", weights, np.repeat(value, group, axis=2))


@pytest.mark.parametrize(("t", "s", "is_causal"), [(4, 7, True), (5, 5, False)])
def test_equals_direct_formula(t, s, is_causal):
    # Keys longer than queries: s - t memory slots before the segment.
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=t, kv_len=s, num_heads=4, num_kv_heads=2)
    r, u, pb = jax.random.normal(jax.random.key(1), (3, s + t - 1, 4, 8))
    u, pb = u[0], pb[0]
    padding = np.ones((2, s), bool)
    padding[1, :2] = False  # empty memory slots / padded keys
    out = relative(
        q, k, v, position_key=r, content_bias=u, position_bias=pb,
        padding_mask=jnp.asarray(padding), is_causal=is_causal,
    )  # fmt: skip
    rows = np.asarray(r, np.float64)
    want = direct_attention(q, k, v, lambda d: rows[s - 1 - d], u, pb, padding, is_causal)
    np.testing.assert_allclose(out, want, atol=2e-5)


def test_core_embeds_each_distance_by_its_sinusoid():
    t, s, dim = 3, 5, 16
    q, k, v = testing.random_qkv(jax.random.key(6), batch=1, q_len=t, kv_len=s, num_heads=2)
    core = RelativePositionCore()
    variables = core.init(jax.random.key(7), q, k, v, is_causal=True)
    out = core.apply(variables, q, k, v, is_causal=True)
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"])

    def r_of(d):  # W_R R_d with R_d = [sin(d f_i), cos(d f_i)], f_i = 10000^(-2i/dim)
        freqs = 10000.0 ** (-np.arange(0, dim, 2) / dim)
        embedding = np.concatenate([np.sin(d * freqs), np.cos(d * freqs)])
        return np.einsum("d,dnh->nh", embedding, params["position_kernel"])

    u, pb = params["content_bias"], params["position_bias"]
    want = direct_attention(q, k, v, r_of, u, pb, np.ones((1, s), bool), True)
    np.testing.assert_allclose(out, want, atol=2e-5)


def test_gradients_equal_direct_formula():
    t, s = 3, 5
    q, k, v = testing.random_qkv(jax.random.key(2), batch=1, q_len=t, kv_len=s, num_heads=2)
    r = jax.random.normal(jax.random.key(3), (s + t - 1, 2, 8))
    u, pb = jax.random.normal(jax.random.key(4), (2, 2, 8))
    mask = jnp.arange(s)[None] <= jnp.arange(t)[:, None] + (s - t)

    def ours(q, k, r, u, pb):
        out = relative_position_attention(
            q, k, v, position_key=r, content_bias=u, position_bias=pb, is_causal=True
        )
        return jnp.sum(out**2)

    def direct(q, k, r, u, pb):  # the same four terms as einsums over gathered r rows
        distance = jnp.arange(t)[:, None] + s - t - jnp.arange(s)[None]
        rows = r[jnp.clip(s - 1 - distance, 0, s + t - 2)]  # [T, S, N, H]
        scores = (
            jnp.einsum("binh,bjnh->bnij", q + u[None, None], k)
            + jnp.einsum("binh,ijnh->bnij", q + pb[None, None], rows)
        ) * 8**-0.5
        weights = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)
        return jnp.sum(jnp.einsum("bnij,bjnh->binh", weights, v) ** 2)

    args = (q, k, r, u, pb)
    grads = [jax.jit(jax.grad(f, range(5)))(*args) for f in (ours, direct)]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_relative_shift_trick_equals_gather():
    t, s = 4, 6
    x = np.random.default_rng(5).normal(size=(2, t, s + t - 1)).astype(np.float32)
    want = [[[row[j + t - 1 - i] for j in range(s)] for i, row in enumerate(b)] for b in x]
    np.testing.assert_array_equal(relative_shift(x, s), want)


def test_sinusoids_are_odd_and_even_in_the_distance():
    e = sinusoids(jnp.array([3.0, -3.0]), 8)
    np.testing.assert_allclose(e[0, :4], -e[1, :4], atol=1e-7)  # sin
    np.testing.assert_allclose(e[0, 4:], e[1, 4:], atol=1e-7)  # cos


def test_bad_shapes_name_the_argument():
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=3, kv_len=5, num_heads=2)
    zeros = jnp.zeros((2, 8))
    with pytest.raises(ValueError, match=r"position_key must be \[S \+ T - 1, N, H\] = \(7, 2"):
        relative_position_attention(
            q, k, v, position_key=jnp.zeros((5, 2, 8)), content_bias=zeros, position_bias=zeros
        )
    with pytest.raises(ValueError, match=r"content_bias must be \[N, H\]"):
        relative_position_attention(
            q, k, v, position_key=jnp.zeros((7, 2, 8)), content_bias=zeros[0], position_bias=zeros
        )
