"""A BERT/RoBERTa-style encoder (Devlin et al. 2019) on any effjax attention variant.

Embeddings (word + position + token type, LayerNorm), post-LN blocks
``x = LN(x + Attn(x)); x = LN(x + FF(x))``, BERT's pooler, and heads for masked-LM
(tied to the word embeddings) and sequence classification.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effjax.layers import GBST, FeedForward, MultiHeadAttention, SwitchFeedForward
from effjax.layers.gbst import masked_block_mean
from effjax.layers.quantized import dense_layer, embedding_layer, reject_int8_params
from effjax.models.config import EncoderConfig, activation

Dtype = Any


def _init(config) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=config.initializer_range)


def check_input_length(length: int, config, *, holder: str = "input_ids has") -> None:
    """Raises a ValueError when ``length`` tokens do not fit the position table.

    ``holder`` begins the message ("input_ids has", or "inputs pad to" for a data config
    checked before anything is built).
    """
    if length > config.max_length:
        raise ValueError(
            f"{holder} {length} tokens but the position table covers {config.max_length} "
            f"(max_position_embeddings={config.max_position_embeddings}); truncate the input or "
            "extend the table with effjax.models.extend_position_embeddings"
        )


def check_param_kinds(model: nn.Module) -> None:
    """A float model (``config.quantization="none"``) applied to int8 parameters is a
    ValueError naming the first one; an int8 model's layers check their own parameters."""
    if model.config.quantization == "none":
        reject_int8_params(model)


def padding_mask_from(
    input_ids: jax.Array, attention_mask: jax.Array | None, config
) -> jax.Array | None:
    """Checks ``input_ids [B, T]`` against the position table and turns Hugging Face's
    ``attention_mask [B, T]`` (nonzero = real token) into a bool padding mask."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {input_ids.shape}")
    check_input_length(input_ids.shape[1], config)
    if attention_mask is None:
        return None
    return check_token_mask(attention_mask, input_ids, "attention_mask")


def check_token_mask(mask, input_ids: jax.Array, name: str):
    """A per-token mask ``[B, T]`` (nonzero = True) as bool; numpy stays numpy (concrete)."""
    if mask.shape != input_ids.shape:
        raise ValueError(f"{name} shape {mask.shape} != input_ids shape {input_ids.shape}")
    return mask.astype(bool)


def encoder_position_ids(input_ids: jax.Array, config: EncoderConfig) -> jax.Array:
    """Position ids ``int [B, T]``: ``offset + t`` for BERT; for RoBERTa real tokens count
    up from ``pad_token_id + 1`` and padding tokens take ``pad_token_id``."""
    length = input_ids.shape[1]
    if not config.counts_positions_from_tokens:
        positions = config.position_offset + jnp.arange(length, dtype=jnp.int32)
        return jnp.broadcast_to(positions[None, :], input_ids.shape)
    is_token = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(is_token, axis=1) * is_token + config.pad_token_id


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout: ``int [B, T] -> [B, T, D]``."""

    config: EncoderConfig
    dtype: Dtype | None = None

    def setup(self):
        cfg = self.config
        embed = lambda n, name: embedding_layer(  # noqa: E731
            cfg.quantization,
            n,
            cfg.hidden_size,
            embedding_init=_init(cfg),
            dtype=self.dtype,
            name=name,
        )
        self.word_embeddings = embed(cfg.vocab_size, "word_embeddings")
        self.position_embeddings = embed(cfg.max_position_embeddings, "position_embeddings")
        self.token_type_embeddings = embed(cfg.type_vocab_size, "token_type_embeddings")
        self.layer_norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype)
        self.dropout = nn.Dropout(cfg.hidden_dropout_rate)

    def __call__(self, input_ids, token_type_ids, *, deterministic: bool) -> jax.Array:
        positions = encoder_position_ids(input_ids, self.config)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.layer_norm(x), deterministic=deterministic)

    def attend(self, hidden: jax.Array) -> jax.Array:
        """``[..., D] -> [..., vocab_size]`` logits against the word embeddings (tied head)."""
        return self.word_embeddings.attend(hidden)


