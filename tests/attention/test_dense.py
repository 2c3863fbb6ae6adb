import functools
import warnings

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
from effjax.attention import dense, dot_product_attention, masks


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
        ("query_rank", (1, 2, 5, 4, 8), (2, 5, 4, 8), (2, 5, 4, 8), "query must have rank <= 4"),
        ("unbatched", (5, 4, 8), (2, 5, 4, 8), (2, 5, 4, 8), "batch sizes differ"),
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
        with pytest.raises(ValueError, match=r"mask must be broadcastable .* got \(1, 1, 5, 4\)"):
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


# --- Drop-in conformance with jax.nn.dot_product_attention --------------------------------


def _logit_array_shape(draw, full_shape, rank):
    """A shape of the given rank (<= 4) broadcastable to ``full_shape``: each axis 1 or full."""
    return tuple(draw(st.sampled_from([1, f])) for f in full_shape[4 - rank :])


def _reference_mask(shape, mask, is_causal, window, kv_lengths):
    """jax's combined mask (top-left aligned; used with T == S for causal and window)."""
    t, s = shape[2:]
    m = np.ones(shape, bool)
    if mask is not None:
        m &= np.broadcast_to(np.asarray(mask).reshape((1,) * (4 - mask.ndim) + mask.shape), shape)
    rel = np.arange(s)[None, :] - np.arange(t)[:, None]
    if is_causal:
        m &= rel <= 0
    if window is not None:
        m &= (rel >= -window[0]) & (rel <= window[1])
    if kv_lengths is not None:
        m &= (np.arange(s)[None, :] < np.asarray(kv_lengths)[:, None])[:, None, None, :]
    return m


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(data=st.data())
def test_conforms_to_jax_nn_for_every_argument(data):
    draw = data.draw
    batched = draw(st.booleans(), "batched")
    b = draw(st.integers(1, 2)) if batched else 1
    kv_heads, groups = draw(st.sampled_from([1, 2])), draw(st.integers(1, 2))
    n, h = kv_heads * groups, draw(st.sampled_from([1, 3]))
    t = draw(st.integers(1, 6))
    is_causal = draw(st.booleans(), "is_causal")
    window = draw(st.none() | st.tuples(st.integers(0, 3), st.integers(0, 3)), "window")
    # jax aligns causal and window masks top-left, effjax bottom-right: they agree when T == S.
    s = t if is_causal or window is not None else draw(st.integers(1, 6))
    mask_rank, bias_rank = draw(st.integers(0, 4), "mask rank"), draw(st.integers(0, 4), "bias")
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    full = (b, n, t, s)
    mask = bias = None
    if mask_rank:
        mask = rng.random(_logit_array_shape(draw, full, mask_rank)) < 0.7
    if bias_rank:
        bias = rng.normal(size=_logit_array_shape(draw, full, bias_rank)).astype(np.float32)
    q_lengths = kv_lengths = None
    if draw(st.booleans(), "seq lengths"):
        q_lengths = rng.integers(0, t + 1, b).astype(np.int32)
        kv_lengths = rng.integers(0, s + 1, b).astype(np.int32)
    q, k, v = testing.random_qkv(
        jax.random.key(seed),
        batch=b,
        q_len=t,
        kv_len=s,
        num_heads=n,
        num_kv_heads=kv_heads,
        head_dim=h,
    )
    if not batched:
        q, k, v = q[0], k[0], v[0]
    options = dict(
        is_causal=is_causal,
        query_seq_lengths=q_lengths,
        key_value_seq_lengths=kv_lengths,
        local_window_size=window,
    )
    # Rows that see no key differ on purpose (effjax: zeros; jax: the mean of all values):
    # compare the others, and weight the others only in the gradient.
    seen = _reference_mask(full, mask, is_causal, window, kv_lengths).any(-1)  # [B, N, T]
    if q_lengths is not None:
        seen |= np.arange(t)[None, None, :] >= q_lengths[:, None, None]
    seen = np.moveaxis(seen, 1, 2).reshape(q.shape[:-1])[..., None]
    cotangent = np.asarray(jax.random.normal(jax.random.key(seed + 1), q.shape)) * seen

    argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)

    # One compiled program per example: the eager op-by-op version costs ~50x more.
    @jax.jit
    def outputs_and_grads(q, k, v, bias):
        results = []
        for fn in (dot_product_attention, jax.nn.dot_product_attention):

            def run(q, k, v, bias, fn=fn):
                return fn(q, k, v, bias, mask, return_residual=True, **options)

            loss = lambda *args, run=run: jnp.sum(run(*args)[0] * cotangent)  # noqa: E731
            results.append((*run(q, k, v, bias), jax.grad(loss, argnums)(q, k, v, bias)))
        return results

    (out, lse, got), (want, want_lse, expected) = outputs_and_grads(q, k, v, bias)
    assert out.shape == want.shape and lse.shape == want_lse.shape
    np.testing.assert_allclose(np.where(seen, out, 0), np.where(seen, want, 0), atol=2e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-6, atol=1e-5)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=2e-5, rtol=1e-5)


