"""Sukhbaatar et al. 2019's all-attention layer (``feed_forward=False``) and the encoder's
global memory tokens (``global_memory_tokens``, ETC / BigBird)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from effjax.layers import MultiHeadAttention
from effjax.models import DecoderConfig, Encoder
from effjax.models.decoder import DecoderLayer
from effjax.models.encoder import EncoderLayer
from tests.models.conftest import random_ids, right_padding, tiny_config

B, T = 2, 8
X = jax.random.normal(jax.random.key(0), (B, T, 16))
MASK = right_padding([T, 6], T).astype(bool)
OPTIONS = {"num_slots": 3}


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_all_attention_block_has_no_feed_forward_and_is_attention_alone(kind):
    sizes = dict(vocab_size=50, hidden_size=16, num_layers=1, num_heads=4, intermediate_size=32)
    common = dict(attention="persistent_memory", attention_options=OPTIONS, feed_forward=False)
    if kind == "encoder":
        cfg = tiny_config(**common)
        block = EncoderLayer(cfg, cfg.attention_options)
    else:
        cfg = DecoderConfig(**sizes, **common)
        block = DecoderLayer(cfg, cfg.attention_options)
    params = block.init(jax.random.key(1), X, MASK, deterministic=True)["params"]
    assert set(params) == {"attention", "attention_norm"}  # no feed_forward, no output_norm
    attention = MultiHeadAttention(
        num_heads=4, attention="persistent_memory", attention_options=OPTIONS,
        is_causal=kind == "decoder",
    )  # fmt: skip
    norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps)

    def attend(x):
        return attention.apply({"params": params["attention"]}, x, padding_mask=MASK)

    def layer_norm(x):
        return norm.apply({"params": params["attention_norm"]}, x)

    # Post-LN encoder, pre-LN decoder.
    want = layer_norm(X + attend(X)) if kind == "encoder" else X + attend(layer_norm(X))
    got = block.apply({"params": params}, X, MASK, deterministic=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_feed_forward_false_refuses_experts_and_reversible():
    with pytest.raises(ValueError, match="feed_forward=False has none"):
        tiny_config(feed_forward=False, num_experts=2)
    with pytest.raises(ValueError, match="feed_forward=False"):
        DecoderConfig(hidden_size=16, num_heads=2, num_layers=1, intermediate_size=8,
                      reversible=True, feed_forward=False)  # fmt: skip


def _position_jacobian_norms(model, variables, ids, mask):
    """``[B, T, P]``: how much output token ``i`` moves with the position embedding of
    row ``p`` (one per input position), from the exact Jacobian."""
    table = variables["params"]["embeddings"]["position_embeddings"]["embedding"]
    weights = jax.random.normal(jax.random.key(3), (table.shape[1],))

    def outputs(table):
        params = {**variables["params"]}
        params["embeddings"] = {
            **params["embeddings"], "position_embeddings": {"embedding": table}
        }  # fmt: skip
        return model.apply({"params": params}, ids, mask) @ weights  # [B, T]

    jacobian = jax.jit(jax.jacrev(outputs))(table)  # [B, T, P, D]
    return np.linalg.norm(np.asarray(jacobian), axis=-1)


def test_global_memory_tokens_connect_every_real_pair_under_a_sliding_window():
    local = {"attention": "global_local", "attention_options": {"window_size": 1}}
    model = Encoder(tiny_config(num_layers=2, global_memory_tokens=2, **local))
    ids = random_ids(model.config, B, T)
    variables = jax.jit(model.init)(jax.random.key(1), ids, MASK)
    assert variables["params"]["global_memory"].shape == (2, 16)
    apply = jax.jit(model.apply)  # one program for both calls below, not op by op
    out = apply(variables, ids, MASK)
    assert out.shape == (B, T, 16)  # the memory tokens are not in the output

    reach = _position_jacobian_norms(model, variables, ids, MASK)
    for b, length in enumerate([T, 6]):
        # Every real token depends on every real token, padding on none of them.
        assert (reach[b, :length, :length] > 1e-6).all()
        np.testing.assert_array_equal(reach[b, :length, length:T], 0.0)
    # Without the memory a two-layer window of 1 reaches 2 positions to each side.
    plain = Encoder(tiny_config(num_layers=2, **local))
    params = {k: v for k, v in variables["params"].items() if k != "global_memory"}
    reach = _position_jacobian_norms(plain, {"params": params}, ids, MASK)
    assert reach[0, 0, 3] == 0.0 and reach[0, 0, 2] > 1e-6

    other = ids.at[1, 6:].set(7)  # padded tokens change nothing
    np.testing.assert_allclose(apply(variables, other, MASK)[1, :6], out[1, :6], atol=1e-5)


def test_global_memory_tokens_refuse_funnel_pooling():
    with pytest.raises(ValueError, match="global_memory_tokens=2 does not combine"):
        tiny_config(num_layers=2, block_sizes=(1, 1), global_memory_tokens=2)
    with pytest.raises(ValueError, match="global_memory_tokens must be an int >= 0"):
        tiny_config(global_memory_tokens=-1)
