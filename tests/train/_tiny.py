"""A tiny attention classifier and task shared by the training tests."""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from effjax.data.batching import ClassificationData
from effjax.layers import MultiHeadAttention
from effjax.train.config import DataConfig, ExperimentConfig, OptimizerConfig, RunConfig


class TinyClassifier(nn.Module):
    vocab_size: int = 12
    features: int = 16
    num_classes: int = 4

    @nn.compact
    def __call__(self, inputs, padding_mask, *, deterministic=True):
        x = nn.Embed(self.vocab_size, self.features, name="token_embed")(inputs)
        x = x + MultiHeadAttention(num_heads=2, name="attention")(x, padding_mask=padding_mask)
        x = nn.Dropout(0.1)(x, deterministic=deterministic)
        weights = padding_mask[..., None].astype(x.dtype)
        pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        return nn.Dense(self.num_classes, name="head")(pooled)


@dataclasses.dataclass(frozen=True)
class TinyModelConfig:
    features: int = 16


def tiny_data(seed: int = 0, batch_size: int = 8) -> ClassificationData:
    """Label = the most frequent of tokens 1..4 in a random sequence (learnable quickly)."""
    rng = np.random.default_rng(123)

    def split(n):
        tokens = rng.integers(1, 5, size=(n, 10))
        labels = np.array([np.bincount(t, minlength=5)[1:].argmax() for t in tokens])
        return [list(map(int, t)) for t in tokens], labels.tolist()

    splits = {"train": split(64), "validation": split(16), "test": split(16)}
    return ClassificationData(splits, batch_size=batch_size, seed=seed, max_length=10)


def tiny_config(**run) -> ExperimentConfig:
    defaults = dict(
        batch_size=8,
        num_steps=20,
        log_every=5,
        eval_every=10,
        checkpoint_every=5,
        progress=False,
    )
    return ExperimentConfig(
        name="tiny",
        data=DataConfig(kind="associative_recall"),
        model=TinyModelConfig(),
        optimizer=OptimizerConfig(learning_rate=3e-2, warmup_steps=2, decay_steps=40),
        run=RunConfig(**{**defaults, **run}),
        num_classes=4,
    )


def tiny_run(config: ExperimentConfig, num_steps: int = 1, batch_size: int = 8, **run):
    """A packaged ListOps config cut to ``num_steps`` steps of ``batch_size`` examples,
    8-example evaluation splits (cheap to generate, to evaluate, and to compile once)."""
    listops = dataclasses.replace(
        config.data.listops, num_train=batch_size * num_steps, num_validation=8, num_test=8
    )
    run = dataclasses.replace(
        config.run, batch_size=batch_size, num_steps=num_steps, eval_examples=8,
        progress=False, **run,
    )  # fmt: skip
    return config.replace(data=dataclasses.replace(config.data, listops=listops), run=run)
