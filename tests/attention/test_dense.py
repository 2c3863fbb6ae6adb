import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effjax import testing
from effjax.attention import dot_product_attention, masks


def numpy_attention(q, k, v, mask=None, scale=None):
    """Plain numpy reference with full-mask rows giving zeros. q [B,T,N,H], k/v [B,S,K,H]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    logits = np.einsum("btnh,bsnh->bnts", q, k) * scale
    if mask is None:
        mask = np.ones(logits.shape, bool)
    mask = np.broadcast_to(mask, logits.shape)
    logits = np.where(mask, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0)
    w = np.exp(logits - row_max) * mask
    denom = w.sum(-1, keepdims=True)
    w = np.divide(w, denom, out=np.zeros_like(w), where=denom > 0)
    return np.einsum("bnts,bsnh->btnh", w, v)


class DenseVsJaxTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("mha", 4, 4, False),
        ("gqa", 4, 2, False),
        ("mqa", 4, 1, False),
        ("mha_causal", 4, 4, True),
        ("gqa_causal", 6, 3, True),
    )
    def test_matches_jax_nn(self, num_heads, num_kv_heads, is_causal):
        q, k, v = testing.random_qkv(
            jax.random.key(0), q_len=13, num_heads=num_heads, num_kv_heads=num_kv_heads
        )
        bias = jax.random.normal(jax.random.key(3), (1, num_heads, 13, 13))
        # jax.nn averages all values on rows with no key; effjax returns zeros: keep the diagonal.
        mask = (
            jax.random.bernoulli(jax.random.key(4), 0.8, (2, 1, 13, 13))
            | jnp.eye(13, dtype=bool)[None, None]
        )
        fn = self.variant(functools.partial(dot_product_attention, is_causal=is_causal))
        got = fn(q, k, v, mask=mask, bias=bias)
        want = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients_match_jax_nn(self):
        q, k, v = testing.random_qkv(jax.random.key(1), q_len=9, num_heads=4, num_kv_heads=2)
        c = jax.random.normal(jax.random.key(2), q.shape)

        def loss(fn, q, k, v):
            return jnp.sum(fn(q, k, v, is_causal=True) * c)

        got = self.variant(jax.grad(functools.partial(loss, dot_product_attention), (0, 1, 2)))(
            q, k, v
        )
        want = jax.grad(functools.partial(loss, jax.nn.dot_product_attention), (0, 1, 2))(q, k, v)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


class DenseVsNumpyTest(parameterized.TestCase):
    @parameterized.parameters((7, 7), (3, 11), (1, 5))
    def test_bottom_right_causal_with_padding(self, q_len, kv_len):
        q, k, v = testing.random_qkv(
            jax.random.key(5), q_len=q_len, kv_len=kv_len, num_heads=4, num_kv_heads=2
        )
        pad = testing.random_padding_mask(jax.random.key(6), 2, kv_len)
        got = dot_product_attention(q, k, v, padding_mask=pad, is_causal=True, scale=0.3)
        mask = (
            np.asarray(masks.causal_mask(q_len, kv_len))[None, None]
            & np.asarray(pad)[:, None, None, :]
        )
        np.testing.assert_allclose(got, numpy_attention(q, k, v, mask, 0.3), atol=1e-5)

    def test_bottom_right_alignment_by_hand(self):
        # T=2 queries against S=3 keys: the last query sees all keys, the first sees two.
        np.testing.assert_array_equal(
            masks.causal_mask(2, 3), [[True, True, False], [True, True, True]]
        )

    def test_query_seeing_no_key_returns_zeros_with_finite_gradient(self):
        q, k, v = testing.random_qkv(jax.random.key(7), q_len=4, kv_len=6)
        mask = jnp.ones((1, 1, 4, 6), bool).at[:, :, 2, :].set(False)
        out = dot_product_attention(q, k, v, mask=mask)
        np.testing.assert_array_equal(out[:, 2], 0.0)
        grads = jax.grad(
            lambda q, k, v: dot_product_attention(q, k, v, mask=mask).sum(), (0, 1, 2)
        )(q, k, v)
        for g in grads:
            assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(grads[0][:, 2], 0.0)

    def test_all_padding_gives_zeros(self):
        q, k, v = testing.random_qkv(jax.random.key(8), q_len=3)
        pad = jnp.zeros((2, 3), bool).at[0].set(True)
        out = dot_product_attention(q, k, v, padding_mask=pad)
        np.testing.assert_array_equal(out[1], 0.0)
        np.testing.assert_allclose(out[0], numpy_attention(q, k, v)[0], atol=1e-5)

    def test_bfloat16_uses_float32_softmax(self):
        q, k, v = testing.random_qkv(jax.random.key(9), q_len=32, head_dim=16)
        qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
        out = dot_product_attention(qb, kb, vb)
        assert out.dtype == jnp.bfloat16
        want = numpy_attention(
            qb.astype(jnp.float32), kb.astype(jnp.float32), vb.astype(jnp.float32)
        )
        # Only the final cast to bfloat16 rounds: error within bfloat16's half-ulp of the output.
        np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=1e-2, rtol=8e-3)

    def test_value_head_dim_may_differ(self):
        q, k, _ = testing.random_qkv(jax.random.key(10), q_len=5)
        v = jax.random.normal(jax.random.key(11), (2, 5, 4, 3))
        np.testing.assert_allclose(
            dot_product_attention(q, k, v), numpy_attention(q, k, v), atol=1e-5
        )


class BadInputTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("query_rank", (2, 5, 8), (2, 5, 4, 8), (2, 5, 4, 8), "query must have rank 4"),
        ("batch", (2, 5, 4, 8), (3, 5, 4, 8), (3, 5, 4, 8), "batch sizes differ"),
        ("kv_len", (2, 5, 4, 8), (2, 5, 4, 8), (2, 6, 4, 8), "key and value lengths differ"),
        ("head_dim", (2, 5, 4, 8), (2, 5, 4, 6), (2, 5, 4, 6), "head dims differ"),
        ("heads", (2, 5, 4, 8), (2, 5, 3, 8), (2, 5, 3, 8), r"K=3 must divide query heads N=4"),
    )
    def test_shape_errors_name_argument_and_shapes(self, qs, ks, vs, message):
        with pytest.raises(ValueError, match=message) as err:
            dot_product_attention(jnp.zeros(qs), jnp.zeros(ks), jnp.zeros(vs))
        assert str(ks) in str(err.value) or str(qs) in str(err.value)

    def test_padding_mask_shape(self):
        q, k, v = testing.random_qkv(jax.random.key(0), q_len=5)
        with pytest.raises(ValueError, match=r"padding_mask must have shape \[B, S\] = \(2, 5\)"):
            dot_product_attention(q, k, v, padding_mask=jnp.ones((2, 4), bool))

    def test_mask_shape_and_dtype(self):
        q, k, v = testing.random_qkv(jax.random.key(0), q_len=5)
        with pytest.raises(ValueError, match=r"mask must have shape .* got \(1, 1, 5, 4\)"):
            dot_product_attention(q, k, v, mask=jnp.ones((1, 1, 5, 4), bool))
        with pytest.raises(ValueError, match="mask must be bool"):
            dot_product_attention(q, k, v, mask=jnp.ones((1, 1, 5, 5)))

    def test_errors_raise_at_trace_time(self):
        fn = jax.jit(dot_product_attention)
        with pytest.raises(ValueError, match="head dims differ"):
            fn.lower(jnp.zeros((1, 2, 2, 4)), jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2, 3)))


class TransformationsTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.q, self.k, self.v = testing.random_qkv(jax.random.key(0), batch=8, q_len=12)
        self.want = numpy_attention(self.q, self.k, self.v)

    def test_vmap_over_extra_axis(self):
        stack = lambda x: jnp.stack([x, 2 * x])  # noqa: E731
        out = jax.vmap(dot_product_attention)(stack(self.q), stack(self.k), stack(self.v))
        np.testing.assert_allclose(out[0], self.want, atol=1e-5)
        np.testing.assert_allclose(
            out[1], numpy_attention(2 * self.q, 2 * self.k, 2 * self.v), atol=1e-4
        )

    def test_checkpoint_keeps_gradients(self):
        loss = lambda q: dot_product_attention(q, self.k, self.v).sum()  # noqa: E731
        g1 = jax.grad(loss)(self.q)
        g2 = jax.jit(jax.grad(jax.checkpoint(loss)))(self.q)
        np.testing.assert_allclose(g1, g2, atol=1e-6)

    def test_shard_map_over_8_devices(self):
        assert jax.device_count() == 8, "conftest must simulate 8 CPU devices"
        mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "heads"))
        spec = P("data", None, "heads", None)
        fn = jax.jit(
            jax.shard_map(dot_product_attention, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec)
        )
        out = fn(self.q, self.k, self.v)
        assert out.sharding.is_equivalent_to(NamedSharding(mesh, spec), 4)
        np.testing.assert_allclose(out, self.want, atol=1e-5)

    def test_jit_under_named_sharding(self):
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharded = [
            jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (self.q, self.k, self.v)
        ]
        np.testing.assert_allclose(jax.jit(dot_product_attention)(*sharded), self.want, atol=1e-5)

    def test_pmap(self):
        out = jax.pmap(dot_product_attention)(self.q[:, None], self.k[:, None], self.v[:, None])[
            :, 0
        ]
        np.testing.assert_allclose(out, self.want, atol=1e-5)


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
    batch=st.integers(1, 2),
    q_len=st.integers(1, 9),
    extra_kv=st.integers(0, 5),
    kv_heads=st.sampled_from([1, 2]),
    groups=st.integers(1, 3),
    head_dim=st.sampled_from([1, 4]),
    is_causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_shape_matches_numpy(
    batch, q_len, extra_kv, kv_heads, groups, head_dim, is_causal, seed
):
    kv_len = q_len + extra_kv
    q, k, v = testing.random_qkv(
        jax.random.key(seed),
        batch=batch,
        q_len=q_len,
        kv_len=kv_len,
        num_heads=kv_heads * groups,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
    )
    pad = testing.random_padding_mask(jax.random.key(seed + 1), batch, kv_len)
    mask = np.asarray(pad)[:, None, None, :]
    if is_causal:
        mask = mask & np.asarray(masks.causal_mask(q_len, kv_len))[None, None]
    got = dot_product_attention(q, k, v, padding_mask=pad, is_causal=is_causal)
    np.testing.assert_allclose(got, numpy_attention(q, k, v, mask), atol=1e-5)
