"""Transformer-XL smoke run: a two-layer decoder with segment memory on repeated blocks.

Random 24-token blocks are each written four times, and segments are 16 tokens: a
repeat is predictable only from 24 positions back, which a segment reaches only through
its memory (mem_len=16; evaluation uses 32). Set mem_len=0 to watch the loss stay near
chance (ln 15 = 2.71) on the repeats.

effjax train configs/smoke_memory.py --workdir /tmp/effjax-smoke-memory
"""

from effjax.models import DecoderConfig
from effjax.train.config import DataConfig, ExperimentConfig, OptimizerConfig, RunConfig

config = ExperimentConfig(
    name="smoke_memory",
    data=DataConfig(
        kind="repeated_blocks",
        repeat_period=24,
        repeat_count=4,
        repeat_vocab=16,
        repeat_tokens=(32768, 4096, 4096),
        max_length=16,  # the segment length
    ),
    model=DecoderConfig(
        vocab_size=16,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_rate=0.0,
        mem_len=16,
        eval_mem_len=32,
    ),
    optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=20, decay="cosine"),
    run=RunConfig(
        seed=0,
        batch_size=16,
        num_steps=300,
        log_every=25,
        eval_every=100,
        checkpoint_every=100,
        eval_examples=256,
    ),
)
