"""ListOps at a CPU-trainable scale: the LRA task with shorter expressions.

LRA's ListOps has 500 < length < 2000 tokens and depth <= 10 (Tay et al. 2020);
here expressions have 60 < length < 200 tokens and depth <= 5 so that a 2-layer,
64-wide encoder trains in minutes on one CPU core. Operators, argument counts
(2-10), the operator probability (0.25) and the 10 classes are LRA's. The inputs
start with a classification token, whose final state feeds the classifier.

    effjax train listops --workdir /tmp/effjax-listops

Change the attention with ``for_variant("local", window_size=32)`` (experiments/listops.py).
"""

import dataclasses

from effjax.data.listops import ListOpsSpec
from effjax.models import EncoderConfig
from effjax.train.config import DataConfig, ExperimentConfig, OptimizerConfig, RunConfig

MAX_TOKENS = 200  # expression tokens + the classification token stay below this

config = ExperimentConfig(
    name="listops-dense",
    data=DataConfig(
        kind="listops",
        listops=ListOpsSpec(
            min_length=60,
            max_length=MAX_TOKENS - 1,
            max_depth=5,
            max_args=10,
            operator_prob=0.25,
            num_train=10_000,
            num_validation=500,
            num_test=2_000,
            seed=0,
        ),
        cache_dir="~/.cache/effjax/data",
        boundaries=(128, MAX_TOKENS),
    ),
    model=EncoderConfig(
        vocab_size=17,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        max_position_embeddings=MAX_TOKENS,
        hidden_dropout_rate=0.0,
        attention_dropout_rate=0.0,
        attention="dense",
    ),
    optimizer=OptimizerConfig(
        learning_rate=2e-3, warmup_steps=100, decay="cosine", weight_decay=0.01
    ),
    run=RunConfig(
        seed=0,
        batch_size=32,
        num_steps=1000,
        log_every=100,
        eval_every=500,
        checkpoint_every=500,
        eval_examples=500,
    ),
    num_classes=10,
)


def for_variant(attention: str, **options) -> ExperimentConfig:
    """The same experiment with another attention variant and its options."""
    model = config.model.replace(attention=attention, attention_options=options)
    return dataclasses.replace(config, name=f"listops-{attention}", model=model)
