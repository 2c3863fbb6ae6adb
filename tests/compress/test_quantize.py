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


def _relative_rms(w, approx, axis):
    return np.sqrt(np.sum((w - approx) ** 2, axis=axis) / np.sum(w**2, axis=axis))


def test_stacked_expert_kernels_get_one_scale_per_expert_and_output_channel(random_init):
    # SwitchFeedForward stacks E Dense kernels: intermediate [E, D, F], output [E, F, D].
    from effjax.layers import SwitchFeedForward

    params = random_init(SwitchFeedForward(num_experts=3, d_ff=8), jnp.zeros((1, 4, 6)))
    experts = params["experts"]
    loud = jnp.array([1.0, 100.0, 1.0])[:, None, None]  # expert 1 is 100x larger
    experts["intermediate"]["kernel"] = experts["intermediate"]["kernel"] * loud
    q = quantize_params(params)
    for name, channels in (("intermediate", (3, 1, 8)), ("output", (3, 1, 6))):
        w = np.asarray(experts[name]["kernel"])
        qk = q["experts"][name]["kernel"]
        want = np.max(np.abs(w), axis=1, keepdims=True) / 127  # E * F scales
        assert qk.scale.shape == channels
        np.testing.assert_allclose(qk.scale, want, rtol=1e-6)
        assert np.all(np.abs(w - np.asarray(qk.dequantize())) <= want / 2 + 1e-7)
        assert not isinstance(q["experts"][name]["bias"], QuantizedArray)  # [E, F] biases
    # Per expert, the error stays that of an int8 grid on the expert's own range; with
    # scales shared across experts, the quiet experts' weights round to (almost) zero.
    w = np.asarray(experts["intermediate"]["kernel"])
    own = _relative_rms(w, np.asarray(q["experts"]["intermediate"]["kernel"].dequantize()), (1, 2))
    shared = quantize_params(params, stacked_axes=lambda path, leaf: 0)
    mixed = _relative_rms(
        w, np.asarray(shared["experts"]["intermediate"]["kernel"].dequantize()), (1, 2)
    )
    assert np.all(own < 0.01)
    assert mixed[0] > 0.3 and mixed[2] > 0.3


def test_reversible_stack_kernels_get_one_scale_per_block(random_init):
    # ReversibleStack stacks each block's parameters along a leading layer axis L.
    from effjax.models import DecoderConfig, DecoderLM

    config = DecoderConfig(
        vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
        reversible=True, max_position_embeddings=16,
    )  # fmt: skip
    params = random_init(DecoderLM(config), jnp.zeros((1, 8), jnp.int32))
    blocks = params["layers"]["layers"]
    blocks["f"]["attention"]["query"]["kernel"] *= jnp.array([1.0, 100.0])[:, None, None, None]
    q = quantize_params(params)["layers"]["layers"]
    kernels = {
        ("f", "attention", "query"): ((2, 1, 2, 4), (1,)),  # [L, D, N, H]: L * N * H scales
        ("f", "attention", "out"): ((2, 1, 1, 8), (1, 2)),  # [L, N, H, D]: L * D
        ("g", "feed_forward", "intermediate"): ((2, 1, 32), (1,)),  # [L, D, F]: L * F
    }
    for (branch, module, name), (shape, input_axes) in kernels.items():
        w = np.asarray(blocks[branch][module][name]["kernel"])
        qk = q[branch][module][name]["kernel"]
        assert qk.scale.shape == shape
        np.testing.assert_allclose(qk.scale, np.max(np.abs(w), input_axes, keepdims=True) / 127)
    w = np.asarray(blocks["f"]["attention"]["query"]["kernel"])
    error = _relative_rms(
        w, np.asarray(q["f"]["attention"]["query"]["kernel"].dequantize()), (1, 2, 3)
    )
    assert np.all(error < 0.01)  # block 0 is not quantized on block 1's 100x range
    # [L, D] norm scales and biases are vectors of each block: left float.
    assert not isinstance(q["g"]["output_norm"]["scale"], QuantizedArray)
    assert not isinstance(q["f"]["attention"]["query"]["bias"], QuantizedArray)
