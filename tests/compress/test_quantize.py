"""int8 quantization: error bounds, the int8 Dense, QAT's straight-through gradient, checkpoints."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from effjax.compress import (
    QuantizedArray,
    calibrate_scale,
    dequantize_params,
    fake_quant,
    fake_quant_params,
    quantize_params,
)


@pytest.fixture
def params(normal):
    kernel = normal((32, 8), seed=1).at[:, 3].set(0.0)  # an all-zero output channel
    return {"dense": {"kernel": kernel, "bias": normal((8,), seed=2)}}


def test_quantize_follows_the_convention_and_error_is_at_most_half_a_step(params):
    q = quantize_params(params)
    qk = q["dense"]["kernel"]
    assert isinstance(qk, QuantizedArray)
    assert qk.values.dtype == jnp.int8 and qk.scale.dtype == jnp.float32
    assert qk.scale.shape == (1, 8)
    w = np.asarray(params["dense"]["kernel"])
    np.testing.assert_allclose(qk.scale[0], np.abs(w).max(axis=0) / 127, rtol=1e-6)
    assert np.abs(np.asarray(qk.values)).max(axis=0).tolist() == [127] * 3 + [0] + [127] * 4
    back = dequantize_params(q)
    error = np.abs(np.asarray(back["dense"]["kernel"]) - w)
    assert (error <= np.asarray(qk.scale) / 2 + 1e-7).all()
    assert (np.asarray(back["dense"]["kernel"])[:, 3] == 0).all()
    np.testing.assert_array_equal(back["dense"]["bias"], params["dense"]["bias"])  # untouched


def test_filter_selecting_nothing_raises(params):
    with pytest.raises(ValueError, match="filter_fn selects no parameter"):
        quantize_params(params, filter_fn=lambda path, leaf: "embedding" in path)


def test_fake_quant_rounds_forward_and_passes_gradients_straight_through(normal):
    w = normal((16, 4), seed=4)
    q = quantize_params({"w": w})["w"]
    np.testing.assert_allclose(fake_quant(w), q.dequantize(), rtol=1e-6, atol=1e-7)
    grad = jax.grad(lambda p: jnp.sum(fake_quant_params(p)["w"] * 3.0))({"w": w})["w"]
    np.testing.assert_array_equal(grad, np.full(w.shape, 3.0, np.float32))
    # a static activation scale: values clip at +-127 steps, gradient still identity
    x = jnp.array([0.1, -0.26, 5.0])
    np.testing.assert_allclose(fake_quant(x, jnp.float32(0.02)), [0.1, -0.26, 127 * 0.02])


def test_calibration_absmax_and_percentile():
    samples = jnp.concatenate([jnp.linspace(-1.0, 1.0, 10_001), jnp.array([50.0])])
    np.testing.assert_allclose(calibrate_scale(samples), 50.0 / 127, rtol=1e-6)
    np.testing.assert_allclose(
        calibrate_scale(samples, method="percentile", percentile=99.0),
        float(np.percentile(np.abs(samples), 99.0)) / 127,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="percentile"):
        calibrate_scale(samples, method="percentile", percentile=0.0)


def _dir_size(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def test_orbax_checkpoint_of_int8_params_is_under_0_3x_float32(tmp_path, normal):
    params = {
        f"layer_{i}": {
            "kernel": normal((256, 256), seed=i),
            "bias": jnp.zeros(256),
        }
        for i in range(4)
    }
    qparams = quantize_params(params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "float32", params)
        checkpointer.save(tmp_path / "int8", qparams)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "int8", qparams)
    ratio = _dir_size(tmp_path / "int8") / _dir_size(tmp_path / "float32")
    assert ratio <= 0.3
    assert restored["layer_0"]["kernel"].values.dtype == jnp.int8
    np.testing.assert_array_equal(
        restored["layer_2"]["kernel"].values, qparams["layer_2"]["kernel"].values
    )


def test_qat_gradient_is_the_loss_gradient_at_the_int8_weights(params, normal):
    # STE: d/dw L(fake_quant(w)) = L'(q(w)), the gradient at the weights inference will use.
    x = normal((6, 32), seed=7)

    def loss(p):
        return jnp.sum(jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"][None]) ** 2)

    qat_grad = jax.jit(jax.grad(lambda p: loss(fake_quant_params(p))))(params)
    at_int8 = jax.jit(jax.grad(loss))(dequantize_params(quantize_params(params)))
    np.testing.assert_allclose(
        qat_grad["dense"]["kernel"], at_int8["dense"]["kernel"], rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(qat_grad["dense"]["kernel"], jax.grad(loss)(params)["dense"]["kernel"])


def test_one_scale_per_output_channel_as_each_attention_projection_defines_it(random_init):
    # query/key/value are DenseGeneral [D, N, H] (N*H channels), out is [N, H, D] (D channels).
    from effjax.layers import MultiHeadAttention

    layer = MultiHeadAttention(num_heads=3)
    params = random_init(layer, jnp.zeros((1, 2, 12)))
    heads = jnp.array([1.0, 10.0, 0.1])[None, :, None]  # heads of very different ranges
    params["query"]["kernel"] = params["query"]["kernel"] * heads
    q = quantize_params(params)
    for name, input_axes in (("query", (0,)), ("key", (0,)), ("value", (0,)), ("out", (0, 1))):
        w = np.asarray(params[name]["kernel"])
        qk = q[name]["kernel"]
        want = np.max(np.abs(w), axis=input_axes, keepdims=True) / 127
        np.testing.assert_allclose(qk.scale, want, rtol=1e-6)
        assert np.all(np.abs(w - np.asarray(qk.dequantize())) <= want / 2 + 1e-7)
    # QAT rounds onto the same grid.
    faked = fake_quant_params(params)["query"]["kernel"]
    np.testing.assert_allclose(faked, q["query"]["kernel"].dequantize(), atol=1e-7)