def self_attention(
    config, options: Mapping[str, Any], *, is_causal: bool, decode=False, dtype=None, core=None
):
    """The block's :class:`MultiHeadAttention` for ``config`` with attention ``options``
    (or, when given, the attention ``core`` instance in place of ``config.attention``)."""
    return MultiHeadAttention(
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        attention=config.attention if core is None else core,
        attention_options=options if core is None else {},
        is_causal=is_causal,
        decode=decode,
        dropout_rate=config.attention_dropout_rate,
        kernel_init=_init(config),
        dtype=dtype,
        quantization=config.quantization,
        name="attention",
    )


def feed_forward(config, dtype=None) -> FeedForward | SwitchFeedForward:
    """The block's :class:`~effjax.layers.FeedForward` for ``config``: ``intermediate_size``
    hidden units, ``hidden_act``, output dropout, chunked over ``ff_chunk_size`` positions;
    with ``num_experts`` a :class:`~effjax.layers.SwitchFeedForward` of as many such experts."""
    if config.num_experts:
        return SwitchFeedForward(
            num_experts=config.num_experts,
            d_ff=config.intermediate_size,
            capacity_factor=config.expert_capacity_factor,
            top_k=config.expert_top_k,
            activation=config.hidden_act,
            dropout_rate=config.hidden_dropout_rate,
            load_balancing_loss_weight=config.load_balancing_loss,
            router_z_loss_weight=config.router_z_loss,
            kernel_init=_init(config),
            dtype=dtype,
            name="feed_forward",
        )
    return FeedForward(
        d_ff=config.intermediate_size,
        chunk_size=config.ff_chunk_size,
        activation=config.hidden_act,
        dropout_rate=config.hidden_dropout_rate,
        kernel_init=_init(config),
        dtype=dtype,
        quantization=config.quantization,
        name="feed_forward",
    )


def model_dense(config, features: int, name: str | None = None, **kwargs) -> nn.Module:
    """A model-level Dense layer (pooler, heads) of ``config``: float or int8 as
    ``config.quantization`` says, BERT's initializer."""
    named = {} if name is None else {"name": name}
    return dense_layer(config.quantization, features, kernel_init=_init(config), **named, **kwargs)


def apply_feed_forward(config, x, padding_mask, *, deterministic: bool, dtype=None) -> jax.Array:
    """The block's feed-forward on ``x [B, T, D]``; experts route only the real tokens of
    ``padding_mask [B, T]``, the dense feed-forward is position-wise and ignores it."""
    ff = feed_forward(config, dtype)
    if config.num_experts:
        return ff(x, padding_mask, deterministic=deterministic)
    return ff(x, deterministic=deterministic)


#: ``config.remat`` -> the ``jax.checkpoint`` policy (None: save only the block's inputs).
_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def call_block(config, block: nn.Module, x: jax.Array, padding_mask, **kwargs) -> jax.Array:
    """``block(x, padding_mask, **kwargs)``, rematerialised in the backward pass as
    ``config.remat`` says (``"none"``: plain call). ``kwargs`` (flags, per-call arrays)
    are closed over, so Python values stay static; parameter paths do not change."""
    if config.remat == "none":
        return block(x, padding_mask, **kwargs)
    run = lambda module, x, mask: module(x, mask, **kwargs)  # noqa: E731
    return nn.remat(run, policy=_REMAT_POLICIES[config.remat])(block, x, padding_mask)


