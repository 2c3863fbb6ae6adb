"""Whole encoder layers and peer models in the benchmark.

``--layers``: one effjax encoder layer (post-LN, attention + feed-forward, D = N * H,
d_ff = 4 D) per registered variant, against the same layer on
``jax.nn.dot_product_attention``.

``--peers``: the classic Hugging Face efficient-transformer comparisons (BigBird
block_sparse vs original_full, Longformer window 512 vs 4, Reformer LSH vs full),
each a one-layer PyTorch model built from its transformers config class, beside a
one-layer effjax encoder of the same sizes and attention settings, timed in the same
run (inference, batch ``B``, as the classic benchmark did): effjax.bench.peers times
each framework in its own process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from effjax.attention import registry
from effjax.bench import runner, suite

_HOOK_OPTIONS = ("rng", "features", "proj_k", "proj_v")
"""Options the layer supplies itself through its hooks (keys, features, projections)."""


def _jax_nn_attention(query, key, value, *, padding_mask=None, is_causal=False, **_):
    mask = None if padding_mask is None else padding_mask[:, None, None, :]
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal)


def _encoder_layer_program(
    name: str, shape: suite.Shape, mode: str, rng: jax.Array
) -> tuple[Callable, tuple]:
    from effjax.models import EncoderConfig, EncoderLayer

    options = suite.spec_for(name).options(rng, shape)
    call_options = {k: v for k, v in options.items() if isinstance(v, jax.Array)}
    static = {k: v for k, v in options.items() if k not in call_options}
    for k in _HOOK_OPTIONS:
        call_options.pop(k, None)
    hidden = shape.heads * shape.head_dim
    config = EncoderConfig(
        hidden_size=hidden,
        num_layers=1,
        num_heads=shape.heads,
        intermediate_size=4 * hidden,
        attention=_jax_nn_attention if name == runner.BASELINE else name,
        attention_options=static,
        hidden_dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    layer = EncoderLayer(config, config.attention_options)
    x = jax.random.normal(rng, (shape.batch, shape.seq_len, hidden))
    global_mask = call_options.get("global_mask")  # the only per-call datum of a layer
    variables = layer.init(rng, x, None, global_mask, deterministic=True)

    def forward(variables, x, call_options):
        global_mask = call_options.get("global_mask")
        return layer.apply(variables, x, None, global_mask, deterministic=True)

    if mode == "fwd":
        return forward, (variables, x, call_options)

    def forward_backward(variables, x, call_options):
        loss = lambda p, x: jnp.sum(forward(p, x, call_options))  # noqa: E731
        return jax.grad(loss, argnums=(0, 1))(variables, x)

    return forward_backward, (variables, x, call_options)


def layer_records(config: runner.BenchConfig, env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One record per (length, mode, variant) for whole encoder layers, baseline first."""
    variants = [runner.BASELINE] + [v for v in config.variants if v != runner.BASELINE]
    for seq_len in config.seq_lens:
        shape = suite.Shape(config.batch, seq_len, config.heads, config.head_dim)
        for mode in config.modes:
            for name in variants:
                program, args = _encoder_layer_program(name, shape, mode, jax.random.key(seq_len))
                result = runner.measure_program(config, program, args, seq_len)
                yield runner.make_record(
                    kind="layer",
                    variant=name,
                    implementation=suite.implementation_of(name, shape),
                    options=suite.spec_for(name).summary(shape),
                    mode=mode,
                    shape=shape,
                    dtype="float32",
                    result=result,
                    flops=None,
                    env=env,
                )


@dataclasses.dataclass(frozen=True)
class PeerPair:
    """A Hugging Face model and the effjax encoder that faces it at the same sizes.

    Attributes:
      family: the classic comparison ("bigbird", "longformer", "reformer").
      setting: its attention setting ("block_sparse", "window512", "lsh", ...).
      hf_config: seq_len -> a one-layer transformers config.
      effjax_attention: the effjax variant and options facing it.
      max_seq_len: the classic comparison's longest length.
    """

    family: str
    setting: str
    hf_config: Callable[[int], Any]
    effjax_attention: tuple[str, dict[str, Any]]
    max_seq_len: int = 4096


def _bigbird(attention_type: str):
    def make(seq_len: int):
        from transformers import BigBirdConfig

        return BigBirdConfig(
            num_hidden_layers=1,
            attention_type=attention_type,
            block_size=64,
            num_random_blocks=3,
            max_position_embeddings=max(4096, seq_len),
        )

    return make


