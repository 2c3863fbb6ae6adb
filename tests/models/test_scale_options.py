"""Config switches shared by every model: Switch experts (and their losses in the train
step), remat policies and bfloat16 compute, each against the plain float32 model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from effjax.layers import MOE_LOSSES
from effjax.models import DecoderConfig, DecoderLM, Encoder, EncoderForSequenceClassification
from effjax.train.loop import TrainState, classification_loss, make_train_step
from tests.models.conftest import random_ids, right_padding, tiny_config

B, T = 2, 8


def _decoder_config(**changes):
    base = dict(
        vocab_size=50,
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_rate=0.0,
    )
    return DecoderConfig(**{**base, **changes})


def _classifier(**changes):
    config = tiny_config(num_layers=2, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
    return EncoderForSequenceClassification(config.replace(**changes), num_labels=3)


def _batch(config):
    return {
        "inputs": random_ids(config, B, T),
        "padding_mask": right_padding([T, 5], T).astype(bool),
        "labels": jnp.array([0, 2]),
    }


def _grads(model, params, batch):
    def loss(p):
        logits = model.apply({"params": p}, batch["inputs"], batch["padding_mask"])
        return classification_loss(logits, batch)[0]

    return jax.jit(jax.grad(loss))(params)


@functools.cache
def _dense_setup():
    model = _classifier()
    batch = _batch(model.config)
    params = jax.jit(model.init)(jax.random.key(0), batch["inputs"], batch["padding_mask"])[
        "params"
    ]
    return model, batch, params


def test_one_expert_with_room_for_all_tokens_is_the_dense_model():
    """E = 1: the router's softmax is 1 and nothing drops, so the Switch layer is the
    dense feed-forward with the same weights, forward and backward."""
    dense, batch, params = _dense_setup()
    moe = _classifier(num_experts=1, expert_capacity_factor=1.0)
    moe_params = jax.jit(moe.init)(jax.random.key(1), batch["inputs"], batch["padding_mask"])[
        "params"
    ]
    flat = traverse_util.flatten_dict(moe_params, sep="/")
    for path, value in traverse_util.flatten_dict(params, sep="/").items():
        if "feed_forward" in path:  # dense [in, out] -> expert-stacked [1, in, out]
            flat[path.replace("feed_forward/", "feed_forward/experts/")] = value[None]
        else:
            flat[path] = value
    moe_params = traverse_util.unflatten_dict(flat, sep="/")
    apply = lambda m, p: m.apply({"params": p}, batch["inputs"], batch["padding_mask"])  # noqa: E731
    np.testing.assert_allclose(
        jax.jit(functools.partial(apply, moe))(moe_params),
        jax.jit(functools.partial(apply, dense))(params),
        atol=1e-5,
    )
    grads = traverse_util.flatten_dict(_grads(moe, moe_params, batch), sep="/")
    for path, value in traverse_util.flatten_dict(_grads(dense, params, batch), sep="/").items():
        moe_path = path.replace("feed_forward/", "feed_forward/experts/")
        moe_value = grads[moe_path][0] if moe_path != path else grads[path]
        np.testing.assert_allclose(moe_value, value, atol=1e-5, err_msg=path)


def test_train_step_adds_weighted_expert_losses_and_logs_them():
    model = _classifier(num_experts=4, expert_capacity_factor=0.5, load_balancing_loss=0.5)
    batch = _batch(model.config)
    params = jax.jit(model.init)(jax.random.key(0), batch["inputs"], batch["padding_mask"])[
        "params"
    ]
    tx = optax.sgd(1.0)  # the update is minus the gradient
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    # dropout is off, so the step's loss is a function of the parameters alone
    new_state, metrics = jax.jit(make_train_step(model, tx, seed=0))(state, batch)

    def objective(p):
        logits, sown = model.apply(
            {"params": p}, batch["inputs"], batch["padding_mask"], mutable=[MOE_LOSSES]
        )
        per_layer = sown[MOE_LOSSES]["encoder"]
        total = classification_loss(logits, batch)[0]
        for layer in ("layer_0", "layer_1"):
            losses = per_layer[layer]["feed_forward"]
            total += 0.5 * losses["load_balancing_loss"][0] + 1e-3 * losses["router_z_loss"][0]
        return total, per_layer

    grads, per_layer = jax.jit(jax.grad(objective, has_aux=True))(params)
    expected = jax.tree.map(lambda p, g: p - g, params, grads)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), new_state.params, expected
    )
    dropped = np.mean([per_layer[k]["feed_forward"]["tokens_dropped"][0] for k in per_layer])
    assert 0 < dropped < 1
    np.testing.assert_allclose(metrics["moe/tokens_dropped"], dropped, rtol=1e-6)
    assert {"moe/aux_loss", "moe/load_balancing_loss", "moe/router_z_loss"} <= set(metrics)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_gradients(remat):
    dense, batch, params = _dense_setup()
    model = _classifier(remat=remat)
    jaxpr = str(jax.make_jaxpr(lambda p: _grads(model, p, batch))(params))
    assert "remat" in jaxpr or "checkpoint" in jaxpr  # the switch reaches jax.checkpoint
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        _grads(model, params, batch),
        _grads(dense, params, batch),
    )


def test_decoder_remat_with_experts_gives_the_same_gradients():
    config = _decoder_config(remat="full", num_experts=2)
    model = DecoderLM(config)
    ids = random_ids(config, B, T)
    params = jax.jit(model.init)(jax.random.key(0), ids)["params"]
    plain = DecoderLM(config.replace(remat="none"))
    loss = lambda m, p: jnp.mean(m.apply({"params": p}, ids) ** 2)  # noqa: E731
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        jax.jit(jax.grad(functools.partial(loss, model)))(params),
        jax.jit(jax.grad(functools.partial(loss, plain)))(params),
    )


def test_bfloat16_compute_with_float32_parameters():
    dense, batch, params = _dense_setup()
    model = _classifier(dtype="bfloat16")
    bf16_params = jax.jit(model.init)(jax.random.key(0), batch["inputs"], batch["padding_mask"])[
        "params"
    ]
    assert {p.dtype for p in jax.tree.leaves(bf16_params)} == {jnp.dtype(jnp.float32)}
    hidden = jax.jit(Encoder(model.config).apply)({"params": params["encoder"]}, batch["inputs"])
    assert hidden.dtype == jnp.bfloat16
    grads32, grads16 = _grads(dense, params, batch), _grads(model, params, batch)
    assert {g.dtype for g in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
    flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads32)])
    flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads16)])
    # bfloat16 keeps 8 bits of mantissa: the gradient direction agrees, not the last digits.
    cosine = jnp.vdot(flat32, flat16) / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))
    assert float(cosine) > 0.99
    assert not np.allclose(flat16, flat32, atol=1e-7)  # it did compute in bfloat16


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"remat": "some"}, "remat"),
        ({"dtype": "float16"}, "dtype"),
        ({"num_experts": 4, "ff_chunk_size": 4}, "ff_chunk_size"),
        ({"num_experts": 4, "expert_top_k": 3}, "expert_top_k"),
    ],
)
def test_bad_switches(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**changes)


def test_reversible_refuses_experts_and_remat():
    with pytest.raises(ValueError, match="reversible"):
        _decoder_config(reversible=True, num_experts=2)
