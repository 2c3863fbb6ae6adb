import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax import testing
from effjax.attention import dot_product_attention, persistent_memory_attention

persistent = jax.jit(persistent_memory_attention, static_argnames=("is_causal",))


def reference(q, k, v, mk, mv, padding, is_causal):
    """Dense attention over [memory; sequence] with a hand-built mask: memory always seen."""
    b, t, s, m = q.shape[0], q.shape[1], k.shape[1], mk.shape[1]
    seq = np.ones((t, s), bool)
    if is_causal:
        seq = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
    mask = np.concatenate([np.ones((t, m), bool), seq], axis=1)[None, None]
    mask = mask & np.concatenate([np.ones((b, m), bool), padding], axis=1)[:, None, None, :]
    keys = jnp.concatenate([jnp.broadcast_to(mk.transpose(1, 0, 2), (b, m, *mk.shape[::2])), k], 1)
    values = jnp.concatenate(
        [jnp.broadcast_to(mv.transpose(1, 0, 2), (b, m, *mv.shape[::2])), v], 1
    )
    return dot_product_attention(q, keys, values, mask=jnp.asarray(mask))


@pytest.mark.parametrize(("t", "s", "is_causal"), [
    (9, 9, True),
    (5, 9, False),
    pytest.param(9, 9, False, marks=pytest.mark.slow),
])  # fmt: skip
def test_equals_dense_over_memory_and_sequence(t, s, is_causal):
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=t, kv_len=s, num_heads=4, num_kv_heads=2)
    mk, mv = jax.random.normal(jax.random.key(1), (2, 2, 3, 8))
    # Row 1 has no real key at all: its queries still see the memory.
    padding = np.asarray(testing.random_padding_mask(jax.random.key(2), 2, s)).copy()
    padding[1] = False
    args = (q, k, v, mk, mv)

    def variant(q, k, v, mk, mv):
        return persistent(
            q, k, v, memory_key=mk, memory_value=mv, padding_mask=jnp.asarray(padding),
            is_causal=is_causal,
        )  # fmt: skip

    def ref(q, k, v, mk, mv):
        return reference(q, k, v, mk, mv, padding, is_causal)

    np.testing.assert_allclose(variant(*args), jax.jit(ref)(*args), atol=1e-5)
    assert np.all(np.abs(np.asarray(variant(*args))[1]) > 0), "memory-only rows are not zero"
    c = jax.random.normal(jax.random.key(3), (2, t, 4, 8))
    got = jax.jit(jax.grad(lambda *a: jnp.sum(variant(*a) * c), argnums=range(5)))(*args)
    want = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a) * c), argnums=range(5)))(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_registered_and_rejects_bad_memory():
    assert ea.get("persistent_memory") is persistent_memory_attention
    q, k, v = testing.random_qkv(jax.random.key(4), q_len=6, num_heads=4, num_kv_heads=2)
    mem = jnp.zeros((2, 3, 8))
    with pytest.raises(
        ValueError, match=r"memory_key must have shape \[K, M, H\] .* got \(4, 3, 8\)"
    ):
        persistent_memory_attention(q, k, v, memory_key=jnp.zeros((4, 3, 8)), memory_value=mem)
    with pytest.raises(ValueError, match=r"same number of slots"):
        persistent_memory_attention(q, k, v, memory_key=mem, memory_value=jnp.zeros((2, 5, 8)))
