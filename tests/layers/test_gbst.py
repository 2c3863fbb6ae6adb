"""GBST against a loop-over-bytes numpy reference of Tay et al. 2021, Sec. 2."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.gbst import GBST

B, L, D = 2, 7, 4


def _softmax(v):
    v = np.exp(v - v.max(-1, keepdims=True))
    return v / v.sum(-1, keepdims=True)


def _gbst_reference(params, x, mask, block_sizes, rate, offset_conv, calibration):
    """One byte, one block at a time, in float64."""
    x = np.asarray(x, np.float64) * mask[..., None]
    b, length, d = x.shape
    if offset_conv:
        kernel = np.asarray(params["offset_conv"]["kernel"])[:, 0, :]  # [width, D]
        bias = np.asarray(params["offset_conv"]["bias"])
        conv = np.zeros_like(x)
        for i in range(length):
            for k in range(kernel.shape[0]):
                if i + k < length:
                    conv[:, i] += x[:, i + k] * kernel[k]
        x = conv + bias
    w = np.asarray(params["score"]["kernel"])[:, 0]

    def block_mean(v, g, start, size):
        members = [j for j in range(start, min(start + size, length)) if mask[g, j]]
        return v[g, members].mean(0) if members else np.zeros(v.shape[-1])

    out_len = -(-length // rate)
    out = np.zeros((b, out_len, d))
    out_mask = np.zeros((b, out_len), bool)
    for g in range(b):
        cands = np.array(
            [[block_mean(x, g, (i // s) * s, s) for s in block_sizes] for i in range(length)]
        )  # [L, M, D]
        probs = _softmax(cands @ w)  # [L, M]
        if calibration:
            logits = probs @ probs.T
            real = mask[g].astype(bool)
            att = np.zeros_like(logits)
            att[:, real] = _softmax(logits[:, real])
            probs = att @ probs
        latent = np.einsum("lm,lmd->ld", probs, cands)[None]
        for o in range(out_len):
            members = [j for j in range(o * rate, min(o * rate + rate, length)) if mask[g, j]]
            out[g, o] = latent[0, members].mean(0) if members else 0.0
            out_mask[g, o] = bool(members)
    return out, out_mask


@functools.cache
def _inputs():
    x = jax.random.normal(jax.random.key(1), (B, L, D))
    mask = np.ones((B, L), bool)
    mask[1, 5:] = False
    return x, mask


@pytest.mark.parametrize(
    ("block_sizes", "rate", "offset_conv", "calibration"),
    [((1, 2, 3), 3, True, True), ((2, 4), 2, False, False)],
)
def test_matches_numpy_reference(block_sizes, rate, offset_conv, calibration):
    x, mask = _inputs()
    gbst = GBST(block_sizes, rate, offset_conv=offset_conv, score_calibration=calibration)
    params = gbst.init(jax.random.key(0), x)["params"]
    # A larger scorer than the init's, so the soft selection is far from uniform.
    params = {**params, "score": {"kernel": params["score"]["kernel"] * 5.0}}
    y, y_mask = jax.jit(gbst.apply)({"params": params}, x, mask)
    ref, ref_mask = _gbst_reference(params, x, mask, block_sizes, rate, offset_conv, calibration)
    np.testing.assert_allclose(y, ref, atol=1e-5)
    np.testing.assert_array_equal(y_mask, ref_mask)


def test_padding_changes_nothing_and_gradients_match_finite_differences():
    x, mask = _inputs()
    gbst = GBST((1, 2, 3), 2)
    params = gbst.init(jax.random.key(0), x)["params"]
    apply = jax.jit(lambda p, x: gbst.apply({"params": p}, x, mask)[0])
    noise = jnp.where(mask[..., None], 0.0, 100.0)  # only the padded bytes change
    np.testing.assert_allclose(apply(params, x + noise), apply(params, x), atol=1e-5)

    probe = jax.random.normal(jax.random.key(2), apply(params, x).shape)
    loss = lambda p, x: jnp.sum(apply(p, x) * probe)  # noqa: E731
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    assert not np.any(grads[1][1, 5:])  # padded bytes get no gradient
    direction = jax.tree.map(lambda a: jax.random.normal(jax.random.key(3), a.shape), (params, x))
    eps = 1e-2
    shifted = lambda s: jax.tree.map(lambda a, v: a + s * eps * v, (params, x), direction)  # noqa: E731
    numeric = (loss(*shifted(1.0)) - loss(*shifted(-1.0))) / (2 * eps)
    analytic = sum(
        jnp.vdot(g, v)
        for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
    )
    np.testing.assert_allclose(analytic, numeric, rtol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({}, (2, 4), "x must be"),
        ({"block_sizes": (0, 2)}, (2, 4, 8), "block_sizes"),
        ({"downsample_rate": 0}, (2, 4, 8), "downsample_rate"),
    ],
)
def test_bad_input(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        GBST(**kwargs).init(jax.random.key(0), jnp.ones(shape))
