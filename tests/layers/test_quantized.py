"""QuantizedDense: both int8 modes against the float Dense, and the int8 x int8 -> int32 dot."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers import QuantizedDense
from effjax.layers.quantized import int8_matmul, quantize_array


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_quantized_dense_is_close_to_the_float_dense(mode):
    x = _normal((4, 5, 32), seed=0)
    params = {"kernel": 0.3 * _normal((32, 8), seed=1), "bias": _normal((8,), seed=2)}
    expected = nn.Dense(8).apply({"params": params}, x)
    qparams = {"kernel": quantize_array(params["kernel"]), "bias": params["bias"]}
    got = jax.jit(QuantizedDense(8, mode=mode).apply)({"params": qparams}, x)
    # Each int8 rounding is off by at most half a step: |dy| <= sum_i |x_i| s_w/2 (+ |w| s_x/2).
    w_err = jnp.abs(x).sum(-1, keepdims=True) * qparams["kernel"].scale[None] / 2
    x_err = (
        jnp.abs(x).max(-1, keepdims=True) / 127 / 2 * jnp.abs(params["kernel"]).sum(0)[None, None]
        if mode == "dynamic"
        else 0.0
    )
    assert (jnp.abs(got - expected) <= w_err + x_err + 1e-5).all()
    relative = jnp.linalg.norm(got - expected) / jnp.linalg.norm(expected)
    assert relative < 0.02
    if mode == "weight_only":
        dequantized = x @ qparams["kernel"].dequantize() + params["bias"][None, None]
        np.testing.assert_allclose(got, dequantized, rtol=1e-5, atol=1e-6)


def test_dynamic_mode_runs_an_int8_dot_with_int32_accumulation():
    x = jnp.ones((2, 16))
    layer = QuantizedDense(4, mode="dynamic")
    variables = jax.eval_shape(layer.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(layer.apply)(variables, x)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 1
    assert [v.aval.dtype for v in dots[0].invars] == [jnp.int8, jnp.int8]
    assert dots[0].outvars[0].aval.dtype == jnp.int32


def test_bad_mode_and_shapes_raise():
    kernel = quantize_array(jnp.ones((16, 4)))
    with pytest.raises(ValueError, match="mode"):
        QuantizedDense(4, mode="int4").apply(
            {"params": {"kernel": kernel, "bias": jnp.zeros(4)}}, jnp.ones((2, 16))
        )
    with pytest.raises(ValueError, match=r"x \(2, 8\) and kernel \(16, 4\)"):
        int8_matmul(jnp.ones((2, 8)), kernel, mode="dynamic")
