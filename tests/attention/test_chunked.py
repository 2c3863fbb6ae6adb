import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effjax import testing
from effjax.attention import _common, chunked_attention, dot_product_attention
from effjax.attention.chunked import chunked_attention_with_lse
from effjax.bench import measure

jit_chunked = jax.jit(
    chunked_attention, static_argnames=("is_causal", "scale", "block_q", "block_k")
)

# (T, S, K, block_q, block_k, causal, padded) with N = 4: lengths that are not multiples of the
# blocks, T < S (decoding against a cache) and T > S (early queries see no key under the
# bottom-right causal mask), GQA and MQA, one block covering everything.
SLOW = pytest.mark.slow  # the other cases run with the slow tests
CASES = [
    (13, 13, 2, 4, 5, True, True),
    (19, 7, 1, 4, 3, True, False),
    pytest.param(13, 13, 4, 4, 5, False, True, marks=SLOW),
    pytest.param(7, 19, 2, 3, 4, True, True, marks=SLOW),
    pytest.param(10, 17, 1, 16, 32, False, False, marks=SLOW),
]


@pytest.mark.parametrize(("t", "s", "k", "bq", "bk", "is_causal", "padded"), CASES)
def test_equals_dense_forward_and_gradients(rng, t, s, k, bq, bk, is_causal, padded):
    q, kk, v = testing.random_qkv(rng, batch=2, q_len=t, kv_len=s, num_heads=4, num_kv_heads=k)
    testing.check_against_reference(
        jit_chunked,
        q,
        kk,
        v,
        padding_mask=testing.random_padding_mask(jax.random.key(3), 2, s) if padded else None,
        is_causal=is_causal,
        block_q=bq,
        block_k=bk,
    )


def test_unmasked_tiles_with_a_custom_scale(rng):
    # Blocks divide the lengths and nothing is masked: the path without any tile mask.
    q, k, v = testing.random_qkv(rng, batch=1, q_len=32, kv_len=48, num_heads=2, head_dim=4)
    testing.check_against_reference(jit_chunked, q, k, v, scale=0.3, block_q=16, block_k=16)


def test_log_sum_exp_and_its_gradient_equal_jax_logsumexp(rng):
    # Other paths merge rows through the lse (and jax.nn returns it): it must be exact and
    # differentiable, including the rows of a sequence with no key at all.
    q, k, v = testing.random_qkv(rng, batch=2, q_len=9, kv_len=11, num_heads=4, num_kv_heads=2)
    padding = jnp.array([[True] * 7 + [False] * 4, [False] * 11])
    grouped = functools.partial(_common.group_heads, num_kv_heads=2)

    def chunked_lse(q, k):
        return chunked_attention_with_lse(
            grouped(q), k, v, key_valid=padding, is_causal=True, scale=0.5, block_q=4, block_k=4
        )[1][0]

    def reference_lse(q, k):
        logits = jnp.einsum("btkgh,bskh->btkgs", grouped(q), k) * 0.5
        visible = (
            padding[:, None, None, None, :]
            & (jnp.arange(11)[None, :] <= jnp.arange(9)[:, None] + 2)[None, :, None, None, :]
        )
        return jax.nn.logsumexp(jnp.where(visible, logits, -jnp.inf), axis=-1)[0]

    np.testing.assert_allclose(chunked_lse(q, k), reference_lse(q, k), rtol=1e-5)
    assert np.all(
        np.asarray(
            chunked_attention_with_lse(
                grouped(q), k, v, key_valid=padding, is_causal=True, scale=0.5
            )[1][1]
        )
        == _common.MASK_VALUE
    )
    got = jax.grad(lambda q, k: jnp.sum(chunked_lse(q, k)), argnums=(0, 1))(q, k)
    want = jax.grad(lambda q, k: jnp.sum(reference_lse(q, k)), argnums=(0, 1))(q, k)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_fully_padded_rows_give_zeros_and_zero_grads(rng):
    q, k, v = testing.random_qkv(rng, batch=2, q_len=9, num_heads=2)
    padding = jnp.array([[True] * 9, [False] * 9])  # the second sequence has no key at all
    fn = functools.partial(jit_chunked, padding_mask=padding, block_q=4, block_k=4)
    np.testing.assert_array_equal(fn(q, k, v)[1], 0.0)
    grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_array_equal(g[1], 0.0)


