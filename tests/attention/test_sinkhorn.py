import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax import testing
from effjax.attention import default_sort_logits, sinkhorn_attention, sinkhorn_normalize

sinkhorn = jax.jit(
    sinkhorn_attention,
    static_argnames=("block_size", "temperature", "iterations", "sortcut_blocks", "is_causal"),
)
B, T, N, K, H, BLOCK = 2, 11, 4, 2, 8, 4  # 3 blocks, the last one padded internally
NB = 3


def safe(x):
    return jnp.where(x > 0, x, 1.0)


def reference(q, k, v, logits, *, padding, is_causal, sortcut=None, temperature=0.75, iters=5):
    """Sparse Sinkhorn attention by the paper's recipe, one block and head at a time."""
    allowed = np.tri(NB, k=-1, dtype=bool) if is_causal else np.ones((NB, NB), bool)
    p = jnp.where(allowed, jnp.exp(logits / temperature), 0.0)
    for _ in range(iters):  # Sinkhorn: rows, then columns, in linear space
        p = p / safe(p.sum(-1, keepdims=True))
        # Causal balancing: row i's column sums run over rows <= i only.
        p = p / safe(jnp.cumsum(p, -2) if is_causal else p.sum(-2, keepdims=True))
    pad_to = NB * BLOCK - T
    real = np.pad(padding, [(0, 0), (0, pad_to)]).reshape(B, NB, BLOCK)
    kb = jnp.pad(k, [(0, 0), (0, pad_to), (0, 0), (0, 0)]).reshape(B, NB, BLOCK, K, H)
    vb = jnp.pad(v, [(0, 0), (0, pad_to), (0, 0), (0, 0)]).reshape(B, NB, BLOCK, K, H)
    heads = np.arange(N) // (N // K)  # the key/value head of each query head
    w = p[:, heads][..., None] * real[:, None, None]  # [b, n, i, j, slot]
    total = w.sum(3)  # [b, n, i, slot]
    sk = jnp.einsum("bnijr,bjrnd->bnird", w, kb[:, :, :, heads]) / safe(total)[..., None]
    sv = jnp.einsum("bnijr,bjrnd->bnird", w, vb[:, :, :, heads]) / safe(total)[..., None]
    qb = jnp.pad(q, [(0, 0), (0, pad_to), (0, 0), (0, 0)]).reshape(B, NB, BLOCK, N, H)
    blocks = []
    for i in range(NB):  # queries of block i: [b, n, BLOCK, H]
        queries = qb[:, i].transpose(0, 2, 1, 3)
        if sortcut is None:
            keys = jnp.concatenate([kb[:, i][:, :, heads].transpose(0, 2, 1, 3), sk[:, :, i]], 2)
            values = jnp.concatenate([vb[:, i][:, :, heads].transpose(0, 2, 1, 3), sv[:, :, i]], 2)
            own = real[:, i][:, None, None, :] & (np.tri(BLOCK, dtype=bool) | (not is_causal))
            own = np.broadcast_to(own, (B, N, BLOCK, BLOCK))
            partner = jnp.broadcast_to((total[:, :, i] > 0)[:, :, None], (B, N, BLOCK, BLOCK))
            seen = jnp.concatenate([own, partner], -1)
        else:
            keys, values = (
                sk[:, :, :sortcut].reshape(B, N, -1, H),
                sv[:, :, :sortcut].reshape(B, N, -1, H),
            )
            seen = jnp.broadcast_to(
                (total[:, :, :sortcut] > 0).reshape(B, N, 1, -1), (B, N, BLOCK, sortcut * BLOCK)
            )
        scores = jnp.einsum("bnqd,bnkd->bnqk", queries, keys) / np.sqrt(H)
        weights = jax.nn.softmax(jnp.where(seen, scores, -1e30), axis=-1)
        weights = jnp.where(seen.any(-1, keepdims=True), weights, 0.0)
        blocks.append(jnp.einsum("bnqk,bnkd->bqnd", weights, values))
    out = jnp.concatenate(blocks, 1)
    return out[:, :T]