def _longformer(window: int):
    def make(seq_len: int):
        from transformers import LongformerConfig

        # RoBERTa positions start after pad_token_id + 1 = 2.
        return LongformerConfig(
            num_hidden_layers=1, attention_window=window, max_position_embeddings=seq_len + 2
        )

    return make


REFORMER_LSH = {"num_hashes": 4, "num_buckets": 64, "chunk_size": 64}


def _reformer(full: bool):
    def make(seq_len: int):
        from transformers import ReformerConfig

        return ReformerConfig(
            hidden_size=512,
            num_attention_heads=8,
            attention_head_size=64,
            feed_forward_size=2048,
            attn_layers=["lsh"],
            axial_pos_embds=False,
            max_position_embeddings=seq_len,
            is_decoder=False,
            num_hashes=REFORMER_LSH["num_hashes"],
            num_buckets=REFORMER_LSH["num_buckets"],
            # "Full" attention in the classic benchmark: one chunk covering the sequence.
            lsh_attn_chunk_length=seq_len if full else REFORMER_LSH["chunk_size"],
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            lsh_attention_probs_dropout_prob=0.0,
        )

    return make


PEERS = (
    PeerPair(
        "bigbird",
        "block_sparse",
        _bigbird("block_sparse"),
        ("block_sparse", {"block_size": 64, "num_random_blocks": 3}),
    ),
    PeerPair("bigbird", "original_full", _bigbird("original_full"), ("dense", {})),
    PeerPair("longformer", "window512", _longformer(512), ("local", {"window_size": 256})),
    PeerPair("longformer", "window4", _longformer(4), ("local", {"window_size": 2})),
    PeerPair("reformer", "lsh", _reformer(full=False), ("lsh", dict(REFORMER_LSH)), 12000),
    PeerPair("reformer", "full", _reformer(full=True), ("dense", {}), 12000),
)


def _effjax_encoder_config(hf_config, attention: str, options: dict[str, Any]):
    from effjax.models import EncoderConfig

    if hf_config.model_type == "reformer":
        return EncoderConfig(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            num_layers=1,
            num_heads=hf_config.num_attention_heads,
            intermediate_size=hf_config.feed_forward_size,
            max_position_embeddings=hf_config.max_position_embeddings,
            attention=attention,
            attention_options=options,
            hidden_dropout_rate=0.0,
            attention_dropout_rate=0.0,
            add_pooler=False,
        )
    config = EncoderConfig.from_hf_config(hf_config, attention=attention)
    return config.replace(
        attention_options=options,
        layer_attention_options=None,
        add_pooler=False,
        hidden_dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )


def effjax_peer_program(
    hf_config, attention: str, options: dict[str, Any], seq_len: int, batch: int
) -> tuple[Callable, tuple]:
    """``(program, args)``: the one-layer effjax encoder facing ``hf_config``'s model, on
    random token ids ``[batch, seq_len]``."""
    from effjax.models import Encoder

    model = Encoder(_effjax_encoder_config(hf_config, attention, options))
    ids = jax.random.randint(jax.random.key(0), (batch, seq_len), 5, hf_config.vocab_size)
    variables = model.init(jax.random.key(0), ids)
    return (lambda variables, ids: model.apply(variables, ids)), (variables, ids)


def torch_peer_call(hf_config, seq_len: int, batch: int) -> tuple[Callable, Callable]:
    """``(call, sync)``: ``hf_config``'s PyTorch model (transformers, no weights
    downloaded) run on random token ids ``[batch, seq_len]``, in inference mode."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModel.from_config(hf_config).eval().to(device)
    ids = torch.randint(5, hf_config.vocab_size, (batch, seq_len), device=device)

    def call():
        with torch.inference_mode():
            return model(input_ids=ids).last_hidden_state

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return call, sync


def pairs_at(seq_len: int) -> list[PeerPair]:
    """The pairs measured at ``seq_len``: within their classic range, variant registered."""
    registered = registry.available()
    return [p for p in PEERS if seq_len <= p.max_seq_len and p.effjax_attention[0] in registered]


def peer_pair(family: str, setting: str) -> PeerPair:
    """The pair of :data:`PEERS` named ``family``, ``setting``."""
    (pair,) = [p for p in PEERS if (p.family, p.setting) == (family, setting)]
    return pair
