import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax import testing
from effjax.attention import (
    routing_assignments,
    routing_attention,
    routing_clusters,
    update_centroids,
)

routing = jax.jit(routing_attention, static_argnames=("cluster_size", "is_causal"))


def cluster_mask(query_index, key_index, length):
    """M[b, n, t, s] = some centroid routed both query t and key s: bool [B, N, T, T]."""
    qi, ki = np.asarray(query_index), np.asarray(key_index)
    b, n, c, _ = qi.shape
    mask = np.zeros((b, n, length, length), bool)
    for bi in range(b):
        for ni in range(n):
            for ci in range(c):
                mask[bi, ni][np.ix_(qi[bi, ni, ci], ki[bi, ni, ci])] = True
    return jnp.asarray(mask)


def check_nearest(index, x, mu, valid):
    """Each centroid routed its highest-cosine valid positions (numpy, float64); compared by
    score, so near-ties that float32 orders differently do not matter."""
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    scores = np.einsum("btnh,nch->bnct", x, np.asarray(mu, np.float64))
    scores = np.where(np.asarray(valid)[:, None, None, :], scores, -2.0)
    best = -np.sort(-scores, axis=-1)[..., : index.shape[-1]]
    chosen = -np.sort(-np.take_along_axis(scores, np.asarray(index), axis=-1), axis=-1)
    np.testing.assert_allclose(chosen, best, atol=1e-6)
    assert all(len(set(row)) == len(row) for row in np.asarray(index).reshape(-1, index.shape[-1]))


@pytest.mark.parametrize(("num_kv_heads", "cluster_size"), [
    (2, 5),
    pytest.param(1, None, marks=pytest.mark.slow),
    pytest.param(4, 13, marks=pytest.mark.slow),  # one cluster holds all: dense
])  # fmt: skip
def test_equals_dense_under_its_cluster_mask(num_kv_heads, cluster_size):
    q, k, v = testing.random_qkv(
        jax.random.key(0), q_len=13, num_heads=4, num_kv_heads=num_kv_heads
    )
    mu = jax.random.normal(jax.random.key(1), (4, 3, 8))
    padding = testing.random_padding_mask(jax.random.key(2), 2, 13)
    options = {"centroids": mu, "cluster_size": cluster_size, "padding_mask": padding}
    qi, ki = routing_clusters(q, k, **options)
    # The routing itself, against numpy: each centroid's nearest queries and keys.
    check_nearest(qi, q, mu, padding)
    check_nearest(ki, jnp.repeat(k, 4 // num_kv_heads, axis=2), mu, padding)
    mask = cluster_mask(qi, ki, 13)
    if cluster_size == 13:
        assert bool(jnp.all(mask))
    else:
        assert 0.1 < float(jnp.mean(mask)) < 0.9, "the test needs a sparse, overlapping pattern"
    testing.check_against_reference(routing, q, k, v, mask=mask, **options)


def causal_window_mask(q_cluster, k_cluster, padding, window):
    """Query t sees the `window` latest real keys s <= t of its own cluster: [B, N, T, T]."""
    qc, kc, real = np.asarray(q_cluster), np.asarray(k_cluster), np.asarray(padding)
    b, n, t = qc.shape
    mask = np.zeros((b, n, t, t), bool)
    for bi in range(b):
        for ni in range(n):
            for ti in range(t):
                same = [s for s in range(ti + 1) if kc[bi, ni, s] == qc[bi, ni, ti] and real[bi, s]]
                mask[bi, ni, ti, same[-window:]] = True
    return jnp.asarray(mask)


def test_causal_equals_dense_under_its_sliding_cluster_mask_and_never_looks_ahead():
    q, k, v = testing.random_qkv(jax.random.key(6), q_len=13, num_heads=4, num_kv_heads=2)
    mu = jax.random.normal(jax.random.key(7), (4, 3, 8))
    padding = testing.random_padding_mask(jax.random.key(8), 2, 13)
    options = {"centroids": mu, "cluster_size": 3, "padding_mask": padding}
    mask = causal_window_mask(
        routing_assignments(q, mu), routing_assignments(jnp.repeat(k, 2, axis=2), mu), padding, 3
    )
    assert 0.05 < float(jnp.mean(mask)) < 0.4, "the test needs windows that drop keys"
    testing.check_against_reference(routing, q, k, v, mask=mask, is_causal=True, **options)
    later = [x.at[:, 7:].set(3.0) for x in (q, k, v)]
    np.testing.assert_allclose(
        routing(*later, is_causal=True, **options)[:, :7],
        routing(q, k, v, is_causal=True, **options)[:, :7],
        atol=1e-6,
    )


def test_padded_tokens_change_nothing():
    q, k, v = testing.random_qkv(jax.random.key(3), q_len=12, num_heads=2)
    mu = jax.random.normal(jax.random.key(4), (4, 8))  # shared by the heads
    padding = jnp.arange(12)[None, :] < jnp.array([[12], [7]])
    fn = jax.jit(lambda q, k, v: routing_attention(q, k, v, centroids=mu, padding_mask=padding))
    poisoned = [x.at[1, 7:].set(100.0) for x in (q, k, v)]
    np.testing.assert_allclose(fn(*poisoned)[1, :7], fn(q, k, v)[1, :7], atol=1e-5)


def test_update_centroids_moves_each_centroid_to_its_members():
    mu = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])  # N=1, C=2
    x = jnp.array([[[3.0, 1.0]], [[0.0, -2.0]], [[-1.0, 4.0]]]).reshape(1, 3, 1, 2)
    valid = jnp.array([[True, False, True]])  # the padded vector would pull centroid 0 down
    new = update_centroids(mu, x, decay=0.5, valid=valid)
    unit = np.array([[3.0, 1.0], [-1.0, 4.0]])
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    want = 0.5 * np.eye(2) + 0.5 * unit
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(new[0], want, atol=1e-6)
    np.testing.assert_allclose(update_centroids(mu, x[:, 2:], decay=0.5)[0, 0], [1.0, 0.0])


def test_registered_and_rejects_bad_input():
    assert ea.get("routing") is routing_attention
    q, k, v = testing.random_qkv(jax.random.key(5), q_len=8, num_heads=2)
    with pytest.raises(ValueError, match=r"centroids must have shape .* got \(3, 4, 8\)"):
        routing_attention(q, k, v, centroids=jnp.zeros((3, 4, 8)))
    with pytest.raises(ValueError, match="cluster_size must be a positive int"):
        routing_attention(q, k, v, centroids=jnp.zeros((4, 8)), cluster_size=0)
    with pytest.raises(ValueError, match="self-attention"):
        routing_attention(q[:, :5], k, v, centroids=jnp.zeros((4, 8)))
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        update_centroids(jnp.zeros((4, 8)), q, decay=1.0)