def test_bfloat16_inputs_give_bfloat16_close_to_float32(rng):
    q, k, v = testing.random_qkv(rng, q_len=10, kv_len=17, num_kv_heads=2, dtype=jnp.bfloat16)
    out = jit_chunked(q, k, v, is_causal=True, block_q=4, block_k=8)
    assert out.dtype == jnp.bfloat16
    want = dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), is_causal=True)
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=3e-2)
    grads = jax.grad(lambda q: jnp.sum(jit_chunked(q, k, v, block_q=4).astype(jnp.float32)))(q)
    assert grads.dtype == jnp.bfloat16


def test_composes_with_vmap_checkpoint_and_shard_map(rng):
    q, k, v = testing.random_qkv(rng, batch=8, q_len=11, num_heads=4, num_kv_heads=2)
    want = dot_product_attention(q, k, v, is_causal=True)
    fn = functools.partial(chunked_attention, is_causal=True, block_q=4, block_k=4)

    out = jax.vmap(lambda q, k, v: fn(q[None], k[None], v[None])[0])(q, k, v)
    np.testing.assert_allclose(out, want, atol=1e-5)

    loss = lambda fn, q: jnp.sum(fn(q, k, v) ** 2)  # noqa: E731
    causal_dense = functools.partial(dot_product_attention, is_causal=True)
    g_want = jax.grad(functools.partial(loss, causal_dense))(q)
    g_got = jax.jit(jax.grad(jax.checkpoint(functools.partial(loss, fn))))(q)
    np.testing.assert_allclose(g_got, g_want, atol=1e-5)

    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "heads"))
    spec = P("data", None, "heads", None)
    sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec))
    out = sharded(q, k, v)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, spec), 4)
    np.testing.assert_allclose(out, want, atol=1e-5)


def _fwd_bwd_bytes(t: int) -> int:
    shape = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
    loss = lambda q, k, v: jnp.sum(chunked_attention(q, k, v, block_q=64, block_k=64))  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
    return measure.compiled_bytes(compiled)


def test_forward_backward_memory_grows_linearly():
    # The compiler's own figure (exact): doubling T at most doubles the footprint (+ slack),
    # where the dense reference's [T, S] probabilities would quadruple it.
    small, large = _fwd_bwd_bytes(1024), _fwd_bwd_bytes(4096)
    assert large <= 4.4 * small, (small, large)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"block_q": 0}, "block_q"),
        ({"block_k": -2}, "block_k"),
        ({"padding_mask": jnp.ones((2, 5), bool)}, "padding_mask"),
    ],
)
def test_bad_arguments_raise(rng, kwargs, name):
    q, k, v = testing.random_qkv(rng, q_len=8)
    with pytest.raises(ValueError, match=name):
        chunked_attention(q, k, v, **kwargs)


# dot_product_attention(implementation=...): "chunked" is the CPU default without a dense mask.
def test_dense_implementations_agree_and_chunked_is_the_cpu_default(rng):
    q, k, v = testing.random_qkv(rng, batch=2, q_len=9, kv_len=12, num_heads=4, num_kv_heads=2)
    padding = testing.random_padding_mask(jax.random.key(3), 2, 12)
    lengths = jnp.array([9, 4])
    call = functools.partial(
        dot_product_attention, padding_mask=padding, is_causal=True, query_seq_lengths=lengths,
        return_residual=True,
    )  # fmt: skip
    out, lse = jax.jit(functools.partial(call, implementation="chunked"))(q, k, v)
    want_out, want_lse = jax.jit(functools.partial(call, implementation="xla"))(q, k, v)
    np.testing.assert_allclose(out, want_out, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5)

    def hlo(implementation):
        return jax.jit(functools.partial(dot_product_attention, implementation=implementation))

    long_k = jnp.zeros((2, 513, 2, 8))  # more than one 512-key block
    assert "while" in hlo(None).lower(q, long_k, long_k).as_text()  # the chunked tile loop
    assert "while" not in hlo("xla").lower(q, long_k, long_k).as_text()
    assert "while" not in hlo(None).lower(q, k, v).as_text()  # one key block: xla
    mask = jnp.ones((1, 1, 9, 513), bool).at[0, 0, 0, 1:].set(False)  # not per key: dense
    assert "while" not in hlo(None).lower(q, long_k, long_k, mask=mask).as_text()
    with pytest.raises(ValueError, match=r"implementation='chunked'.*mask"):
        dot_product_attention(q, long_k, long_k, mask=mask, implementation="chunked")
