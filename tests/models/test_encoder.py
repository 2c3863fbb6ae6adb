import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax.attention import registry
from effjax.models import (
    Encoder,
    EncoderForSequenceClassification,
    extend_position_embeddings,
)
from tests.models.conftest import random_ids, right_padding, tiny_config, windowed_dense

B, T = 2, 12


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config()
    model = Encoder(cfg)
    ids = random_ids(cfg, B, T)
    return cfg, model, jax.jit(model.init)(jax.random.key(1), ids), ids


def jit_apply(model):
    return jax.jit(model.apply, static_argnames="deterministic")


def test_padding_tokens_do_not_change_real_outputs(tiny):
    _cfg, model, variables, ids = tiny
    mask = right_padding([T, 7], T)
    other = ids.at[1, 7:].set(4)
    apply = jit_apply(model)
    out = apply(variables, ids, mask)
    out2 = apply(variables, other, mask)
    np.testing.assert_allclose(out[1, :7], out2[1, :7], atol=1e-5)
    assert not np.allclose(out[1, :7], apply(variables, other)[1, :7], atol=1e-3)


def test_registered_variant_by_name_gets_options_and_padding(tiny):
    cfg, model, variables, ids = tiny
    mask = right_padding([T, 9], T)
    dense = model.apply(variables, ids, mask)
    wide = Encoder(
        cfg.replace(attention="test_windowed_dense", attention_options={"window_size": T})
    )
    np.testing.assert_allclose(wide.apply(variables, ids, mask), dense, atol=1e-5)
    narrow = Encoder(
        cfg.replace(attention="test_windowed_dense", attention_options={"window_size": 1})
    )
    got = narrow.apply(variables, ids, mask)
    assert not np.allclose(got, dense, atol=1e-3)


def test_per_layer_options_reach_each_layer(tiny, monkeypatch):
    cfg, _model, variables, ids = tiny
    seen = []

    def spy(query, key, value, *, window_size, padding_mask=None, is_causal=False):
        seen.append((window_size, is_causal, None if padding_mask is None else padding_mask.shape))
        return windowed_dense(query, key, value, window_size=window_size, padding_mask=padding_mask)

    # Registered first: a config checks its attention when it is built.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    ea.register("spy", spy)
    spy_cfg = cfg.replace(
        attention=spy.__name__,
        num_layers=2,
        layer_attention_options=[{"window_size": 2}, {"window_size": 5}],
    )
    two_layers = {"params": {**variables["params"], "layer_1": variables["params"]["layer_0"]}}
    Encoder(spy_cfg).apply(two_layers, ids, right_padding([T, 3], T))
    assert seen == [(2, False, (B, T)), (5, False, (B, T))]


def test_token_types_change_outputs_and_default_to_zero(tiny):
    _cfg, model, variables, ids = tiny
    apply = jit_apply(model)
    zeros = apply(variables, ids, token_type_ids=jnp.zeros_like(ids))
    np.testing.assert_array_equal(apply(variables, ids), zeros)
    ones = apply(variables, ids, token_type_ids=jnp.ones_like(ids))
    assert not np.allclose(ones, zeros, atol=1e-3)


def test_classifier_is_a_dense_layer_on_the_pooled_first_token(tiny):
    cfg, model, variables, ids = tiny
    clf = EncoderForSequenceClassification(cfg, num_labels=3)
    kernel, bias = jax.random.normal(jax.random.key(2), (2, cfg.hidden_size, 3))
    params = {"encoder": variables["params"], "classifier": {"kernel": kernel, "bias": bias[0]}}
    logits = clf.apply({"params": params}, ids)
    hidden = jit_apply(model)(variables, ids)
    pooler = variables["params"]["pooler"]
    pooled = jnp.tanh(hidden[:, 0] @ pooler["kernel"] + pooler["bias"][None])
    want = pooled @ params["classifier"]["kernel"] + params["classifier"]["bias"][None]
    np.testing.assert_allclose(logits, want, atol=1e-5)