def funnel_pool(
    x: jax.Array, padding_mask: jax.Array | None, pooling: str
) -> tuple[jax.Array, jax.Array | None]:
    """Funnel-Transformer's pooling (Dai et al. 2020, Sec. 2.2): ``[B, T, D] ->
    [B, ceil(T / 2), D]``, the mean (or max) of each pair of real positions; a pooled
    position is real when its pair holds one (``padding_mask`` None stays None)."""
    b, t, d = x.shape
    mask = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
    pairs = -(-t // 2)
    pad = ((0, 0), (0, 2 * pairs - t))
    pair_mask = jnp.pad(mask, pad).reshape(b, pairs, 2)
    if pooling == "max":
        fill = jnp.finfo(x.dtype).min
        padded = jnp.pad(jnp.where(mask[..., None], x, fill), (*pad, (0, 0)), constant_values=fill)
        pooled = jnp.max(padded.reshape(b, pairs, 2, d), axis=2)
        pooled = jnp.where(jnp.any(pair_mask, -1)[..., None], pooled, 0.0).astype(x.dtype)
    else:
        pooled, _ = masked_block_mean(x, mask.astype(x.dtype), 2)
    return pooled, None if padding_mask is None else jnp.any(pair_mask, axis=-1)


class EncoderLayer(nn.Module):
    """Post-LN block: ``x = LN(x + Dropout(Attn(x))); x = LN(x + FF(x))``, ``[B, T, D]``
    (only the first half when ``config.feed_forward`` is False)."""

    config: EncoderConfig
    attention_options: Mapping[str, Any]
    dtype: Dtype | None = None

    @nn.compact
    def __call__(
        self,
        x,
        padding_mask,
        global_mask=None,
        *,
        deterministic: bool,
        inputs_kv=None,
        kv_padding_mask=None,
    ) -> jax.Array:
        """``x [B, T, D]`` attends to itself, or to ``inputs_kv [B, S, D]`` with
        ``kv_padding_mask [B, S]`` (Funnel's pooling layer); ``padding_mask [B, T]``."""
        cfg = self.config
        attn = self_attention(cfg, self.attention_options, is_causal=False, dtype=self.dtype)
        key_mask = padding_mask if inputs_kv is None else kv_padding_mask
        h = attn(
            x,
            inputs_kv,
            padding_mask=key_mask,
            global_mask=global_mask,
            deterministic=deterministic,
        )
        h = nn.Dropout(cfg.hidden_dropout_rate)(h, deterministic=deterministic)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="attention_norm")(x + h)
        if not cfg.feed_forward:  # the all-attention layer (Sukhbaatar et al. 2019)
            return x
        h = apply_feed_forward(cfg, x, padding_mask, deterministic=deterministic, dtype=self.dtype)
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="output_norm")(x + h)


