"""Model configurations: plain frozen dataclasses, and their translation from transformers.

An :class:`EncoderConfig` carries a BERT/RoBERTa-style encoder's sizes plus the
attention variant every layer uses (a registry name and its options); a
:class:`DecoderConfig` does the same for a causal LM. ``from_hf_config`` reads
transformers' ``BertConfig``, ``RobertaConfig``, ``BigBirdConfig`` and
``LongformerConfig`` (anything with the same attribute names works).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import jax.numpy as jnp
from flax.core import FrozenDict

from effjax.layers.cores import build_core
from effjax.layers.feedforward import activation
from effjax.layers.quantized import check_quantization
from effjax.models.memory import COMPRESSIONS

#: ``model_type`` values whose position ids count real tokens from ``pad_token_id + 1``.
_ROBERTA_POSITIONS = ("roberta", "longformer", "xlm-roberta", "camembert")


def _freeze(options: Mapping[str, Any] | None) -> FrozenDict:
    return FrozenDict(dict(options or {}))


def _freeze_attention_options(config) -> None:
    """Makes a config's option mappings immutable, checks one per layer is given, and
    checks every layer's attention and options against the variant's core now (an
    unknown name or option is a one-line ValueError listing the valid ones)."""
    object.__setattr__(config, "attention_options", _freeze(config.attention_options))
    if config.layer_attention_options is not None:
        per_layer = tuple(_freeze(o) for o in config.layer_attention_options)
        if len(per_layer) != config.num_layers:
            raise ValueError(
                f"layer_attention_options has {len(per_layer)} entries, "
                f"num_layers={config.num_layers}"
            )
        object.__setattr__(config, "layer_attention_options", per_layer)
    for i in range(config.num_layers if config.layer_attention_options else 1):
        build_core(config.attention, config.options_for_layer(i))


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


#: ``remat`` values: what a block keeps for the backward pass (jax.checkpoint policies).
REMAT_POLICIES = ("none", "full", "dots")
#: ``dtype`` values: the computation dtype (parameters and optimizer state stay float32).
COMPUTE_DTYPES = ("float32", "bfloat16")


def _check_quantization(config, unsupported: dict[str, Any]) -> None:
    """``quantization`` is a known mode, and none of ``unsupported`` (field -> value, the
    layers without an int8 path) is on."""
    check_quantization(config.quantization)
    if config.quantization == "none":
        return
    for field, value in unsupported.items():
        if value:
            raise ValueError(
                f"quantization={config.quantization!r} has int8 Dense and embedding layers "
                f"only; {field}={value!r} has no int8 path (use quantization='none')"
            )


def _check_scale_options(config) -> None:
    """Switch experts, remat, compute dtype and quantization."""
    _check_quantization(config, {"num_experts": config.num_experts})
    if config.remat not in REMAT_POLICIES:
        raise ValueError(f"remat={config.remat!r} is not one of {REMAT_POLICIES}")
    if config.dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype={config.dtype!r} is not one of {COMPUTE_DTYPES}")
    if config.num_experts < 0:
        raise ValueError(f"num_experts must be >= 0, got {config.num_experts}")
    if not config.num_experts:
        return
    if not config.feed_forward:
        raise ValueError(
            f"num_experts={config.num_experts} makes the feed-forward a mixture of experts; "
            "feed_forward=False has none"
        )
    if config.expert_top_k not in (1, 2) or config.expert_top_k > config.num_experts:
        raise ValueError(
            f"expert_top_k must be 1 or 2 and <= num_experts={config.num_experts}, "
            f"got {config.expert_top_k}"
        )
    if config.expert_capacity_factor <= 0:
        raise ValueError(
            f"expert_capacity_factor must be positive, got {config.expert_capacity_factor}"
        )
    if min(config.load_balancing_loss, config.router_z_loss) < 0:
        raise ValueError(
            f"load_balancing_loss={config.load_balancing_loss} and router_z_loss="
            f"{config.router_z_loss} must be >= 0"
        )
    if config.ff_chunk_size is not None:
        raise ValueError(
            f"num_experts={config.num_experts} routes whole sequences; ff_chunk_size="
            f"{config.ff_chunk_size} (chunked feed-forward) cannot be combined with it"
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The fields every effjax model shares (subclassed by the encoder and decoder configs).

    Attributes:
      vocab_size, hidden_size (D), num_layers, num_heads (N), intermediate_size: sizes.
      num_kv_heads: K key/value heads (GQA/MQA), default N.
      max_position_embeddings: rows of the position table.
      layer_norm_eps, hidden_act, initializer_range: as in transformers.
      hidden_dropout_rate: dropout on embeddings and residual branches.
      attention_dropout_rate: dropout on the attention output (see MultiHeadAttention).
      attention: the attention variant of every layer: a registry name (``"dense"``,
        ``"local"``, ... see ``effjax.attention.available()``) or an attention function.
      attention_options: the variant's core options, for every layer (checked when the
        config is built: an unknown option is a ValueError listing the valid ones).
      layer_attention_options: optional per-layer options merged over ``attention_options``
        (Longformer's per-layer windows), one mapping per layer.
      pad_token_id: the padding token.
      ff_chunk_size: run each feed-forward over chunks of this many positions
        (effjax.layers.FeedForward; same outputs, less activation memory), None = one pass.
      num_experts: ``E > 0`` replaces every feed-forward by a Switch mixture of ``E``
        experts of ``intermediate_size`` hidden units (effjax.layers.SwitchFeedForward;
        Fedus et al. 2021); 0 = the dense feed-forward.
      expert_capacity_factor: each expert takes ``ceil(k T c / E)`` tokens of a sequence;
        the rest skip the feed-forward (residual only).
      expert_top_k: 1 (Switch) or 2 (GShard) experts per token.
      load_balancing_loss, router_z_loss: weights of the auxiliary losses added to the
        training loss (Fedus et al. 2021: 1e-2; Zoph et al. 2022: 1e-3).
      feed_forward: False drops every block's feed-forward sub-layer (and its LayerNorm):
        the all-attention layer of Sukhbaatar et al. 2019, where persistent memory
        vectors (``attention="persistent_memory"``) take the feed-forward's place.
      remat: rematerialisation of each block in the backward pass: ``"none"``, ``"full"``
        (keep only the block's inputs) or ``"dots"`` (keep the outputs of matmuls without
        batch dimensions, the projections, and recompute the rest, attention scores
        included: ``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``).
      dtype: computation dtype, ``"float32"`` or ``"bfloat16"``; parameters (and so the
        optimizer's master copy) stay float32, softmaxes, routers and losses float32.
      quantization: ``"none"`` (float layers), ``"weight_only"`` or ``"dynamic"``: every
        Dense layer and embedding table is int8 (effjax.layers.QuantizedDense /
        QuantizedEmbed in that mode), so ``model.apply({"params": quantize_params(params)},
        ...)`` runs on the int8 tree of a float model's parameters (int8 stays int8 in
        memory; ``"dynamic"`` multiplies int8 x int8 -> int32). Not with Switch experts,
        GBST, a reversible stack or relative positions.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    hidden_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    attention: str | Callable = "dense"
    attention_options: Mapping[str, Any] = FrozenDict()
    layer_attention_options: Sequence[Mapping[str, Any]] | None = None
    pad_token_id: int = 0
    ff_chunk_size: int | None = None
    feed_forward: bool = True
    num_experts: int = 0
    expert_capacity_factor: float = 1.25
    expert_top_k: int = 1
    load_balancing_loss: float = 1e-2
    router_z_loss: float = 1e-3
    remat: str = "none"
    dtype: str = "float32"
    quantization: str = "none"

    def __post_init__(self):
        _check_sizes(self)
        _freeze_attention_options(self)
        _check_scale_options(self)

    def compute_dtype(self, override=None):
        """The modules' ``dtype``: ``override`` when given, bfloat16 for ``dtype="bfloat16"``,
        else None (the inputs' dtype, float32)."""
        if override is not None:
            return override
        return jnp.bfloat16 if self.dtype == "bfloat16" else None

    @property
    def max_length(self) -> int:
        """The longest sequence the position table covers."""
        return self.max_position_embeddings

    def options_for_layer(self, index: int) -> FrozenDict:
        """Attention options of layer ``index``: shared ones, then the layer's own."""
        if self.layer_attention_options is None:
            return self.attention_options
        return FrozenDict({**self.attention_options, **self.layer_attention_options[index]})

    def replace(self, **changes) -> Self:
        """A copy (of the same class) with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ModelConfig):
    """A BERT/RoBERTa-style encoder: :class:`ModelConfig`'s fields, BERT-base defaults, and

    Attributes:
      position_offset: first position id of a real token (RoBERTa: ``pad_token_id + 1``,
        and padding tokens take position ``pad_token_id``); the longest input is
        ``max_position_embeddings - position_offset`` tokens.
      type_vocab_size: token-type (segment) embeddings.
      model_type: Hugging Face family ("bert" or "roberta"), used for export.
      add_pooler: whether the encoder has BERT's pooler (tanh dense on the first token).
      gbst_block_sizes: Charformer's byte-level front end (effjax.layers.GBST; Tay et al.
        2021): the embedded bytes become soft subword blocks of these sizes, mean-pooled
        by ``gbst_downsample_rate`` before the first layer, so the layers run on
        ``ceil(T / gbst_downsample_rate)`` positions; None = no GBST. The encoder's
        outputs are then per pooled position (classification, not masked-LM).
      gbst_downsample_rate: the pooling stride ``d_s``.
      block_sizes: Funnel-Transformer (Dai et al. 2020): layers per block, summing to
        ``num_layers``; the first layer of every block after the first pools the sequence
        by 2 (``pooling``) and attends from the pooled queries to the unpooled keys and
        values, so block ``k`` runs on ``T / 2^k`` positions; the encoder's output is
        the pooled sequence (classification). None = no pooling.
      pooling: ``"mean"`` (the paper's) or ``"max"``.
      upsample_layers: Funnel-Transformer's decoder (Dai et al. 2020, Sec. 2.3) for
        token-level outputs: ``L > 0`` repeats every vector of the last block
        ``2^(blocks - 1)`` times (cut to ``T``), adds the first block's output as a
        residual and runs ``L`` more layers (``upsample_layer_<j>``) over the full
        length; the encoder's output is then ``[B, T, D]`` again (masked-LM works).
        Needs ``block_sizes``; 0 = no decoder.
      global_memory_tokens: ``G > 0`` learned vectors (param ``global_memory [G, D]``)
        prepended to the embedded sequence as global tokens that attend to and are
        attended by every token (ETC, Ainslie et al. 2020; BigBird's ITC, Zaheer et al.
        2020), and removed from the output (still ``[B, T, D]``). With
        ``attention="global_local"`` the layers' ``global_mask`` marks them, so a sliding
        window plus G memory tokens connects every pair of tokens in two layers; under
        variants that see every key (dense, kernel, low-rank) they are global anyway;
        other fixed sparse patterns (local, block_sparse, lsh) treat them as G ordinary
        tokens at the front. Not with ``block_sizes`` (pooling would mix them in).

    Example:
      >>> from effjax.models import EncoderConfig
      >>> cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
      ...                     intermediate_size=64, attention="local",
      ...                     attention_options={"window_size": 16})
      >>> cfg.max_length
      512
    """

    position_offset: int = 0
    type_vocab_size: int = 2
    model_type: str = "bert"
    add_pooler: bool = True
    gbst_block_sizes: tuple[int, ...] | None = None
    gbst_downsample_rate: int = 2
    block_sizes: tuple[int, ...] | None = None
    pooling: str = "mean"
    global_memory_tokens: int = 0
    upsample_layers: int = 0

    def __post_init__(self):
        super().__post_init__()
        _check_quantization(
            self,
            {
                "gbst_block_sizes": self.gbst_block_sizes,
                "global_memory_tokens": self.global_memory_tokens,
            },
        )
        _check_global_memory(self)
        _check_upsampling(self)
        if self.gbst_block_sizes is not None:
            _check_gbst(self)
        if self.block_sizes is not None:
            _check_funnel(self)
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
    def funnel_pooling_layers(self) -> frozenset[int]:
        """Indices of the layers that pool the sequence first (Funnel blocks after the first)."""
        if self.block_sizes is None:
            return frozenset()
        starts, total = [], 0
        for size in self.block_sizes[:-1]:
            total += size
            starts.append(total)
        return frozenset(starts)

    @property
    def counts_positions_from_tokens(self) -> bool:
        """RoBERTa's position ids: real tokens count up from ``position_offset``."""
        return self.model_type in _ROBERTA_POSITIONS

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
        layer when the windows differ, and ``global_projections=True`` (the separate
        global query/key/value projections of its checkpoints); everything else ->
        ``"dense"``.
        ``attention``/``attention_options`` override the choice (options are
        merged over the translated ones).

        Example:
          >>> from transformers import BigBirdConfig
          >>> cfg = EncoderConfig.from_hf_config(BigBirdConfig(block_size=32))
          >>> cfg.attention, dict(cfg.attention_options)
          ('block_sparse', {'block_size': 32, 'num_random_blocks': 3})
        """
        model_type = getattr(hf_config, "model_type", "bert")
        name, options, per_layer = _hf_attention(hf_config, model_type, attention)
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


def _check_gbst(config: EncoderConfig) -> None:
    sizes = tuple(config.gbst_block_sizes)
    object.__setattr__(config, "gbst_block_sizes", sizes)
    if not sizes or min(sizes) < 1 or config.gbst_downsample_rate < 1:
        raise ValueError(
            f"gbst_block_sizes={sizes} and gbst_downsample_rate={config.gbst_downsample_rate} "
            "must be positive"
        )
    if config.attention == "global_local":
        raise ValueError(
            "gbst_block_sizes pools the sequence before the layers; per-token global_mask "
            "of attention='global_local' would not match the pooled length"
        )


def _check_global_memory(config: EncoderConfig) -> None:
    tokens = config.global_memory_tokens
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"global_memory_tokens must be an int >= 0, got {tokens!r}")
    if tokens and config.block_sizes is not None:
        raise ValueError(
            f"global_memory_tokens={tokens} does not combine with block_sizes="
            f"{config.block_sizes} (Funnel pooling would average memory and tokens together)"
        )


def _check_upsampling(config: EncoderConfig) -> None:
    layers = config.upsample_layers
    if not isinstance(layers, int) or layers < 0:
        raise ValueError(f"upsample_layers must be an int >= 0, got {layers!r}")
    if layers and (config.block_sizes is None or len(config.block_sizes) < 2):
        raise ValueError(
            f"upsample_layers={layers} upsamples Funnel's pooled sequence; block_sizes="
            f"{config.block_sizes} must have two blocks or more"
        )


def _check_funnel(config: EncoderConfig) -> None:
    sizes = tuple(config.block_sizes)
    object.__setattr__(config, "block_sizes", sizes)
    if not sizes or min(sizes) < 1 or sum(sizes) != config.num_layers:
        raise ValueError(
            f"block_sizes={sizes} must be positive layer counts summing to "
            f"num_layers={config.num_layers}"
        )
    if config.pooling not in ("mean", "max"):
        raise ValueError(f"pooling={config.pooling!r} is not one of ('mean', 'max')")
    if config.attention == "global_local":
        raise ValueError(
            "block_sizes pools the sequence between blocks; the per-token global_mask of "
            "attention='global_local' would not match the pooled length"
        )


def _hf_attention(hf_config, model_type: str, override: str | None = None):
    """(registry name, shared options, per-layer options or None) of a transformers config
    (``override``: the variant the caller runs instead)."""
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
        # Longformer checkpoints carry separate query/key/value projections for global
        # attention; other variants have no global tokens to use them.
        shared = {"global_projections": True} if override in (None, "global_local") else {}
        if len(set(windows)) == 1:
            return "global_local", {**shared, "window_size": windows[0] // 2}, None
        return "global_local", shared, [{"window_size": w // 2} for w in windows]
    return "dense", {}, None


POSITIONS = ("learned", "sinusoidal", "relative")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(ModelConfig):
    """A pre-LN causal decoder LM (GPT-2 layout): :class:`ModelConfig`'s fields with
    GPT-2-small defaults (``attention`` is always causal; generation needs a variant whose
    core has a decoding cache), and

    Attributes:
      tie_word_embeddings: the LM head reuses the token embedding matrix.
      reversible: the blocks form a reversible stack on the two halves of the hidden state
        (see DecoderLM); needs ``hidden_size / 2`` divisible by ``num_heads`` and one set
        of attention options for all layers; training only (no cached decoding).
      positions: ``"learned"`` (a trained table, GPT-2), ``"sinusoidal"`` (fixed,
        Vaswani et al. 2017; lets a one-layer model attend by relative offset) or
        ``"relative"`` (no position embeddings; every layer scores the distance between
        query and key with Transformer-XL's ``r``, ``u``, ``v`` terms,
        effjax.layers.RelativePositionCore; dense attention only; cached decoding
        attends over the whole sequence with a full key/value cache).
        Default (None): ``"relative"`` when ``mem_len > 0``, else ``"learned"``.
      mem_len: Transformer-XL's segment recurrence (Dai et al. 2019): ``M > 0`` keeps,
        per layer, the inputs of the last ``M`` positions of earlier segments in the
        ``"memory"`` collection (effjax.models.SegmentMemory, no gradient through it),
        and each segment's queries attend over ``[memory; segment]`` (query ``i`` sees
        all ``M`` slots and the segment's tokens ``<= i``). Needs relative positions.
        Call the model with ``mutable=["memory"]`` and pass the returned memory to the
        next segment's call; ``effjax train`` does this across steps.
      eval_mem_len: the memory length evaluation runs with (``evaluation_config``),
        default ``mem_len``; the parameters do not depend on it (the paper evaluates
        with a longer memory than it trains with).
      compressed_mem_len: the Compressive Transformer (Rae et al. 2020): ``M_c > 0``
        keeps, per layer, a second memory of ``M_c`` slots into which the positions
        evicted from the ``mem_len`` memory go, compressed ``compression_rate`` to one;
        the queries attend over ``[compressed; memory; segment]``. Needs ``mem_len > 0``
        and segments whose length is a multiple of ``compression_rate``. Training adds
        the attention-reconstruction loss (``compression/aux_loss``), which trains only
        the compressors.
      compression_rate: ``c >= 1``, evicted positions per compressed slot (paper: 3).
      compression: ``"conv"`` (a learned 1-D convolution of kernel and stride ``c``,
        initialised to the mean; the paper's best) or ``"mean"`` (mean pooling, no
        parameters). See effjax.models.SegmentMemory.
      Switch experts, remat and dtype (:class:`ModelConfig`) do not combine with
      ``reversible``.

    Example:
      >>> from effjax.models import DecoderConfig
      >>> DecoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
      ...               intermediate_size=64).max_length
      1024
    """

    vocab_size: int = 50257
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"
    attention_dropout_rate: float = 0.0
    tie_word_embeddings: bool = True
    reversible: bool = False
    positions: str | None = None
    mem_len: int = 0
    eval_mem_len: int | None = None
    compressed_mem_len: int = 0
    compression_rate: int = 3
    compression: str = "conv"

    def __post_init__(self):
        super().__post_init__()
        if self.positions is None:
            object.__setattr__(self, "positions", "relative" if self.mem_len else "learned")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        _check_memory(self)
        relative = self.positions if self.positions == "relative" else None
        _check_quantization(self, {"reversible": self.reversible, "positions": relative})
        if self.reversible:
            _check_reversible(self)

    def evaluation_config(self) -> DecoderConfig:
        """This config with ``mem_len = eval_mem_len`` (when given): the model to evaluate
        a trained one with, on the same parameters."""
        if self.eval_mem_len is None:
            return self
        return self.replace(mem_len=self.eval_mem_len)


def _check_memory(config: DecoderConfig) -> None:
    """Segment memory needs relative positions, which need the dense core."""
    lengths = {"mem_len": config.mem_len, "eval_mem_len": config.eval_mem_len or 0}
    for name, value in lengths.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    _check_compression(config)
    if max(lengths.values()) and config.positions != "relative":
        raise ValueError(
            f"mem_len={config.mem_len} / eval_mem_len={config.eval_mem_len} needs "
            f"positions='relative' (absolute positions restart in every segment), got "
            f"positions={config.positions!r}"
        )
    if config.positions != "relative":
        return
    if config.attention != "dense":
        raise ValueError(
            f"positions='relative' (Transformer-XL, mem_len={config.mem_len}) runs dense "
            f"attention with relative position terms; attention={config.attention!r} has no "
            "such form (use attention='dense')"
        )
    if config.reversible:
        raise ValueError("positions='relative' (Transformer-XL) does not combine with reversible")


def _check_compression(config: DecoderConfig) -> None:
    """The compressive memory's options, each error naming its argument."""
    if config.compressed_mem_len < 0:
        raise ValueError(f"compressed_mem_len must be >= 0, got {config.compressed_mem_len}")
    if config.compression_rate < 1:
        raise ValueError(f"compression_rate must be >= 1, got {config.compression_rate}")
    if config.compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {config.compression!r}")
    if config.compressed_mem_len and not config.mem_len:
        raise ValueError(
            f"compressed_mem_len={config.compressed_mem_len} needs mem_len > 0 (it holds what "
            f"the memory evicts), got mem_len={config.mem_len}"
        )


