import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import testing
from effjax.attention import block_sparse_attention, block_sparse_mask, dot_product_attention

# One compilation per case instead of one per operation: keeps the tests fast.
jit_block_sparse = jax.jit(
    block_sparse_attention,
    static_argnames=(
        "block_size",
        "num_random_blocks",
        "num_global_blocks",
        "is_causal",
        "scale",
        "per_head",
    ),
)

SLOW = pytest.mark.slow  # the other cases run with the slow tests

CASES = [  # (block, random, global, per_head, causal) with T = 37, N = 4, K = 2
    pytest.param(4, 2, 2, False, False, marks=SLOW),
    (4, 2, 2, False, True),
    (4, 1, 1, True, False),
    pytest.param(4, 1, 0, False, True, marks=SLOW),
    pytest.param(16, 3, 2, False, False, marks=SLOW),  # 3 blocks: the pattern reaches every block
    pytest.param(64, 1, 2, False, True, marks=SLOW),  # shorter than one block
]


@pytest.mark.parametrize(("block", "r", "g", "per_head", "is_causal"), CASES)
def test_equals_dense_with_block_mask(rng, block, r, g, per_head, is_causal):
    t, n, k = 37, 4, 2
    q, kk, v = testing.random_qkv(rng, batch=2, q_len=t, num_heads=n, num_kv_heads=k)
    padding = testing.random_padding_mask(jax.random.key(3), 2, t)
    key = jax.random.key(7)
    options = {"block_size": block, "num_random_blocks": r, "num_global_blocks": g}
    mask = block_sparse_mask(
        t,
        rng=key,
        is_causal=is_causal,
        num_heads=n if per_head else None,
        num_kv_heads=k if per_head else None,
        **options,
    )
    testing.check_against_reference(
        jit_block_sparse,
        q,
        kk,
        v,
        mask=mask,
        padding_mask=padding,
        is_causal=is_causal,
        rng=key,
        per_head=per_head,
        **options,
    )


def block_rows(mask: jax.Array, block: int) -> np.ndarray:
    return np.asarray(mask[::block, ::block])


def test_pattern_is_bigbird_itc():
    block, num_blocks, r, g = 4, 16, 2, 2
    pattern = block_rows(
        block_sparse_mask(
            block * num_blocks,
            rng=jax.random.key(1),
            block_size=block,
            num_random_blocks=r,
            num_global_blocks=g,
        ),
        block,
    )
    assert pattern[:g].all() and pattern[:, :g].all()  # global rows and columns
    for i in range(g, num_blocks):
        window = set(range(max(i - 1, 0), min(i + 2, num_blocks)))
        seen = set(np.flatnonzero(pattern[i]))
        assert window | set(range(g)) <= seen
        # r random blocks, plus one for a window slot outside [g, Tb): 3 + g + r in all.
        edge = i in (g, num_blocks - 1)
        assert len(seen - window - set(range(g))) == r + edge
        assert len(seen) == 3 + g + r


@pytest.mark.parametrize(
    ("num_blocks", "r", "g", "is_causal"),
    [(8, 3, 2, False), (7, 3, 2, True), (5, 2, 0, False), (4, 1, 1, True)],
)
def test_a_budget_that_covers_every_block_is_dense_attention(rng, num_blocks, r, g, is_causal):
    # 3 + g + r (causal 2 + g + r) == Tb: every row reads every block (BigBird's short input).
    block = 4
    q, k, v = testing.random_qkv(rng, batch=1, q_len=num_blocks * block - 1, num_kv_heads=2)
    out = jit_block_sparse(
        q,
        k,
        v,
        rng=jax.random.key(1),
        block_size=block,
        num_random_blocks=r,
        num_global_blocks=g,
        is_causal=is_causal,
    )
    want = dot_product_attention(q, k, v, is_causal=is_causal)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_causal_pattern_keeps_only_the_past():
    block, num_blocks = 4, 16
    pattern = block_rows(
        block_sparse_mask(
            block * num_blocks, rng=jax.random.key(1), block_size=block, is_causal=True
        ),
        block,
    )
    for i in range(2, num_blocks):
        assert not pattern[i, i + 1 :].any()
        assert pattern[i, i] and pattern[i, i - 1]
        assert pattern[i, : i - 1].sum() == min(2 + 3, i - 1)  # globals + random (or all)


def test_same_key_same_pattern_new_key_new_pattern_under_jit(rng):
    q, k, v = testing.random_qkv(rng, q_len=37, num_kv_heads=2)
    fn = jax.jit(lambda key: block_sparse_attention(q, k, v, rng=key, block_size=4))
    a, b = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(fn(a), fn(a))
    assert not np.allclose(fn(a), fn(b))
    mask_fn = jax.jit(lambda key: block_sparse_mask(37, rng=key, block_size=4))
    assert (mask_fn(a) != mask_fn(b)).any()
    want = dot_product_attention(q, k, v, mask=mask_fn(b)[None, None])
    np.testing.assert_allclose(fn(b), want, atol=1e-5)


def test_per_head_patterns_differ():
    masks = block_sparse_mask(64, rng=jax.random.key(0), block_size=4, num_heads=4, num_kv_heads=2)
    assert masks.shape == (4, 64, 64)
    np.testing.assert_array_equal(masks[0], masks[1])  # a GQA group shares its pattern
    assert (masks[0] != masks[2]).any()


def test_bfloat16_inputs(rng):
    q, k, v = testing.random_qkv(rng, q_len=37, num_kv_heads=2, dtype=jnp.bfloat16)
    key = jax.random.key(3)
    out = jit_block_sparse(q, k, v, rng=key, block_size=4, num_random_blocks=1)
    assert out.dtype == jnp.bfloat16
    mask = block_sparse_mask(37, rng=key, block_size=4, num_random_blocks=1)
    want = dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask=mask[None, None])
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=3e-2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"block_size": 0}, "block_size"),
        ({"block_size": -4}, "block_size"),
        ({"num_random_blocks": -1}, "num_random_blocks"),
        ({"num_global_blocks": -1}, "num_global_blocks"),
        ({"rng": None}, "rng"),
    ],
)
def test_bad_arguments_raise(rng, kwargs, name):
    q, k, v = testing.random_qkv(rng, q_len=8)
    with pytest.raises(ValueError, match=name):
        block_sparse_attention(q, k, v, **{"rng": jax.random.key(0), **kwargs})
    if "rng" not in kwargs:
        with pytest.raises(ValueError, match=name):
            block_sparse_mask(8, rng=jax.random.key(0), **kwargs)
