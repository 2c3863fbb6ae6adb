import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import testing
from effjax.attention import dot_product_attention, get, lsh_attention, lsh_buckets

# Compiled once per configuration: eager op-by-op dispatch of the sort/gather pipeline is slow.
lsh = jax.jit(
    lsh_attention,
    static_argnames=(
        "num_hashes",
        "num_buckets",
        "chunk_size",
        "shared_qk",
        "is_causal",
        "scale",
        "strict_causal",
    ),
)


def lsh_window_mask(
    query,
    key,
    *,
    rng,
    num_hashes,
    num_buckets,
    chunk_size,
    padding_mask=None,
    shared_qk=False,
    strict=False,
):
    """The dense mask lsh_attention is documented to equal, built here from lsh_buckets alone.

    Per round: sort queries and keys by (bucket, position), padded keys (and with shared QK,
    padded queries) in an extra last bucket, cut n = ceil(max(T, S) / chunk_size) equal
    chunks, and query chunk i sees key chunks i and i - 1. With ``strict`` (strict causal
    mode): the j-th query (key) of a bucket, in position order, is in that bucket's chunk
    j // c, and sees the keys of its bucket's chunks of the same and the previous index.
    Rounds are OR-ed. [B, N, T, S].
    """
    b, t, n, _ = query.shape
    s, num_kv = key.shape[1], key.shape[2]
    num_chunks = -(-max(t, s) // chunk_size)
    q_chunk, k_chunk = -(-t // num_chunks), -(-s // num_chunks)
    options = {"rng": rng, "num_hashes": num_hashes, "num_buckets": num_buckets}
    qb = np.array(lsh_buckets(query, **options))
    kb = np.array(lsh_buckets(key, **options))
    if padding_mask is not None:
        padded = ~np.asarray(padding_mask)[:, :, None, None]
        kb = np.where(padded, num_buckets, kb)
        qb = np.where(padded, num_buckets, qb) if shared_qk else qb

    def chunk_ids(buckets, size):
        if strict:  # (bucket, index within the bucket // size), as one number
            within = np.array([np.sum(buckets[:i] == b) for i, b in enumerate(buckets)])
            return buckets * 10**6 + within // size
        ranks = np.empty_like(buckets)
        ranks[np.lexsort((np.arange(len(buckets)), buckets))] = np.arange(len(buckets))
        return ranks // size

    mask = np.zeros((b, n, t, s), bool)
    for bi in range(b):
        for head in range(n):
            for r in range(num_hashes):
                qc = chunk_ids(qb[bi, :, head, r], q_chunk)
                kc = chunk_ids(kb[bi, :, head // (n // num_kv), r], k_chunk)
                gap = qc[:, None] - kc[None, :]
                mask[bi, head] |= (gap == 0) | (gap == 1)
    return jnp.asarray(mask)


def shared_qk_reference(query, value, *, mask=None, **kwargs):
    """Dense attention with keys = normalised queries, self only when nothing else is seen."""
    key = query / jnp.linalg.norm(query, axis=-1, keepdims=True)
    b, t, n, _ = query.shape
    visible = jnp.ones((b, n, t, t), bool) if mask is None else mask
    if kwargs.get("is_causal"):
        visible = visible & jnp.tril(jnp.ones((t, t), bool))[None, None]
    if kwargs.get("padding_mask") is not None:
        visible = visible & kwargs["padding_mask"][:, None, None, :]
    others = visible & ~jnp.eye(t, dtype=bool)[None, None]
    self_only = ~jnp.any(others, axis=-1, keepdims=True)
    full_mask = others | (self_only & jnp.eye(t, dtype=bool)[None, None])
    return dot_product_attention(query, key, value, mask=full_mask, **kwargs)


OPTIONS = {"rng": jax.random.key(7), "num_buckets": 4}


SLOW = pytest.mark.slow  # each case compiles a forward and a gradient: keep the default few


@pytest.mark.parametrize(("t", "chunk_size", "num_hashes", "is_causal"), [
    (16, 16, 3, True),
    (13, 64, 1, False),
    pytest.param(16, 16, 1, False, marks=SLOW),
    pytest.param(13, 64, 3, True, marks=SLOW),
])  # fmt: skip
def test_one_chunk_equals_dense(t, chunk_size, num_hashes, is_causal):
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=t, num_heads=4, num_kv_heads=2)
    padding = testing.random_padding_mask(jax.random.key(1), 2, t)
    testing.check_against_reference(
        lsh,
        q,
        k,
        v,
        is_causal=is_causal,
        padding_mask=padding,
        num_hashes=num_hashes,
        chunk_size=chunk_size,
        **OPTIONS,
    )


@SLOW
def test_one_chunk_cross_attention_equals_dense():
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=9, kv_len=14, num_kv_heads=1)
    testing.check_against_reference(
        lsh, q, k, v, is_causal=True, num_hashes=2, chunk_size=14, **OPTIONS
    )


@pytest.mark.parametrize(("t", "s", "num_kv_heads", "is_causal", "num_hashes"), [
    (40, 40, 2, False, 1),
    (12, 20, 1, True, 2),  # causal cross-attention, two rounds, separate queries and keys
    pytest.param(37, 37, 4, True, 1, marks=SLOW),
    pytest.param(24, 40, 1, False, 3, marks=SLOW),
])  # fmt: skip
def test_equals_dense_on_its_bucket_mask(t, s, num_kv_heads, is_causal, num_hashes):
    q, k, v = testing.random_qkv(
        jax.random.key(2), q_len=t, kv_len=s, num_heads=4, num_kv_heads=num_kv_heads
    )
    padding = testing.random_padding_mask(jax.random.key(3), 2, s)
    options = {**OPTIONS, "num_hashes": num_hashes, "chunk_size": 8}
    mask = lsh_window_mask(q, k, padding_mask=padding, strict=is_causal, **options)
    assert not bool(jnp.all(mask)), "the test needs a sparse pattern"
    testing.check_against_reference(
        lsh, q, k, v, mask=mask, is_causal=is_causal, padding_mask=padding, **options
    )


@pytest.mark.parametrize(
    ("chunk_size", "is_causal"), [(8, True), pytest.param(32, False, marks=SLOW)]
)
def test_shared_qk_matches_dense_with_self_rule(chunk_size, is_causal):
    q, _, v = testing.random_qkv(jax.random.key(4), q_len=30, num_heads=2)
    padding = testing.random_padding_mask(jax.random.key(5), 2, 30)
    options = {**OPTIONS, "num_hashes": 2, "chunk_size": chunk_size, "shared_qk": True}
    mask = None
    if chunk_size < 30:
        mask = lsh_window_mask(
            q,
            q,
            padding_mask=padding,
            shared_qk=True,
            strict=is_causal,
            **{k: options[k] for k in ("rng", "num_hashes", "num_buckets", "chunk_size")},
        )
    kwargs = {"is_causal": is_causal, "padding_mask": padding}

    def variant(q, v):
        return lsh(q, None, v, **options, **kwargs)

    def reference(q, v):
        return shared_qk_reference(q, v, mask=mask, **kwargs)

    np.testing.assert_allclose(variant(q, v), reference(q, v), atol=1e-5)
    c = jax.random.normal(jax.random.key(6), v.shape)
    got = jax.grad(lambda q, v: jnp.sum(variant(q, v) * c), argnums=(0, 1))(q, v)
    want = jax.grad(lambda q, v: jnp.sum(reference(q, v) * c), argnums=(0, 1))(q, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_shared_qk_accepts_query_as_key_and_grouped_values():
    q, _, v = testing.random_qkv(jax.random.key(8), q_len=16, num_heads=4, num_kv_heads=2)
    options = {**OPTIONS, "num_hashes": 2, "chunk_size": 16, "shared_qk": True}
    # Inside one jit the query and the key are the same tracer, as in a layer's own code.
    out = jax.jit(lambda q, v: lsh_attention(q, q, v, **options))(q, v)
    np.testing.assert_allclose(out, lsh(q, None, v, **options), atol=1e-6)
    want = shared_qk_reference(q, jnp.repeat(v, 2, axis=2))
    np.testing.assert_allclose(out, want, atol=1e-5)


def duplicated_sequence(rng, half=64, heads=2, dim=16):
    """Shared-QK inputs [w, w]: each token's best key (apart from itself) is its copy,
    `half` positions away, which dense attention finds and LSH has to hash together."""
    kx, kv = jax.random.split(rng)
    w = jax.random.normal(kx, (1, half, heads, dim))
    x = jnp.concatenate([w, w], axis=1)
    v = jax.random.normal(kv, x.shape)
    return x, v


def test_more_hash_rounds_recover_far_duplicates():
    errors = {r: [] for r in (1, 2, 4, 8)}
    for seed in range(4):
        x, v = duplicated_sequence(jax.random.key(seed))
        kwargs = {"scale": 4.0}
        dense = shared_qk_reference(x, v, **kwargs)
        for r in errors:
            out = lsh(
                x,
                None,
                v,
                rng=jax.random.key(100 + seed),
                num_hashes=r,
                num_buckets=16,
                chunk_size=16,
                shared_qk=True,
                **kwargs,
            )
            errors[r].append(float(jnp.mean(jnp.abs(out - dense))))
    mean = {r: np.mean(e) for r, e in errors.items()}
    dense_scale = float(jnp.mean(jnp.abs(dense)))
    assert mean[1] > 0.1 * dense_scale, f"one round should miss some duplicates: {mean}"
    assert mean[8] < 0.01 * dense_scale, f"8 rounds should recover dense attention: {mean}"
    assert mean[1] >= mean[2] >= mean[4] >= mean[8], mean


def test_deterministic_for_a_key_and_new_pattern_for_a_new_key():
    q, k, v = testing.random_qkv(jax.random.key(9), q_len=48)
    options = {"num_hashes": 1, "num_buckets": 8, "chunk_size": 8}
    fn = jax.jit(lambda q, k, v, rng: lsh(q, k, v, rng=rng, **options))
    a = fn(q, k, v, jax.random.key(1))
    np.testing.assert_array_equal(a, fn(q, k, v, jax.random.key(1)))
    assert not np.allclose(a, fn(q, k, v, jax.random.key(2)))


@SLOW
def test_bfloat16_inputs_give_bfloat16_output_close_to_float32():
    q, k, v = testing.random_qkv(jax.random.key(10), q_len=32)
    options = {**OPTIONS, "num_hashes": 2, "chunk_size": 8}
    low = lsh(*(x.astype(jnp.bfloat16) for x in (q, k, v)), **options)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(low.astype(jnp.float32), lsh(q, k, v, **options), atol=5e-2)


@SLOW
def test_vmap_matches_batch():
    q, k, v = testing.random_qkv(jax.random.key(11), q_len=24)
    options = {**OPTIONS, "num_hashes": 2, "chunk_size": 8}
    mapped = jax.vmap(lambda q, k, v: lsh(q[None], k[None], v[None], **options)[0])
    np.testing.assert_allclose(mapped(q, k, v), lsh(q, k, v, **options), atol=1e-6)


@pytest.mark.parametrize(("shared_qk", "is_causal"), [(False, False), (True, True)])
def test_padding_content_changes_no_real_output(shared_qk, is_causal):
    q, k, v = testing.random_qkv(jax.random.key(11), q_len=32, num_heads=2)
    padding = jnp.ones((2, 32), bool).at[:, 20:].set(False).at[:, 5].set(False)
    noise = 5 * jax.random.normal(jax.random.key(12), q.shape)
    options = {**OPTIONS, "num_hashes": 2, "chunk_size": 8, "shared_qk": shared_qk}

    def run(q, k):
        return lsh(
            q, None if shared_qk else k, v, padding_mask=padding, is_causal=is_causal, **options
        )

    pad = ~padding[:, :, None, None]
    a = run(q, k)
    b = run(jnp.where(pad, noise, q) if shared_qk else q, jnp.where(pad, noise, k))
    rows = padding if shared_qk else jnp.ones_like(padding)  # shared QK: padded rows are keys too
    np.testing.assert_allclose(a[rows], b[rows], atol=1e-6)


@pytest.mark.parametrize("shared_qk", [False, True])
def test_causal_outputs_do_not_depend_on_later_tokens(shared_qk):
    # Redraw the last 64 of 128 tokens: strict causal mode leaves the first 64 outputs as
    # they were; the paper's layout (strict_causal=False) lets the new hashes move them.
    x, v = (jax.random.normal(jax.random.key(i), (1, 128, 2, 16)) for i in (0, 1))
    y = x.at[:, 64:].set(jax.random.normal(jax.random.key(2), (1, 64, 2, 16)))
    options = {"rng": jax.random.key(3), "num_hashes": 2, "num_buckets": 8, "chunk_size": 32}
    options |= {"is_causal": True, "shared_qk": shared_qk}
    leaks = {}
    for strict in (True, False):
        a, b = (
            lsh(t, None if shared_qk else t, v, strict_causal=strict, **options) for t in (x, y)
        )
        leaks[strict] = float(jnp.max(jnp.abs(a[:, :64] - b[:, :64])))
    assert leaks[True] == 0.0
    assert leaks[False] > 0.1, leaks  # the documented leak of the paper's layout


def test_buckets_are_the_argmax_over_rotated_and_negated_projections():
    # The hash as the paper defines it, in numpy, with the documented rotations.
    x = jax.random.normal(jax.random.key(3), (2, 64, 2, 6))
    rng, num_buckets = jax.random.key(9), 8
    got = np.asarray(lsh_buckets(x, rng=rng, num_hashes=3, num_buckets=num_buckets))
    for r in range(3):
        rotation = np.asarray(jax.random.normal(jax.random.fold_in(rng, r), (6, num_buckets // 2)))
        projected = np.asarray(x) @ rotation
        want = np.argmax(np.concatenate([projected, -projected], axis=-1), axis=-1)
        np.testing.assert_array_equal(got[..., r], want)
    # Antipodal vectors land half the buckets apart, and every bucket is used.
    flipped = np.asarray(lsh_buckets(-x, rng=rng, num_hashes=3, num_buckets=num_buckets))
    np.testing.assert_array_equal(flipped, (got + num_buckets // 2) % num_buckets)
    assert set(np.unique(got)) == set(range(num_buckets))


def test_registered_as_lsh():
    assert get("lsh") is lsh_attention


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"num_buckets": 5}, "num_buckets"),
        ({"num_buckets": 0}, "num_buckets"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": -4}, "chunk_size"),
        ({"num_hashes": 0}, "num_hashes"),
    ],
)
def test_bad_options_raise(overrides, name):
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=8)
    options = {**OPTIONS, "num_hashes": 1, "chunk_size": 4, **overrides}
    with pytest.raises(ValueError, match=name):
        lsh_attention(q, k, v, **options)


def test_shared_qk_rejects_a_separate_key():
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=8)
    with pytest.raises(ValueError, match="key"):
        lsh_attention(q, k, v, **OPTIONS, num_hashes=1, chunk_size=4, shared_qk=True)
    with pytest.raises(ValueError, match="key"):
        lsh_attention(q, None, v, **OPTIONS, num_hashes=1, chunk_size=4)
