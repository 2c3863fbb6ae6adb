"""Model configurations: plain frozen dataclasses, and their translation from transformers.

An :class:`EncoderConfig` carries a BERT/RoBERTa-style encoder's sizes plus the
attention variant every layer uses (a registry name and its options); a
:class:`DecoderConfig` does the same for a causal LM. ``from_hf_config`` reads
transformers' ``BertConfig``, ``RobertaConfig``, ``BigBirdConfig`` and
``LongformerConfig`` (anything with the same attribute names works).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from flax.core import FrozenDict

from effjax.layers.feedforward import activation

#: ``model_type`` values whose position ids count real tokens from ``pad_token_id + 1``.
_ROBERTA_POSITIONS = ("roberta", "longformer", "xlm-roberta", "camembert")


def _freeze(options: Mapping[str, Any] | None) -> FrozenDict:
    return FrozenDict(dict(options or {}))


def _freeze_attention_options(config) -> None:
    """Makes a config's option mappings immutable and checks one per layer is given."""
    object.__setattr__(config, "attention_options", _freeze(config.attention_options))
    if config.layer_attention_options is None:
        return
    per_layer = tuple(_freeze(o) for o in config.layer_attention_options)
    if len(per_layer) != config.num_layers:
        raise ValueError(
            f"layer_attention_options has {len(per_layer)} entries, num_layers={config.num_layers}"
        )
    object.__setattr__(config, "layer_attention_options", per_layer)


def _check_sizes(config) -> None:
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    if config.hidden_size % config.num_heads:
        raise ValueError(
            f"hidden_size={config.hidden_size} must be divisible by num_heads={config.num_heads}"
        )
    kv = config.num_kv_heads or config.num_heads
    if config.num_heads % kv:
        raise ValueError(f"num_kv_heads={kv} must divide num_heads={config.num_heads}")
    activation(config.hidden_act)
    if config.ff_chunk_size is not None and config.ff_chunk_size <= 0:
        raise ValueError(f"ff_chunk_size must be positive or None, got {config.ff_chunk_size}")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """A BERT/RoBERTa-style encoder.

    Attributes:
      vocab_size, hidden_size (D), num_layers, num_heads (N), intermediate_size: sizes.
      num_kv_heads: K key/value heads (GQA), default N.
      max_position_embeddings: rows of the learned position table.
      position_offset: first position id of a real token (RoBERTa: ``pad_token_id + 1``,
        and padding tokens take position ``pad_token_id``); the longest input is
        ``max_position_embeddings - position_offset`` tokens.
      type_vocab_size: token-type (segment) embeddings.
      layer_norm_eps, hidden_act, initializer_range: as in transformers.
      hidden_dropout_rate: dropout on embeddings and residual branches.
      attention_dropout_rate: dropout on the attention output (see MultiHeadAttention).
      attention: registry name of the attention variant (``"dense"``, ``"local"``, ...).
      attention_options: its keyword options, for every layer.
      layer_attention_options: optional per-layer options merged over ``attention_options``
        (Longformer's per-layer windows), one mapping per layer.
      pad_token_id: the padding token.
      model_type: Hugging Face family ("bert" or "roberta"), used for export.
      add_pooler: whether the encoder has BERT's pooler (tanh dense on the first token).
      ff_chunk_size: run each feed-forward over chunks of this many positions
        (effjax.layers.FeedForward; same outputs, less activation memory), None = one pass.

    Example:
      >>> from effjax.models import EncoderConfig
      >>> cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
      ...                     intermediate_size=64, attention="local",
      ...                     attention_options={"window_size": 16})
      >>> cfg.max_length
      512
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    position_offset: int = 0
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    hidden_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    attention: str = "dense"
    attention_options: Mapping[str, Any] = FrozenDict()
    layer_attention_options: Sequence[Mapping[str, Any]] | None = None
    pad_token_id: int = 0
    model_type: str = "bert"
    add_pooler: bool = True
    ff_chunk_size: int | None = None

    def __post_init__(self):
        _check_sizes(self)
        _freeze_attention_options(self)
        if self.max_length <= 0:
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} leaves no positions "
                f"after position_offset={self.position_offset}"
            )

    @property
    def max_length(self) -> int:
        """The longest input the position table covers."""
        return self.max_position_embeddings - self.position_offset

    @property
    def counts_positions_from_tokens(self) -> bool:
        """RoBERTa's position ids: real tokens count up from ``position_offset``."""
        return self.model_type in _ROBERTA_POSITIONS

    def options_for_layer(self, index: int) -> FrozenDict:
        """Attention options of layer ``index``: shared ones, then the layer's own."""
        if self.layer_attention_options is None:
            return self.attention_options
        return FrozenDict({**self.attention_options, **self.layer_attention_options[index]})

    def replace(self, **changes) -> EncoderConfig:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(
        cls,
        hf_config,
        *,
        attention: str | None = None,
        attention_options: Mapping[str, Any] | None = None,
    ) -> EncoderConfig:
        """Translates a transformers config (BERT, RoBERTa, BigBird, Longformer).

        Sizes carry over. The attention follows the model: BigBird with
        ``attention_type="block_sparse"`` -> ``"block_sparse"`` with its ``block_size``
        and ``num_random_blocks``; Longformer -> ``"global_local"`` with
        ``window_size = attention_window // 2`` on each side (Longformer's
        ``attention_window`` is the full width; Beltagy et al. 2020, §3.1), per
        layer when the windows differ; everything else -> ``"dense"``.
        ``attention``/``attention_options`` override the choice (options are
        merged over the translated ones).

        Example:
          >>> from transformers import BigBirdConfig
          >>> cfg = EncoderConfig.from_hf_config(BigBirdConfig(block_size=32))
          >>> cfg.attention, dict(cfg.attention_options)
          ('block_sparse', {'block_size': 32, 'num_random_blocks': 3})
        """
        model_type = getattr(hf_config, "model_type", "bert")
        name, options, per_layer = _hf_attention(hf_config, model_type)
        offset = hf_config.pad_token_id + 1 if model_type in _ROBERTA_POSITIONS else 0
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None),
            intermediate_size=hf_config.intermediate_size,
            max_position_embeddings=hf_config.max_position_embeddings,
            position_offset=offset,
            type_vocab_size=hf_config.type_vocab_size,
            layer_norm_eps=hf_config.layer_norm_eps,
            hidden_act=hf_config.hidden_act,
            initializer_range=getattr(hf_config, "initializer_range", 0.02),
            hidden_dropout_rate=hf_config.hidden_dropout_prob,
            attention_dropout_rate=hf_config.attention_probs_dropout_prob,
            attention=attention or name,
            attention_options={**options, **(attention_options or {})},
            layer_attention_options=per_layer,
            pad_token_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
            model_type=model_type,
            add_pooler=getattr(hf_config, "add_pooling_layer", True),
        )


