"""Smoke test: a one-layer encoder on short ListOps, under a minute on one CPU core.

effjax train smoke --workdir /tmp/effjax-smoke
"""

from effjax.data.listops import ListOpsSpec
from effjax.models import EncoderConfig
from effjax.train.config import DataConfig, ExperimentConfig, OptimizerConfig, RunConfig

config = ExperimentConfig(
    name="smoke",
    data=DataConfig(
        kind="listops",
        listops=ListOpsSpec(
            min_length=10,
            max_length=40,
            max_depth=3,
            max_args=5,
            num_train=1024,
            num_validation=128,
            num_test=128,
        ),
        cache_dir="~/.cache/effjax/data",
        max_length=48,
    ),
    model=EncoderConfig(
        vocab_size=17,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=48,
        hidden_dropout_rate=0.0,
        attention_dropout_rate=0.0,
        attention="dense",
    ),
    optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=10, decay="cosine"),
    run=RunConfig(
        seed=0,
        batch_size=32,
        num_steps=150,
        log_every=25,
        eval_every=50,
        checkpoint_every=50,
        eval_examples=128,
    ),
    num_classes=10,
)
