"""Funnel-Transformer pooling in the encoder, against the layers run by hand with numpy
pooling between blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.models import Encoder, EncoderLayer
from tests.models.conftest import random_ids, right_padding, tiny_config


def _numpy_pool(x, mask, pooling):
    """Mean (or max) of each pair of real positions; the pair mask."""
    b, t, d = x.shape
    out = np.zeros((b, -(-t // 2), d), np.float32)
    out_mask = np.zeros(out.shape[:2], bool)
    for g in range(b):
        for p in range(out.shape[1]):
            real = [j for j in (2 * p, 2 * p + 1) if j < t and mask[g, j]]
            if real:
                rows = x[g, real]
                out[g, p] = rows.mean(0) if pooling == "mean" else rows.max(0)
                out_mask[g, p] = True
    return out, out_mask


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_funnel_pools_queries_between_blocks_and_attends_to_unpooled_keys(pooling):
    config = tiny_config(num_layers=3, block_sizes=(1, 2), pooling=pooling, hidden_dropout_rate=0.0)
    assert config.funnel_pooling_layers == {1}
    ids = random_ids(config, 2, 7)
    mask = right_padding([7, 3], 7).astype(bool)
    model = Encoder(config)
    params = jax.jit(model.init)(jax.random.key(0), ids, mask)["params"]
    out = jax.jit(model.apply)({"params": params}, ids, mask)
    assert out.shape == (2, 4, config.hidden_size)

    x = model.apply(
        {"params": params},
        method=lambda m: m.embeddings(ids, jnp.zeros_like(ids), deterministic=True),
    )
    layer = EncoderLayer(config, config.attention_options)
    run = lambda i, x, m, **kv: layer.apply(  # noqa: E731
        {"params": params[f"layer_{i}"]}, x, m, deterministic=True, **kv
    )
    x = run(0, x, mask)
    pooled, pooled_mask = _numpy_pool(np.asarray(x), np.asarray(mask), pooling)
    x = run(1, jnp.asarray(pooled), pooled_mask, inputs_kv=x, kv_padding_mask=mask)
    x = run(2, x, pooled_mask)
    real = pooled_mask[..., None]
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, x, 0), atol=1e-5)


def test_funnel_rejects_block_sizes_that_do_not_sum_to_the_layers():
    with pytest.raises(ValueError, match="block_sizes"):
        tiny_config(num_layers=3, block_sizes=(1, 1))
    with pytest.raises(ValueError, match="pooling"):
        tiny_config(num_layers=2, block_sizes=(1, 1), pooling="sum")


def test_upsampling_decoder_repeats_the_last_block_and_adds_the_first():
    config = tiny_config(num_layers=3, block_sizes=(1, 1, 1), upsample_layers=1,
                         hidden_dropout_rate=0.0)  # fmt: skip
    ids = random_ids(config, 2, 7)
    mask = right_padding([7, 3], 7).astype(bool)
    model = Encoder(config)
    params = jax.jit(model.init)(jax.random.key(0), ids, mask)["params"]
    out = jax.jit(model.apply)({"params": params}, ids, mask)
    assert out.shape == (2, 7, config.hidden_size)  # token level again

    layer = EncoderLayer(config, config.attention_options)
    run = lambda name, x, m, **kv: layer.apply(  # noqa: E731
        {"params": params[name]}, x, m, deterministic=True, **kv
    )
    x = model.apply(
        {"params": params},
        method=lambda m: m.embeddings(ids, jnp.zeros_like(ids), deterministic=True),
    )
    first = run("layer_0", x, mask)
    x, m = first, mask
    for i in (1, 2):  # 7 -> 4 -> 2 positions
        pooled, pooled_mask = _numpy_pool(np.asarray(x), np.asarray(m), "mean")
        x = run(f"layer_{i}", jnp.asarray(pooled), pooled_mask, inputs_kv=x, kv_padding_mask=m)
        m = pooled_mask
    # Token t reads pooled position t // 4 of the last block.
    up = np.asarray(x)[:, np.arange(7) // 4] + np.asarray(first)
    want = run("upsample_layer_0", jnp.asarray(up), mask)
    real = mask[..., None]
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, want, 0), atol=1e-5)


def test_upsampling_needs_two_funnel_blocks():
    with pytest.raises(ValueError, match="upsample_layers=1 upsamples"):
        tiny_config(num_layers=2, upsample_layers=1)
    with pytest.raises(ValueError, match="upsample_layers must be an int >= 0"):
        tiny_config(num_layers=2, block_sizes=(1, 1), upsample_layers=-1)