class DifferencesFromJaxTest(parameterized.TestCase):
    """Each row of the README's "differences from jax.nn" table."""

    def test_causal_and_window_are_bottom_right_aligned_when_t_differs_from_s(self):
        q, k, v = testing.random_qkv(jax.random.key(20), q_len=3, kv_len=7)
        for options, shifted in (
            ({"is_causal": True}, masks.causal_mask(3, 7)),
            ({"local_window_size": (2, 1)}, masks.window_mask(3, 7, (2, 1))),
        ):

            @jax.jit
            def three(q, k, v, options=options, shifted=shifted):
                return (
                    dot_product_attention(q, k, v, **options),
                    jax.nn.dot_product_attention(q, k, v, mask=shifted[None, None]),
                    jax.nn.dot_product_attention(q, k, v, **options),
                )

            got, spelled, top_left = three(q, k, v)
            # jax with the bottom-right mask spelled out gives the same; jax's own flag does not.
            np.testing.assert_allclose(got, spelled, atol=1e-6)
            assert np.abs(got - top_left).max() > 0.1

    def test_row_with_no_key_is_zero_where_jax_averages(self):
        q, k, v = testing.random_qkv(jax.random.key(21), q_len=4)
        lengths = jnp.array([4, 0], jnp.int32)
        got, lse = dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, return_residual=True
        )
        want, want_lse = jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, return_residual=True
        )
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        np.testing.assert_array_equal(got[1], 0.0)
        np.testing.assert_allclose(
            want[1], jnp.broadcast_to(v[1].mean(0), want[1].shape), atol=1e-6
        )
        np.testing.assert_allclose(lse, want_lse, rtol=1e-6)  # the same finite fill if empty

    def test_complex_inputs_get_the_complex_softmax_where_jax_drops_the_imaginary_part(self):
        parts = testing.random_qkv(jax.random.key(22), batch=1, q_len=4, num_heads=2, head_dim=3)
        q, k, v = (p + 1j * jnp.roll(p, 1, axis=-1) for p in parts)
        mask = jnp.tril(jnp.ones((4, 4), bool))
        got = dot_product_attention(q, k, v, mask=mask)
        assert got.dtype == jnp.complex64
        np.testing.assert_allclose(
            got, numpy_attention_complex(q, k, v, np.asarray(mask)), atol=1e-5
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jax warns that it casts complex to real
            dropped = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
        assert np.abs(got - dropped).max() > 0.1

    @parameterized.parameters(jnp.int32, jnp.bool_, jnp.uint8)
    def test_integer_inputs_are_refused(self, dtype):
        q = jnp.ones((1, 3, 2, 4), dtype)
        with pytest.raises(ValueError, match=r"query must be floating point .* \(1, 3, 2, 4\)"):
            dot_product_attention(q, q, q)
        with pytest.raises(ValueError, match="value must be floating point"):
            dot_product_attention(q.astype(jnp.float32), q.astype(jnp.float32), q)

    def test_local_window_never_builds_a_t_by_s_array(self):
        t = 256
        q, k, v = testing.random_qkv(jax.random.key(23), batch=1, q_len=t, num_heads=1)
        lengths = jnp.array([200], jnp.int32)

        def fn(q, k, v):
            return dot_product_attention(
                q,
                k,
                v,
                local_window_size=(3, 1),
                key_value_seq_lengths=lengths,
                mask=jnp.ones((t,), bool),  # per-key: folded into the padding, not dense
            )

        jaxpr = jax.make_jaxpr(jax.grad(lambda *a: fn(*a).sum(), (0, 1, 2)))(q, k, v)
        sizes = [int(np.prod(var.aval.shape)) for eqn in jaxpr.eqns for var in eqn.outvars]
        assert max(sizes) < t * t // 2, f"largest intermediate {max(sizes)} >= T*S/2"
        want = jax.nn.dot_product_attention(
            q, k, v, local_window_size=(3, 1), key_value_seq_lengths=lengths
        )
        np.testing.assert_allclose(fn(q, k, v)[:, :200], want[:, :200], atol=1e-5)


def numpy_attention_complex(q, k, v, mask):
    """softmax(z) = exp(z) / sum exp(z) on complex logits, [T, S] mask, no GQA."""
    q, k, v = (np.asarray(x, np.complex128) for x in (q, k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    w = np.where(mask, np.exp(logits), 0)
    return np.einsum("bnts,bsnh->btnh", w / w.sum(-1, keepdims=True), v)


class JaxArgumentsTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.q, self.k, self.v = testing.random_qkv(jax.random.key(24), q_len=5, num_heads=2)

    def test_bias_and_mask_are_positional(self):
        bias = jax.random.normal(jax.random.key(25), (5, 5))
        mask = jnp.eye(5, dtype=bool) | (jnp.arange(5)[None] == 0)
        np.testing.assert_allclose(
            dot_product_attention(self.q, self.k, self.v, bias, mask),
            jax.nn.dot_product_attention(self.q, self.k, self.v, bias, mask),
            atol=1e-6,
        )

    def test_local_window_with_a_bias_is_the_same_window_on_the_dense_path(self):
        # A bias sends the window to the dense [T, S] path (without one: the O(T w) path).
        bias = jax.random.normal(jax.random.key(26), (5, 5))
        for window in ((2, 1), (0, 3)):
            np.testing.assert_allclose(
                dot_product_attention(self.q, self.k, self.v, bias, local_window_size=window),
                jax.nn.dot_product_attention(
                    self.q, self.k, self.v, bias, local_window_size=window
                ),
                atol=1e-6,
            )

    def test_query_seq_lengths_zero_the_rows_after_them(self):
        lengths = jnp.array([2, 5], jnp.int32)
        got = dot_product_attention(self.q, self.k, self.v, query_seq_lengths=lengths)
        want = jax.nn.dot_product_attention(self.q, self.k, self.v, query_seq_lengths=lengths)
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_array_equal(got[0, 2:], 0.0)
        assert np.abs(got[1]).min() > 0

    def test_implementation_xla_is_the_default_for_one_key_block_and_unknown_is_refused(self):
        np.testing.assert_array_equal(
            dot_product_attention(self.q, self.k, self.v, implementation="xla"),
            dot_product_attention(self.q, self.k, self.v),
        )
        with pytest.raises(ValueError, match="implementation must be one of"):
            dot_product_attention(self.q, self.k, self.v, implementation="triton")

    def test_cudnn_goes_to_jax_cudnn_kernel(self):
        calls = []

        def spy(*args, **kwargs):
            calls.append(kwargs)
            return args[0]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dense, "_jax_dot_product_attention", spy)
            lengths = jnp.array([5, 3], jnp.int32)
            dot_product_attention(
                self.q,
                self.k,
                self.v,
                is_causal=True,
                key_value_seq_lengths=lengths,
                implementation="cudnn",
            )
            with pytest.raises(ValueError, match="no padding_mask"):
                dot_product_attention(
                    self.q,
                    self.k,
                    self.v,
                    padding_mask=jnp.ones((2, 5), bool),
                    implementation="cudnn",
                )
        assert calls[0]["implementation"] == "cudnn" and calls[0]["is_causal"]
        assert calls[0]["key_value_seq_lengths"] is lengths

    def test_none_on_a_gpu_picks_cudnn_for_the_calls_it_takes(self):
        calls = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dense, "_jax_dot_product_attention", lambda *a, **kw: calls.append(kw))
            patch.setattr(jax, "default_backend", lambda: "gpu")
            half = [x.astype(jnp.bfloat16) for x in (self.q, self.k, self.v)]
            dot_product_attention(*half, is_causal=True)
            got = dot_product_attention(self.q, self.k, self.v, is_causal=True)  # float32
        assert [c["implementation"] for c in calls] == ["cudnn"] and calls[0]["is_causal"]
        np.testing.assert_allclose(
            got, dot_product_attention(self.q, self.k, self.v, is_causal=True), atol=1e-6
        )

    @parameterized.named_parameters(
        ("q_lengths_shape", dict(query_seq_lengths=jnp.ones((3,), jnp.int32)), "query_seq_lengths"),
        ("kv_lengths_dtype", dict(key_value_seq_lengths=jnp.ones((2,))), "key_value_seq_lengths"),
        (
            "bias_shape",
            dict(bias=jnp.ones((2, 5, 4))),
            r"bias must be broadcastable .* \(1, 2, 5, 4\)",
        ),
        ("mask_rank", dict(mask=jnp.ones((1, 1, 1, 5, 5), bool)), "mask must have rank <= 4"),
    )
    def test_bad_arguments_name_themselves(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            dot_product_attention(self.q, self.k, self.v, **kwargs)

    def test_unbatched_padding_mask_and_weights(self):
        pad = jnp.array([True, True, False, True, False])
        got = dot_product_attention(self.q[0], self.k[0], self.v[0], padding_mask=pad)
        want = jax.nn.dot_product_attention(self.q[0], self.k[0], self.v[0], mask=pad)
        np.testing.assert_allclose(got, want, atol=1e-6)
        weights = dense.dot_product_attention_weights(self.q[0], self.k[0], padding_mask=pad)
        np.testing.assert_allclose(jnp.einsum("nts,snh->tnh", weights, self.v[0]), want, atol=1e-6)
        np.testing.assert_array_equal(weights[..., ~pad], 0.0)


# implementation=None: dense.default_implementation's rule for every backend, from the
# call's facts alone (pure, so the GPU and TPU choices are checked on this CPU).
BF16, F16, F32 = ("bfloat16",), ("float16",), ("float32",)


@pytest.mark.parametrize(
    ("backend", "facts", "want"),
    [
        ("cpu", {}, "chunked"),
        ("cpu", {"kv_len": 512}, "xla"),  # one key block
        ("cpu", {"dense_mask": True}, "xla"),
        ("cpu", {"window": True}, "xla"),  # the O(T w) local path
        ("cpu", {"dtypes": ("complex64",)}, "xla"),
        ("cpu", {"dtypes": BF16, "is_causal": True}, "chunked"),
        ("gpu", {"dtypes": BF16, "is_causal": True}, "cudnn"),
        ("gpu", {"dtypes": F16, "window": True, "is_causal": True, "head_dim": 128}, "cudnn"),
        ("gpu", {}, "chunked"),  # float32: not cuDNN's
        ("gpu", {"dtypes": ("bfloat16", "float16", "float16")}, "chunked"),
        ("gpu", {"dtypes": F16, "key_padding": True}, "chunked"),
        ("gpu", {"dtypes": F16, "is_causal": True, "q_len": 1}, "chunked"),  # aligned top-left
        ("gpu", {"dtypes": F16, "window": True}, "xla"),  # cuDNN's window is left-only
        ("gpu", {"dtypes": F16, "head_dim": 256}, "chunked"),
        ("gpu", {"dtypes": F16, "head_dim": 60}, "chunked"),
        ("gpu", {"dtypes": F16, "value_dim": 32}, "chunked"),
        ("gpu", {"dtypes": F16, "dense_mask": True}, "xla"),
        ("tpu", {}, "pallas"),
        ("tpu", {"dtypes": BF16, "key_padding": True, "window": True, "q_len": 1}, "pallas"),
        ("tpu", {"dense_mask": True}, "xla"),
        ("tpu", {"residual": True}, "chunked"),
        ("tpu", {"dtypes": F16}, "chunked"),
        ("tpu", {"value_dim": 32}, "chunked"),
    ],
)
def test_default_implementation_per_backend(backend, facts, want):
    assert dense.default_implementation(backend, **{"kv_len": 4096, **facts}) == want