def reformer_config(
    *,
    vocab_size: int = 256,
    d_model: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    d_ff: int = 128,
    max_len: int = 1024,
    attention: str = "lsh",
    attention_options: Mapping[str, Any] | None = None,
    ff_chunk_size: int | None = 64,
    dropout_rate: float = 0.0,
    positions: str = "learned",
) -> DecoderConfig:
    """The Reformer (Kitaev et al. 2020) as a :class:`DecoderConfig` preset.

    A reversible decoder (RevNet blocks on the two halves of a ``2 * d_model`` hidden
    state, Sec. 3), causal LSH attention (Sec. 2; ``attention_options`` go to its core,
    e.g. ``{"num_hashes": 4, "num_buckets": 8, "chunk_size": 32}``) and a feed-forward
    chunked over ``ff_chunk_size`` positions (Sec. 3). ``attention="dense"`` gives the
    same model and parameters with full attention. Train and generate it as any
    :class:`DecoderLM`.

    Example:
      >>> from effjax.models import DecoderLM, reformer_config
      >>> cfg = reformer_config(vocab_size=16, d_model=32, max_len=64)
      >>> cfg.reversible, cfg.attention, cfg.hidden_size
      (True, 'lsh', 64)
    """
    return DecoderConfig(
        vocab_size=vocab_size,
        hidden_size=2 * d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=d_ff,
        max_position_embeddings=max_len,
        hidden_dropout_rate=dropout_rate,
        attention=attention,
        attention_options=attention_options or {},
        ff_chunk_size=ff_chunk_size,
        tie_word_embeddings=False,
        reversible=True,
        positions=positions,
        hidden_act="gelu",
    )


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
    if config.num_experts or config.remat != "none" or not config.feed_forward:
        raise ValueError(
            "reversible=True recomputes its blocks already and pairs attention with a "
            f"feed-forward; got num_experts={config.num_experts}, remat={config.remat!r}, "
            f"feed_forward={config.feed_forward}"
        )