class Encoder(nn.Module):
    """BERT/RoBERTa encoder: ``input_ids int [B, T] -> last hidden states [B, T, D]``.

    Every layer uses ``config.attention`` with ``config.options_for_layer(i)``. Per-call
    data go through the call: the attention mask becomes the layers' ``padding_mask``,
    ``global_attention_mask`` (Longformer's global tokens) their ``global_mask``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.models import Encoder, EncoderConfig
      >>> cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
      ...                     intermediate_size=64)
      >>> model = Encoder(cfg)
      >>> ids = jnp.ones((2, 8), jnp.int32)
      >>> variables = model.init(jax.random.key(0), ids)
      >>> model.apply(variables, ids).shape
      (2, 8, 32)
      >>> model.apply(variables, model.apply(variables, ids), method="pooled_output").shape
      (2, 32)
    """

    config: EncoderConfig
    dtype: Dtype | None = None

    def setup(self):
        cfg = self.config
        dtype = cfg.compute_dtype(self.dtype)
        self.embeddings = Embeddings(cfg, dtype=dtype)
        self.layers = [
            EncoderLayer(cfg, cfg.options_for_layer(i), dtype=dtype, name=f"layer_{i}")
            for i in range(cfg.num_layers)
        ]
        if cfg.add_pooler:
            self.pooler = model_dense(cfg, cfg.hidden_size, dtype=dtype)
        if cfg.gbst_block_sizes is not None:
            self.gbst = GBST(cfg.gbst_block_sizes, cfg.gbst_downsample_rate, dtype=dtype)
        # Funnel's decoder runs at full length, like the first block: its options.
        self.upsample = [
            EncoderLayer(cfg, cfg.options_for_layer(0), dtype=dtype, name=f"upsample_layer_{j}")
            for j in range(cfg.upsample_layers)
        ]
        if cfg.global_memory_tokens:
            self.global_memory = self.param(
                "global_memory", _init(cfg), (cfg.global_memory_tokens, cfg.hidden_size)
            )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        global_attention_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Last hidden states ``[B, T, D]`` (``[B, ceil(T / d_s), D]`` with GBST, pooled
        further by every Funnel block unless ``upsample_layers`` brings them back).

        Args:
          input_ids: int ``[B, T]``.
          attention_mask: ``[B, T]``, nonzero = a real token (Hugging Face's convention).
          token_type_ids: int ``[B, T]``, default zeros.
          global_attention_mask: ``[B, T]``, nonzero = a global token (Longformer's
            convention): it attends to and is attended by every token under
            ``"global_local"``; variants without global tokens ignore it.
          deterministic: False enables dropout (needs a ``"dropout"`` rng).
        """
        check_param_kinds(self)
        padding_mask = padding_mask_from(input_ids, attention_mask, self.config)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic)
        global_mask = global_attention_mask
        if global_mask is not None:
            global_mask = check_token_mask(global_mask, input_ids, "global_attention_mask")
        if self.config.gbst_block_sizes is not None:
            x, pooled_mask = self.gbst(x, padding_mask)
            padding_mask = None if padding_mask is None else pooled_mask
        memory = self.config.global_memory_tokens
        if memory:
            x, padding_mask, global_mask = self._prepend_memory(x, padding_mask, global_mask)
        pooling_layers = self.config.funnel_pooling_layers
        first_block = None
        for i, layer in enumerate(self.layers):
            kv = {}
            if i in pooling_layers:  # Funnel: pooled queries attend to the unpooled sequence
                first_block = (x, padding_mask) if first_block is None else first_block
                kv = {"inputs_kv": x, "kv_padding_mask": padding_mask}
                x, padding_mask = funnel_pool(x, padding_mask, self.config.pooling)
            x = call_block(
                self.config,
                layer,
                x,
                padding_mask,
                global_mask=global_mask,
                deterministic=deterministic,
                **kv,
            )
        x = x[:, memory:]
        if self.upsample:
            x = self._upsample(x, *first_block, deterministic=deterministic)
        if self.is_initializing() and self.config.add_pooler:
            self.pooled_output(x)  # creates the pooler's parameters at init
        return x

    def _upsample(self, x, first_block, padding_mask, *, deterministic: bool) -> jax.Array:
        """Funnel-Transformer's decoder (Dai et al. 2020, Sec. 2.3): each vector of the last
        block repeated ``2^(blocks - 1)`` times (``[B, ~T / 2^k, D] -> [B, T, D]``), plus
        the first block's output ``first_block [B, T, D]``, through the upsample layers."""
        factor = 2 ** (len(self.config.block_sizes) - 1)
        x = jnp.repeat(x, factor, axis=1)[:, : first_block.shape[1]] + first_block
        for layer in self.upsample:
            x = call_block(self.config, layer, x, padding_mask, deterministic=deterministic)
        return x

    def _prepend_memory(self, x, padding_mask, global_mask):
        """``[memory; x]`` with the G memory tokens real and global (ETC/BigBird)."""
        (b, t), g = x.shape[:2], self.config.global_memory_tokens
        memory = jnp.broadcast_to(self.global_memory.astype(x.dtype), (b, g, x.shape[-1]))
        if padding_mask is not None:
            padding_mask = jnp.concatenate([jnp.ones((b, g), bool), padding_mask], axis=1)
        # numpy stays numpy: global_local counts a concrete mask's global tokens statically.
        lib = np if global_mask is None or isinstance(global_mask, np.ndarray) else jnp
        tokens = np.zeros((b, t), bool) if global_mask is None else global_mask
        global_mask = lib.concatenate([np.ones((b, g), bool), tokens], axis=1)
        return jnp.concatenate([memory, x], axis=1), padding_mask, global_mask

    def pooled_output(self, hidden: jax.Array) -> jax.Array:
        """BERT's pooler: ``tanh(Dense(hidden[:, 0]))``, ``[B, T, D] -> [B, D]``."""
        if not self.config.add_pooler:
            raise ValueError("this encoder has no pooler (config.add_pooler=False)")
        return jnp.tanh(self.pooler(hidden[:, 0]))

    def attend(self, hidden: jax.Array) -> jax.Array:
        """``[..., D] -> [..., vocab_size]`` logits against the word embeddings."""
        return self.embeddings.attend(hidden)


class MaskedLMHead(nn.Module):
    """BERT's MLM head: ``Dense -> act -> LayerNorm -> (word embeddings)^T + bias``.

    ``attend`` maps ``[..., D]`` to vocabulary logits (the tied word embeddings).
    """

    config: EncoderConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, hidden: jax.Array, attend) -> jax.Array:
        cfg = self.config
        h = model_dense(cfg, cfg.hidden_size, "transform", dtype=self.dtype)(hidden)
        h = activation(cfg.hidden_act)(h)
        h = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="layer_norm")(h)
        bias = self.param("bias", nn.initializers.zeros_init(), (cfg.vocab_size,))
        return attend(h) + bias[None, None]