def _hf_attention(hf_config, model_type: str):
    """(registry name, shared options, per-layer options or None) of a transformers config."""
    if model_type == "big_bird" and hf_config.attention_type == "block_sparse":
        options = {
            "block_size": hf_config.block_size,
            "num_random_blocks": hf_config.num_random_blocks,
        }
        return "block_sparse", options, None
    if model_type == "longformer":
        windows = hf_config.attention_window
        if isinstance(windows, int):
            windows = [windows] * hf_config.num_hidden_layers
        if len(windows) != hf_config.num_hidden_layers:
            raise ValueError(
                f"attention_window has {len(windows)} entries, "
                f"num_hidden_layers={hf_config.num_hidden_layers}"
            )
        if len(set(windows)) == 1:
            return "global_local", {"window_size": windows[0] // 2}, None
        return "global_local", {}, [{"window_size": w // 2} for w in windows]
    return "dense", {}, None


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A pre-LN causal decoder LM (GPT-2 layout: learned positions, final LayerNorm).

    Attributes:
      vocab_size, hidden_size (D), num_layers, num_heads (N), intermediate_size: sizes.
      num_kv_heads: K key/value heads (GQA/MQA), default N.
      max_position_embeddings: the longest sequence (prompt + generated tokens).
      layer_norm_eps, hidden_act, initializer_range: as in transformers.
      hidden_dropout_rate, attention_dropout_rate: dropout rates (training only).
      attention, attention_options, layer_attention_options: the attention variant of
        every layer (``is_causal=True`` is always passed); generation needs a variant
        with a decoding hook (effjax.layers.register_layer_hooks).
      tie_word_embeddings: the LM head reuses the token embedding matrix.
      pad_token_id: the padding token.
      ff_chunk_size: feed-forward over chunks of this many positions, None = one pass.
      reversible: the blocks form a reversible stack on the two halves of the hidden state
        (see DecoderLM); needs ``hidden_size / 2`` divisible by ``num_heads`` and one set
        of attention options for all layers; training only (no cached decoding).

    Example:
      >>> from effjax.models import DecoderConfig
      >>> DecoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
      ...               intermediate_size=64).max_length
      1024
    """

    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None
    intermediate_size: int = 3072
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"
    initializer_range: float = 0.02
    hidden_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    attention: str = "dense"
    attention_options: Mapping[str, Any] = FrozenDict()
    layer_attention_options: Sequence[Mapping[str, Any]] | None = None
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    ff_chunk_size: int | None = None
    reversible: bool = False

    def __post_init__(self):
        _check_sizes(self)
        _freeze_attention_options(self)
        if self.reversible:
            _check_reversible(self)

    @property
    def max_length(self) -> int:
        """The longest sequence the position table covers."""
        return self.max_position_embeddings

    options_for_layer = EncoderConfig.options_for_layer
    replace = EncoderConfig.replace


def _check_reversible(config: DecoderConfig) -> None:
    """A reversible stack splits the hidden state in two and shares one attention setup."""
    half, rem = divmod(config.hidden_size, 2)
    if rem or half % config.num_heads:
        raise ValueError(
            f"reversible=True splits hidden_size={config.hidden_size} in two halves, each "
            f"divisible by num_heads={config.num_heads}"
        )
    if config.layer_attention_options is not None:
        raise ValueError(
            "reversible=True runs one attention setup in every layer; "
            "layer_attention_options is not supported"
        )
