"""A byte-level encoder classifier with Charformer's GBST front end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.data.text import BYTE_VOCAB_SIZE
from effjax.models import Encoder, EncoderForMaskedLM, EncoderForSequenceClassification
from tests.models.conftest import right_padding, tiny_config


def test_gbst_classifier_pools_bytes_and_ignores_padding():
    config = tiny_config(
        vocab_size=BYTE_VOCAB_SIZE,
        max_position_embeddings=16,
        gbst_block_sizes=[1, 2, 3],  # a JSON list works too
        gbst_downsample_rate=3,
        hidden_dropout_rate=0.0,
    )
    assert config.gbst_block_sizes == (1, 2, 3)
    model = EncoderForSequenceClassification(config, num_labels=2)
    ids = jnp.asarray(np.frombuffer(b"bytes in, sub-words out!", np.uint8)[:14].reshape(2, 7))
    mask = right_padding([7, 4], 7)
    variables = jax.jit(model.init)(jax.random.key(0), ids, mask)
    params = variables["params"]
    assert "gbst" in params["encoder"]

    def logits(params, ids):
        return model.apply({"params": params}, ids, mask)

    other = ids.at[1, 4:].set(7)  # only padded bytes differ
    np.testing.assert_allclose(
        jax.jit(logits)(params, other), jax.jit(logits)(params, ids), atol=1e-6
    )
    # The layers see ceil(7 / 3) = 3 positions.
    hidden = jax.jit(Encoder(config).apply)({"params": params["encoder"]}, ids, mask)
    assert hidden.shape == (2, 3, config.hidden_size)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(logits(p, ids) ** 2)))(params)
    gbst_grads = jax.tree.leaves(grads["encoder"]["gbst"])
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert all(float(jnp.abs(g).max()) > 0 for g in gbst_grads)  # GBST is trained


def test_gbst_refuses_masked_lm_and_bad_sizes():
    config = tiny_config(gbst_block_sizes=(1, 2))
    ids = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="masked-LM"):
        EncoderForMaskedLM(config).init(jax.random.key(0), ids)
    with pytest.raises(ValueError, match="gbst_block_sizes"):
        tiny_config(gbst_block_sizes=(0, 2))