@pytest.mark.parametrize(("is_causal", "sortcut"), [
    (False, None),
    (True, None),
    pytest.param(False, 2, marks=pytest.mark.slow),
])  # fmt: skip
def test_equals_hand_written_reference_forward_and_backward(is_causal, sortcut):
    q, k, v = testing.random_qkv(jax.random.key(0), batch=B, q_len=T, num_heads=N, num_kv_heads=K)
    logits = jax.random.normal(jax.random.key(1), (B, K, NB, NB)) * 2
    padding = np.array([[True] * T, [True] * 6 + [False] * (T - 6)])
    options = {"block_size": BLOCK, "is_causal": is_causal, "sortcut_blocks": sortcut}

    def variant(q, k, v, logits):
        return sinkhorn(q, k, v, sort_logits=logits, padding_mask=jnp.asarray(padding), **options)

    def ref(q, k, v, logits):
        return reference(q, k, v, logits, padding=padding, is_causal=is_causal, sortcut=sortcut)

    args = (q, k, v, logits)
    np.testing.assert_allclose(variant(*args), ref(*args), atol=1e-5)
    c = jax.random.normal(jax.random.key(2), q.shape)
    got = jax.jit(jax.grad(lambda *a: jnp.sum(variant(*a) * c), argnums=range(4)))(*args)
    want = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a) * c), argnums=range(4)))(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5)


def test_causal_and_padding_with_the_default_sorter():
    q, k, v = testing.random_qkv(jax.random.key(3), batch=1, q_len=T, num_heads=N, num_kv_heads=K)
    padding = jnp.arange(T)[None, :] < 8
    fn = jax.jit(
        lambda q, k, v: sinkhorn_attention(
            q, k, v, block_size=BLOCK, is_causal=True, padding_mask=padding
        )
    )
    base = fn(q, k, v)
    # Later tokens (and padded ones) change nothing before them.
    later = fn(q.at[:, 6:].set(9.0), k.at[:, 6:].set(-9.0), v.at[:, 6:].set(9.0))
    np.testing.assert_allclose(later[:, :6], base[:, :6], atol=1e-6)
    padded = fn(q.at[:, 8:].set(5.0), k.at[:, 8:].set(5.0), v.at[:, 8:].set(5.0))
    np.testing.assert_allclose(padded[:, :8], base[:, :8], atol=1e-6)
    # Nor with five blocks, where plain column sums would mix later blocks' sort rows
    # into block 2's; and a prefix alone gives the same rows (no dependence on T).
    q5, k5, v5 = testing.random_qkv(jax.random.key(5), batch=1, q_len=20, num_heads=N,
                                    num_kv_heads=K)  # fmt: skip
    causal = jax.jit(lambda q, k, v: sinkhorn_attention(q, k, v, block_size=BLOCK, is_causal=True))
    whole = causal(q5, k5, v5)
    later = causal(q5.at[:, 9:].set(3.0), k5.at[:, 9:].set(-3.0), v5.at[:, 9:].set(3.0))
    np.testing.assert_allclose(later[:, :9], whole[:, :9], atol=1e-6)
    np.testing.assert_allclose(causal(q5[:, :9], k5[:, :9], v5[:, :9]), whole[:, :9], atol=1e-6)
    # The default sorter scores block means: check one entry by hand (non-causal).
    got = default_sort_logits(q, k, block_size=BLOCK, padding_mask=padding)
    qm = q[0, 4:8].reshape(4, K, N // K, H).mean((0, 2))
    km = k[0, 0:4].mean(0)
    np.testing.assert_allclose(got[0, :, 1, 0], (qm * km).sum(-1) / np.sqrt(H), atol=1e-5)


def test_sinkhorn_normalize_is_doubly_stochastic():
    x = jax.random.normal(jax.random.key(4), (3, 5, 5)) * 3
    p = sinkhorn_normalize(x, iterations=50)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(p.sum(-2), 1.0, atol=1e-4)


def test_registered_and_rejects_bad_input():
    assert ea.get("sinkhorn") is sinkhorn_attention
    q, k, v = testing.random_qkv(jax.random.key(5), q_len=T, num_heads=N, num_kv_heads=K)
    with pytest.raises(ValueError, match="causal"):
        sinkhorn_attention(q, k, v, block_size=BLOCK, sortcut_blocks=1, is_causal=True)
    with pytest.raises(
        ValueError, match=r"sort_logits must have shape .* n=3 .* got \(2, 2, 4, 4\)"
    ):
        sinkhorn_attention(q, k, v, block_size=BLOCK, sort_logits=jnp.zeros((2, 2, 4, 4)))
    with pytest.raises(ValueError, match="sortcut_blocks=4 exceeds the 3 blocks"):
        sinkhorn_attention(q, k, v, block_size=BLOCK, sortcut_blocks=4)
    with pytest.raises(ValueError, match="self-attention"):
        sinkhorn_attention(q[:, :5], k, v, block_size=BLOCK)
