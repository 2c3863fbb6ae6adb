import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax import testing
from effjax.attention import _prefix_sum, masks
from effjax.attention.kernel import (
    kernel_state_init,
    linear_attention,
    linear_decode_step,
    make_performer_features,
    performer_attention,
    performer_decode_step,
)

# One compiled program per shape instead of one per operation (tests stay cheap to compile).
draw_features = jax.jit(make_performer_features, static_argnums=(1, 2, 3))


def quadratic_form(phi, q, k, v, *, is_causal=False, padding_mask=None):
    """sum_s phi(q_t).phi(k_s) v_s / sum_s phi(q_t).phi(k_s), built densely [B, N, T, S]."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    weights = jnp.einsum("btnf,bsnf->bnts", phi(q), phi(k))
    if is_causal:
        weights = weights * masks.causal_mask(q.shape[1], k.shape[1])[None, None]
    if padding_mask is not None:
        weights = weights * padding_mask[:, None, None, :]
    numerator = jnp.einsum("bnts,bsnh->btnh", weights, v)
    denominator = jnp.sum(weights, axis=-1).transpose(0, 2, 1)[..., None]
    empty = denominator == 0  # a query that sees no key: 0, as the contract says
    return jnp.where(empty, 0.0, numerator / jnp.where(empty, 1.0, denominator))


def assert_same_with_grads(fn, reference, q, k, v, atol=1e-5):
    expected, reference_vjp = jax.vjp(jax.jit(reference), q, k, v)
    out, fn_vjp = jax.vjp(jax.jit(fn), q, k, v)
    np.testing.assert_allclose(out, expected, atol=atol, rtol=1e-5)
    cotangent = jax.random.normal(jax.random.key(7), expected.shape)
    got, want = fn_vjp(cotangent), reference_vjp(cotangent)
    for name, g, w in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=atol, rtol=1e-4, err_msg=f"gradient wrt {name}")


CASES = [  # (q_len, kv_len, num_heads, num_kv_heads, is_causal)
    (21, 21, 4, 2, False),  # GQA
    (21, 21, 4, 2, True),  # GQA, length not a multiple of the chunk size
    (7, 19, 4, 1, True),  # MQA, T < S: the first keys are a shared prefix
    (19, 7, 2, 2, True),  # T > S: the first queries see no key
]


def elu_plus_one(x):
    return jax.nn.elu(x) + 1.0


@pytest.mark.parametrize("case", CASES)
def test_linear_attention_equals_quadratic_form(case):
    t, s, n, kh, is_causal = case
    q, k, v = testing.random_qkv(
        jax.random.key(0), batch=2, q_len=t, kv_len=s, num_heads=n, num_kv_heads=kh
    )
    pad = testing.random_padding_mask(jax.random.key(1), 2, s)

    def fn(q, k, v):
        return linear_attention(q, k, v, is_causal=is_causal, padding_mask=pad, chunk_size=8)

    def reference(q, k, v):
        return quadratic_form(elu_plus_one, q, k, v, is_causal=is_causal, padding_mask=pad)

    assert_same_with_grads(fn, reference, q, k, v)


def test_linear_attention_callable_feature_map_and_scale():
    q, k, v = testing.random_qkv(jax.random.key(2), q_len=12, num_heads=2, head_dim=4)

    def phi(x):  # a map that changes the feature count, F = 2H
        return jnp.concatenate([jax.nn.softplus(x), jnp.exp(-(x**2))], axis=-1)

    got = jax.jit(functools.partial(linear_attention, feature_map=phi, scale=0.5, is_causal=True))(
        q, k, v
    )
    want = jax.jit(functools.partial(quadratic_form, phi, is_causal=True))(q * 0.5, k, v)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("is_causal", [False, True])
def test_performer_relu_kernel_equals_its_quadratic_form(is_causal):
    q, k, v = testing.random_qkv(jax.random.key(3), q_len=20, num_heads=4, num_kv_heads=2)
    pad = testing.random_padding_mask(jax.random.key(4), 2, 20)
    features = draw_features(jax.random.key(5), 32, 8)

    def phi(x):
        return jax.nn.relu(jnp.einsum("...h,fh->...f", x, features))

    def fn(q, k, v):
        return performer_attention(
            q, k, v, features=features, kernel="relu", is_causal=is_causal, padding_mask=pad
        )

    def reference(q, k, v):
        return quadratic_form(phi, q, k, v, is_causal=is_causal, padding_mask=pad)

    assert_same_with_grads(fn, reference, q, k, v, atol=2e-5)


@functools.partial(jax.jit, static_argnums=(1, 3))
def performer_errors(seeds, num_features, shrink, orthogonal):
    """RMS error against dense attention, (bidirectional, causal), one per seed."""
    q, k, v = testing.random_qkv(jax.random.key(10), batch=1, q_len=32, num_heads=2, head_dim=16)
    q, k = q * shrink, k * shrink  # moderate logits, where FAVOR+ is meant to be used

    def errors(seed):
        features = make_performer_features(jax.random.key(seed), num_features, 16, orthogonal)
        return jnp.stack(
            [
                jnp.sqrt(
                    jnp.mean(
                        (
                            performer_attention(q, k, v, features=features, is_causal=causal)
                            - ea.dot_product_attention(q, k, v, is_causal=causal)
                        )
                        ** 2
                    )
                )
                for causal in (False, True)
            ]
        )

    return jax.vmap(errors)(seeds)


def test_performer_softmax_error_shrinks_with_more_features():
    seeds = jnp.arange(3)
    # [3 feature counts, 2 modes]: mean over seeds
    errors = np.stack([performer_errors(seeds, f, 0.5, True).mean(0) for f in (16, 128, 1024)])
    for mode in range(2):  # bidirectional, causal
        e = errors[:, mode]
        assert e[0] > e[1] > e[2], errors
        # Monte Carlo error ~ 1/sqrt(F): 64x the features should cut it by several times.
        assert e[2] < e[0] / 3, errors


def test_orthogonal_features_beat_iid_features():
    seeds = jnp.arange(24)
    orthogonal = performer_errors(seeds, 16, 0.4, True).mean(0)
    iid = performer_errors(seeds, 16, 0.4, False).mean(0)
    assert np.all(orthogonal < iid), (orthogonal, iid)


def test_orthogonal_features_are_orthogonal_blocks_with_chi_norms():
    w = draw_features(jax.random.key(0), 40, 8)  # 5 blocks of 8
    for block in np.split(np.asarray(w), 5):
        gram = block @ block.T
        np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-4)
    # Rows are marginally N(0, I_H): |w|^2 is chi-square with H = 8 degrees of freedom,
    # whose CDF for even H is 1 - exp(-x/2) sum_{i < H/2} (x/2)^i / i!. Kolmogorov-Smirnov
    # distance of 4096 draws: below 1.95 / sqrt(n) (the 0.1% critical value).
    many = np.sort(np.sum(np.asarray(draw_features(jax.random.key(1), 4096, 8)) ** 2, axis=-1))
    half = many / 2
    cdf = 1 - np.exp(-half) * sum(half**i / math.factorial(i) for i in range(4))
    ecdf = np.arange(1, many.size + 1) / many.size
    assert np.max(np.abs(ecdf - cdf)) < 1.95 / np.sqrt(many.size)
    np.testing.assert_array_equal(w, draw_features(jax.random.key(0), 40, 8))
    assert not np.allclose(w, draw_features(jax.random.key(2), 40, 8))


@pytest.mark.parametrize("is_causal", [False, True])
def test_performer_is_stable_for_large_logits_and_ignores_padded_keys(is_causal):
    q, k, v = testing.random_qkv(jax.random.key(6), q_len=16, num_heads=2)
    pad = jnp.arange(16)[None, :] < jnp.array([[16], [9]])
    features = draw_features(jax.random.key(7), 64, 8)
    fn = jax.jit(
        lambda q, k, v: performer_attention(
            q, k, v, features=features, padding_mask=pad, is_causal=is_causal
        )
    )
    # exp of these logits (|s q.k| in the thousands) overflows float32 without stabilisation
    assert np.all(np.isfinite(fn(q * 30.0, k * 30.0, v)))
    q, k = q * 3.0, k * 3.0
    out = fn(q, k, v)
    k2 = k.at[1, 9:].set(1e4)  # padded positions of the second sequence only
    v2 = v.at[1, 9:].set(-1e4)
    np.testing.assert_allclose(fn(q, k2, v2), out, atol=1e-5)


@pytest.mark.parametrize("variant", ["performer", "linear"])
def test_query_with_no_key_gives_zeros_and_finite_grads(variant):
    q, k, v = testing.random_qkv(jax.random.key(8), q_len=8, num_heads=2)
    pad = jnp.array([[True] * 8, [False] * 8])
    options = {"features": draw_features(jax.random.key(0), 16, 8)}
    fn = ea.get(variant)
    kwargs = options if variant == "performer" else {}

    def loss(q, k, v):
        out = fn(q, k, v, padding_mask=pad, is_causal=True, **kwargs)
        return jnp.sum(out), out

    grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    np.testing.assert_array_equal(out[1], 0.0)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(grads[1][1], 0.0)  # padded keys get no gradient


@pytest.mark.parametrize(("groups", "chunk_size"), [((2, 1), 4), ((3, 2), 5)])
def test_causal_prefix_product_gradients_equal_autodiff_of_quadratic_form(groups, chunk_size):
    ga, gb = groups
    ka, kb, kc, kd = jax.random.split(jax.random.key(9), 4)
    t = 13
    a = jax.random.normal(ka, (2, t, 2, ga, 3))
    b = jax.random.normal(kb, (2, t, 2, gb, 3))
    c = jax.random.normal(kc, (2, t, 2, gb, 5))
    dy = jax.random.normal(kd, (2, t, 2, ga, 5))

    def naive(a, b, c):
        scores = jnp.einsum("btkix,bskjx->bkitsj", a, b)
        scores = scores * jnp.tril(jnp.ones((t, t)))[None, None, None, :, :, None]
        return jnp.einsum("bkitsj,bskjy->btkiy", scores, c)

    def fast(a, b, c):
        return _prefix_sum.causal_prefix_product(a, b, c, chunk_size)

    out, fast_vjp = jax.vjp(jax.jit(fast), a, b, c)
    expected, naive_vjp = jax.vjp(naive, a, b, c)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    got, want = fast_vjp(dy), naive_vjp(dy)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-5)


def test_causal_backward_stores_no_per_chunk_state():
    # The custom VJP keeps only a, b, c as residuals: nothing of size (T / C) * F * Hv.
    a = jnp.ones((1, 256, 1, 1, 64))
    c = jnp.ones((1, 256, 1, 1, 64))
    _, residuals = jax.vjp(lambda a, b, c: _prefix_sum.causal_prefix_product(a, b, c, 8), a, a, c)
    sizes = sorted(x.size for x in jax.tree.leaves(residuals))
    assert sum(sizes) <= 3 * a.size, sizes


def test_decode_steps_equal_full_causal_pass():
    t = 11
    q, k, v = testing.random_qkv(jax.random.key(11), batch=2, q_len=t, num_heads=4, num_kv_heads=2)
    q, k = q * 2.0, k * 2.0  # offsets of later keys exceed earlier ones: exercises rescaling
    features = draw_features(jax.random.key(12), 24, 8)
    cases = [
        (performer_attention, performer_decode_step, {"features": features}, 24),
        (linear_attention, linear_decode_step, {}, 8),
    ]
    for attention, step, options, num_features in cases:
        full = jax.jit(functools.partial(attention, is_causal=True, **options))(q, k, v)
        step = jax.jit(functools.partial(step, **options))
        state = kernel_state_init(2, 2, num_features, 8)
        outs = []
        # token by token, then a block of 3 tokens at once
        for start, stop in [(i, i + 1) for i in range(8)] + [(8, 11)]:
            out, state = step(state, q[:, start:stop], k[:, start:stop], v[:, start:stop])
            outs.append(out)
        np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-4)


def test_padded_decode_tokens_add_nothing_to_the_state():
    """A left-padded prompt block, then single steps: padded keys (made huge, so they would
    set the softmax offset and underflow every real key) never count."""
    q, k, v = testing.random_qkv(jax.random.key(15), batch=2, q_len=8, num_heads=4, num_kv_heads=2)
    real = jnp.arange(8)[None, :] >= jnp.array([[3], [0]])  # row 0: 3 pads, then real
    k = jnp.where(real[..., None, None], k, 50.0)
    v = jnp.where(real[..., None, None], v, 1e4)
    features = draw_features(jax.random.key(16), 24, 8)
    cases = [
        (performer_attention, performer_decode_step, {"features": features}, 24),
        (linear_attention, linear_decode_step, {}, 8),
    ]
    for attention, step, options, num_features in cases:
        full = attention(q, k, v, is_causal=True, padding_mask=real, **options)
        state = kernel_state_init(2, 2, num_features, 8)
        block = (q[:, :5], k[:, :5], v[:, :5])
        prompt, state = step(state, *block, padding_mask=real[:, :5], **options)
        outs = [prompt]
        for t in range(5, 8):
            out, state = step(state, q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], **options)
            outs.append(out)
        got = jnp.concatenate(outs, axis=1)
        np.testing.assert_allclose(got[real], full[real], atol=1e-5, rtol=1e-4)


def test_bfloat16_inputs_give_bfloat16_outputs_close_to_float32():
    q, k, v = testing.random_qkv(jax.random.key(13), q_len=16, num_heads=2)
    features = draw_features(jax.random.key(0), 32, 8)
    for fn, options in [(performer_attention, {"features": features}), (linear_attention, {})]:
        fn = jax.jit(functools.partial(fn, is_causal=True, **options))
        want = fn(q, k, v)
        got = fn(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.1)


def test_composes_with_jit_and_vmap():
    q, k, v = testing.random_qkv(jax.random.key(14), batch=3, q_len=12, num_heads=2)
    features = draw_features(jax.random.key(0), 16, 8)

    def fn(q, k, v):
        return performer_attention(q[None], k[None], v[None], features=features, is_causal=True)[0]

    batched = jax.jit(jax.vmap(fn))(q, k, v)
    direct = jax.jit(functools.partial(performer_attention, features=features, is_causal=True))(
        q, k, v
    )
    np.testing.assert_allclose(batched, direct, atol=1e-5)


def test_registered_under_short_names():
    assert ea.get("performer") is performer_attention
    assert ea.get("linear") is linear_attention


def test_bad_inputs_raise_value_errors_naming_the_argument():
    q, k, v = testing.random_qkv(jax.random.key(0), q_len=8, num_heads=2)
    features = draw_features(jax.random.key(0), 16, 8)
    with pytest.raises(ValueError, match=r"features must have shape .* got \(16, 4\)"):
        performer_attention(q, k, v, features=features[:, :4])
    with pytest.raises(ValueError, match="kernel must be one of"):
        performer_attention(q, k, v, features=features, kernel="cosine")
    with pytest.raises(ValueError, match="feature_map must be"):
        linear_attention(q, k, v, feature_map="relu6")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        linear_attention(q, k, v, is_causal=True, chunk_size=0)
    with pytest.raises(ValueError, match="padding_mask must have shape"):
        linear_attention(q, k, v, padding_mask=jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        make_performer_features(jax.random.key(0), 0, 8)
    with pytest.raises(ValueError, match="state has"):
        linear_decode_step(kernel_state_init(2, 3, 8, 8), q[:, :1], k[:, :1], v[:, :1])
