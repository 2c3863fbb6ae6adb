"""Models on int8 parameters: ``config.quantization`` swaps every Dense layer and embedding
table for its int8 counterpart, so ``model.apply(quantize_params(params))`` runs directly.

weight_only equals the float model on the dequantized parameters (the same products);
dynamic runs int8 x int8 -> int32 dots and stays close; a parameter of the wrong kind is
a ValueError naming it. (all-MiniLM-L6-v2's fidelity: tests/compress/test_minilm.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.compress import dequantize_params, quantize_params
from effjax.layers import QuantizedArray
from effjax.models import DecoderConfig, DecoderLM, EncoderForMaskedLM
from tests.models.conftest import random_ids, tiny_config

B, T = 2, 6
SIZES = dict(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)


def _encoder():
    return EncoderForMaskedLM, tiny_config(**SIZES, max_position_embeddings=8)


def _decoder():
    cfg = DecoderConfig(**SIZES, max_position_embeddings=8, tie_word_embeddings=False)
    return DecoderLM, cfg


@pytest.fixture(scope="module", params=[_encoder, _decoder], ids=["encoder_mlm", "decoder"])
def setup(request):
    cls, cfg = request.param()
    ids = random_ids(cfg, B, T)
    params = jax.jit(cls(cfg).init)(jax.random.key(0), ids)["params"]
    return cls, cfg, ids, quantize_params(params)


def _apply(cls, cfg, params, ids):
    model = cls(cfg)
    return jax.jit(lambda p, x: model.apply({"params": p}, x))(params, ids)


def test_weight_only_model_equals_the_float_model_on_dequantized_params(setup):
    cls, cfg, ids, qparams = setup
    int8 = [q for q in jax.tree_util.tree_leaves(qparams, is_leaf=lambda x: hasattr(x, "scale"))]
    assert all(q.values.dtype == jnp.int8 for q in int8 if isinstance(q, QuantizedArray))
    reference = _apply(cls, cfg, dequantize_params(qparams), ids)
    got = _apply(cls, cfg.replace(quantization="weight_only"), qparams, ids)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_dynamic_model_runs_int8_dots_and_stays_close(setup):
    cls, cfg, ids, qparams = setup
    qcfg = cfg.replace(quantization="dynamic")
    reference = _apply(cls, cfg, dequantize_params(qparams), ids)
    got = _apply(cls, qcfg, qparams, ids)
    relative = float(jnp.linalg.norm(got - reference) / jnp.linalg.norm(reference))
    assert 0 < relative < 0.03
    jaxpr = jax.make_jaxpr(lambda p: cls(qcfg).apply({"params": p}, ids))(qparams)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    int8_dots = [
        e
        for e in dots
        if [v.aval.dtype for v in e.invars] == [jnp.int8, jnp.int8]
        and e.outvars[0].aval.dtype == jnp.int32
    ]
    # per layer q, k, v, out, intermediate, output; plus the head (tied or not).
    dense_layers = 6 * cfg.num_layers + (2 if cls is EncoderForMaskedLM else 1)
    assert len(int8_dots) == dense_layers


def test_the_wrong_kind_of_parameter_is_a_value_error_naming_it(setup):
    cls, cfg, ids, qparams = setup
    int8_given = r"parameter \S+/(embedding|kernel) is an int8 .* computes in float"
    with pytest.raises(ValueError, match=int8_given):
        cls(cfg).apply({"params": qparams}, ids)
    float_params = dequantize_params(qparams)
    with pytest.raises(ValueError, match=r"parameter \S+ is float32 .* expects an int8"):
        cls(cfg.replace(quantization="dynamic")).apply({"params": float_params}, ids)


def test_quantization_options_are_checked_when_the_config_is_built():
    with pytest.raises(ValueError, match="quantization='int4' is not one of"):
        tiny_config(quantization="int4")
    with pytest.raises(ValueError, match="num_experts=2 has no int8 path"):
        tiny_config(quantization="dynamic", num_experts=2)
    with pytest.raises(ValueError, match="reversible=True has no int8 path"):
        DecoderConfig(**SIZES, reversible=True, quantization="weight_only")


def test_an_int8_core_parameter_is_named_not_a_jax_error():
    cfg = tiny_config(attention="persistent_memory", attention_options={"num_slots": 2})
    ids = random_ids(cfg, B, T)
    params = EncoderForMaskedLM(cfg).init(jax.random.key(0), ids)["params"]
    model = EncoderForMaskedLM(cfg.replace(quantization="weight_only"))
    with pytest.raises(ValueError, match=r"core/memory_key is an int8 .* attention core"):
        model.apply({"params": quantize_params(params)}, ids)

    def skip_core(path, leaf):
        return "core" not in path and leaf.ndim >= 2 and path[-1] != "bias"

    out = model.apply({"params": quantize_params(params, filter_fn=skip_core)}, ids)
    assert np.isfinite(out).all()