class EncoderForMaskedLM(nn.Module):
    """Encoder + tied masked-LM head: ``input_ids [B, T] -> logits [B, T, vocab_size]``.

    Parameters: ``{"encoder": <Encoder params>, "mlm_head": ...}``.
    """

    config: EncoderConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic=True, **kw
    ) -> jax.Array:
        cfg = self.config
        check_param_kinds(self)
        pools = cfg.block_sizes is not None and not cfg.upsample_layers
        if cfg.gbst_block_sizes is not None or pools:
            raise ValueError(
                "a masked-LM head needs one output per input token; gbst_block_sizes and "
                "block_sizes without upsample_layers pool the sequence (use "
                "EncoderForSequenceClassification)"
            )
        encoder = Encoder(self.config, dtype=self.dtype, name="encoder")
        hidden = encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, **kw
        )
        dtype = self.config.compute_dtype(self.dtype)
        return MaskedLMHead(self.config, dtype=dtype, name="mlm_head")(hidden, encoder.attend)


def _first_token_global(input_ids, kw: dict) -> dict:
    """Longformer classifies with global attention on the first token (Beltagy et al.
    2020, sec. 3.1): unless a ``global_attention_mask`` is given, mark it global. A numpy
    mask stays concrete under jit, so the variant sees a static count of global tokens;
    variants without global tokens ignore it."""
    if kw.get("global_attention_mask") is not None:
        return kw
    first = np.broadcast_to(np.arange(input_ids.shape[1]) == 0, input_ids.shape)
    return {**kw, "global_attention_mask": first}


class EncoderForSequenceClassification(nn.Module):
    """Encoder + classifier on the pooled first token: ``[B, T] -> logits [B, num_labels]``.

    ``Dense(num_labels)(Dropout(pooled_output))`` as BERT; without a pooler the first
    token's hidden state is used. The first token is global (Longformer's recipe, for
    variants with global tokens) unless a ``global_attention_mask`` is given. Parameters:
    ``{"encoder": ..., "classifier": ...}``, so pretrained encoder parameters slot in
    under ``"encoder"``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.models import EncoderConfig, EncoderForSequenceClassification
      >>> cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=1, num_heads=4,
      ...                     intermediate_size=64)
      >>> clf = EncoderForSequenceClassification(cfg, num_labels=3)
      >>> ids = jnp.ones((2, 8), jnp.int32)
      >>> clf.apply(clf.init(jax.random.key(0), ids), ids).shape
      (2, 3)
    """

    config: EncoderConfig
    num_labels: int
    dtype: Dtype | None = None

    @nn.compact
    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic=True, **kw
    ) -> jax.Array:
        check_param_kinds(self)
        encoder = Encoder(self.config, dtype=self.dtype, name="encoder")
        kw = _first_token_global(input_ids, kw)
        hidden = encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, **kw
        )
        pooled = encoder.pooled_output(hidden) if self.config.add_pooler else hidden[:, 0]
        pooled = nn.Dropout(self.config.hidden_dropout_rate)(pooled, deterministic=deterministic)
        dtype = self.config.compute_dtype(self.dtype)
        return model_dense(self.config, self.num_labels, "classifier", dtype=dtype)(pooled)