def test_dropout_only_when_not_deterministic(tiny):
    _cfg, model, variables, ids = tiny
    apply = jit_apply(model)
    a = apply(variables, ids, deterministic=False, rngs={"dropout": jax.random.key(0)})
    b = apply(variables, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(a, b, atol=1e-3)
    c = apply(variables, ids, deterministic=True)
    np.testing.assert_array_equal(c, apply(variables, ids, deterministic=True))
    assert not np.allclose(a, c, atol=1e-3)


def test_input_longer_than_position_table_raises(tiny):
    cfg, model, variables, _ = tiny
    too_long = jnp.ones((1, cfg.max_position_embeddings + 1), jnp.int32)
    with pytest.raises(ValueError, match="25 tokens but the position table covers 24"):
        model.apply(variables, too_long)
    roberta = tiny_config(model_type="roberta", position_offset=2, pad_token_id=1)
    with pytest.raises(ValueError, match="23 tokens but the position table covers 22"):
        Encoder(roberta).init(jax.random.key(0), jnp.ones((1, 23), jnp.int32))


def test_bad_mask_shape_raises(tiny):
    _cfg, model, variables, ids = tiny
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 5\) != input_ids shape"):
        model.apply(variables, ids, jnp.ones((B, 5), jnp.int32))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_extended_positions_tile_the_table_and_keep_short_inputs(tiny, model_type):
    offset = 2 if model_type == "roberta" else 0
    cfg = tiny_config(model_type=model_type, position_offset=offset, pad_token_id=1)
    ids = random_ids(cfg, B, cfg.max_length)
    variables = tiny[2]  # same shapes: the RoBERTa offset only moves where positions start
    longer, long_cfg = extend_position_embeddings(variables, cfg, 3 * cfg.max_length - 5)

    old = np.asarray(variables["params"]["embeddings"]["position_embeddings"]["embedding"])
    new = np.asarray(longer["params"]["embeddings"]["position_embeddings"]["embedding"])
    assert long_cfg.max_length == 3 * cfg.max_length - 5
    assert new.shape == (offset + long_cfg.max_length, cfg.hidden_size)
    learned = old[offset:]
    for p in (0, cfg.max_length - 1, cfg.max_length, 2 * cfg.max_length + 3):
        np.testing.assert_array_equal(new[offset + p], learned[p % cfg.max_length])
    np.testing.assert_array_equal(new[:offset], old[:offset])

    long_apply = jit_apply(Encoder(long_cfg))
    np.testing.assert_allclose(
        long_apply(longer, ids), jit_apply(Encoder(cfg))(variables, ids), atol=1e-6
    )
    long_ids = random_ids(cfg, 1, long_cfg.max_length, seed=4)
    assert np.isfinite(long_apply(longer, long_ids)).all()


def test_extension_refuses_to_shrink(tiny):
    cfg, _, variables, _ = tiny
    with pytest.raises(ValueError, match="new_max_len=10 is shorter than the current 24"):
        extend_position_embeddings(variables, cfg, 10)


def test_chunked_feed_forward_equals_unchunked_outputs_and_gradients(tiny):
    """``ff_chunk_size`` only changes how the feed-forward is scheduled: same parameters,
    same outputs and gradients, dropout included (it acts on the whole output)."""
    cfg, model, variables, ids = tiny
    chunked = Encoder(cfg.replace(ff_chunk_size=5))  # T=12: the last chunk is padded
    assert jax.tree.structure(chunked.init(jax.random.key(1), ids)) == jax.tree.structure(variables)
    mask = right_padding([T, 9], T)
    weights = jax.random.normal(jax.random.key(3), (B, T, cfg.hidden_size))

    def loss(module):
        def f(params):
            out = module.apply(
                {"params": params}, ids, mask, deterministic=False,
                rngs={"dropout": jax.random.key(4)},
            )  # fmt: skip
            return jnp.sum(out * weights), out

        return jax.jit(jax.value_and_grad(f, has_aux=True))

    (_, got), got_grads = loss(chunked)(variables["params"])
    (_, want), want_grads = loss(model)(variables["params"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert jax.tree.leaves(want_grads)[0].any()


def test_ff_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="ff_chunk_size"):
        tiny_config(ff_chunk_size=0)


def test_classifier_makes_first_token_global_under_global_local(monkeypatch):
    from effjax.attention import dot_product_attention, masks, registry
    from effjax.models import EncoderConfig, EncoderForSequenceClassification

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def first_token_global_dense(q, k, v, *, window_size, padding_mask=None, **_):
        b, t = q.shape[:2]
        first = jnp.broadcast_to((jnp.arange(t) == 0)[None, :], (b, t))
        mask = masks.window_mask(t, t, window_size)[None, None] | masks.global_tokens_mask(first)
        return dot_product_attention(q, k, v, mask=mask, padding_mask=padding_mask)

    registry.register("first_token_global_dense", first_token_global_dense)
    cfg = EncoderConfig(
        vocab_size=50,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        attention="global_local",
        attention_options={"window_size": 2},
    )
    ids = jax.random.randint(jax.random.key(0), (2, 12), 1, 50)
    clf = EncoderForSequenceClassification(cfg, num_labels=3)
    variables = clf.init(jax.random.key(1), ids)
    reference = EncoderForSequenceClassification(
        cfg.replace(attention="first_token_global_dense"), num_labels=3
    )
    np.testing.assert_allclose(
        clf.apply(variables, ids), reference.apply(variables, ids), atol=1e-5
    )
