"""A pre-LN causal decoder LM (GPT-2 layout, Radford et al. 2019) and generation.

Blocks ``x = x + Attn(LN(x)); x = x + FF(LN(x))``, a final LayerNorm, a head tied
to the token embeddings (or not). ``generate`` decodes with the attention layers'
``"cache"`` collection, so it works for every variant whose attention core has a
decoding cache (dense's full KV cache, local's rolling window, the kernel variants'
recurrent state).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from effjax.attention import dot_product_attention
from effjax.layers import RelativePositionCore, ReversibleStack
from effjax.layers.quantized import embedding_layer
from effjax.models.config import DecoderConfig
from effjax.models.encoder import (
    _init,
    apply_feed_forward,
    call_block,
    check_input_length,
    check_param_kinds,
    check_token_mask,
    feed_forward,
    model_dense,
    padding_mask_from,
    self_attention,
)
from effjax.models.memory import SegmentMemory
from effjax.models.positions import sinusoidal_positions

Dtype = Any


class DecoderLayer(nn.Module):
    """Pre-LN causal block ``[B, T, D] -> [B, T, D]``: ``x = x + Attn(LN(x))``, then
    ``x = x + FF(LN(x))`` unless ``config.feed_forward`` is False."""

    config: DecoderConfig
    attention_options: Mapping[str, Any]
    decode: bool = False
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x, padding_mask, global_mask=None, *, deterministic: bool) -> jax.Array:
        cfg = self.config
        norm = lambda name: nn.LayerNorm(  # noqa: E731
            epsilon=cfg.layer_norm_eps, dtype=self.dtype, name=name
        )
        core = None
        if cfg.positions == "relative":
            core = RelativePositionCore.from_options(self.attention_options)
        attn = self_attention(
            cfg,
            self.attention_options,
            is_causal=True,
            decode=self.decode,
            dtype=self.dtype,
            core=core,
        )
        attention_norm = norm("attention_norm")
        if cfg.mem_len and not self.decode:
            # Transformer-XL: keys and values over [memory; segment], queries the segment
            # (decoding instead caches every key and value of the sequence).
            memory = SegmentMemory(
                cfg.mem_len,
                cfg.compressed_mem_len,
                cfg.compression_rate,
                cfg.compression,
                name="memory",
            )
            attend = None if self.is_initializing() else self._frozen_content_attention
            context, key_mask = memory(x, padding_mask, attend)
            h = attn(
                attention_norm(x),
                attention_norm(context),
                padding_mask=key_mask,
                deterministic=deterministic,
            )
        else:
            h = attn(
                attention_norm(x),
                padding_mask=padding_mask,
                global_mask=global_mask,
                deterministic=deterministic,
            )
        x = x + nn.Dropout(cfg.hidden_dropout_rate)(h, deterministic=deterministic)
        if not cfg.feed_forward:  # the all-attention layer (Sukhbaatar et al. 2019)
            return x
        h = norm("output_norm")(x)
        return x + apply_feed_forward(
            cfg, h, padding_mask, deterministic=deterministic, dtype=self.dtype
        )

    def _frozen_content_attention(self, queries, memories, memory_mask) -> jax.Array:
        """Rae et al. 2020's ``attn(h, m) = softmax(LN(h) W_q (LN(m) W_k)^T) LN(m) W_v``
        (their Algorithm 2: content only, no output projection) with this layer's
        attention norm and projections under ``stop_gradient``: ``[B, T, D], [B, S, D],
        bool [B, S] -> [B, T, N, H]``, for the attention-reconstruction loss."""
        params = jax.lax.stop_gradient(self.variables["params"])
        cfg = self.config
        norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, parent=None)

        def project(name, h):
            dense = params["attention"][name]
            h = norm.apply({"params": params["attention_norm"]}, h)
            return jnp.einsum("btd,dnh->btnh", h, dense["kernel"]) + dense["bias"][None, None]

        keys = project("key", memories)
        return dot_product_attention(
            project("query", queries), keys, project("value", memories), padding_mask=memory_mask
        )


class _ReversibleAttention(nn.Module):
    """F of a reversible decoder block: ``Dropout(Attn(LN(x)))`` on half the hidden state."""

    config: DecoderConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="attention_norm")
        attn = self_attention(cfg, cfg.attention_options, is_causal=True, dtype=self.dtype)
        h = attn(norm(x), deterministic=deterministic)
        return nn.Dropout(cfg.hidden_dropout_rate)(h, deterministic=deterministic)


class _ReversibleFeedForward(nn.Module):
    """G of a reversible decoder block: ``FF(LN(x))`` (output dropout inside FF)."""

    config: DecoderConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="output_norm")
        return feed_forward(cfg, self.dtype)(norm(x), deterministic=deterministic)


def _check_global_attention_mask(cfg: DecoderConfig, global_attention_mask, input_ids):
    """``global_attention_mask`` as bool ``[B, T]`` (numpy stays numpy), or None; only
    the plain stack takes one (the reversible branches and the segment memory's
    attention see the hidden state alone)."""
    if global_attention_mask is None:
        return None
    if cfg.reversible or cfg.mem_len:
        raise ValueError(
            "global_attention_mask needs a plain decoder stack (reversible=False, mem_len=0), "
            f"got reversible={cfg.reversible}, mem_len={cfg.mem_len} and a mask of shape "
            f"{global_attention_mask.shape}"
        )
    return check_token_mask(global_attention_mask, input_ids, "global_attention_mask")


def _check_reversible_call(decode: bool, attention_mask) -> None:
    """The reversible stack's branches see only the hidden state: no cache, no padding mask."""
    if decode:
        raise ValueError(
            "DecoderConfig(reversible=True) does not support decode=True (cached generation); "
            "copy the parameters into a non-reversible model to generate"
        )
    if attention_mask is not None:
        raise ValueError(
            "DecoderConfig(reversible=True) takes no attention_mask (its blocks see only the "
            f"hidden state); got one of shape {attention_mask.shape}"
        )


class DecoderLM(nn.Module):
    """Causal LM: ``input_ids int [B, T] -> logits float32 [B, T, vocab_size]``.

    With ``decode=True`` each call appends ``T`` tokens to the ``"cache"`` collection
    (initialise with an input of the full length, as for flax's decoders); positions
    continue from the cache, per row. :func:`generate` drives this; by hand, prompts of
    different lengths are left-padded and their ``attention_mask`` given to the first
    call: padded tokens are never attended to (now or in later steps) and do not count
    as positions, so each row decodes exactly as it would alone (see the example).

    With ``config.reversible`` the blocks form a :class:`~effjax.layers.ReversibleStack`
    on the two halves ``x1, x2`` of the hidden state (``D / 2`` features each):
    ``y1 = x1 + Attn(LN(x2))``, ``y2 = x2 + FF(LN(y1))``, then ``[y1, y2]`` goes on to the
    final LayerNorm (RevNet, Gomez et al. 2017, as in the Reformer, Kitaev et al. 2020
    Sec. 3). The backward pass rebuilds each block's inputs from its outputs, so training
    memory does not grow with ``num_layers``. Its parameters sit in ``layers/layers``
    (stacked over layers); it supports neither ``decode`` nor ``attention_mask``.

    With ``config.mem_len = M > 0`` it is Transformer-XL (Dai et al. 2019): every layer
    attends from the segment to ``[memory; segment]`` with relative positions
    (effjax.layers.RelativePositionCore) and keeps its inputs of the last ``M`` positions
    in the ``"memory"`` collection (effjax.models.SegmentMemory). With ``decode=True``
    the layers read no memory: the relative core's key/value cache holds every earlier
    token (the whole sequence is one segment), so :func:`generate` equals greedy
    re-forwarding of the growing sequence. With
    ``config.compressed_mem_len`` it is the Compressive Transformer (Rae et al. 2020),
    whose attention-reconstruction losses go to the ``"compression_losses"``
    collection when it is mutable. Feed consecutive segments and carry the memory::

      logits, state = model.apply({"params": params}, segment_1, mutable=["memory"])
      logits, state = model.apply({"params": params, **state}, segment_2, mutable=["memory"])

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.models import DecoderConfig, DecoderLM
      >>> cfg = DecoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
      ...                     intermediate_size=64, max_position_embeddings=32)
      >>> model = DecoderLM(cfg)
      >>> ids = jnp.ones((2, 8), jnp.int32)
      >>> variables = jax.jit(model.init)(jax.random.key(0), ids)
      >>> jax.jit(model.apply)(variables, ids).shape
      (2, 8, 64)

      Decoding by hand, prompts ``[5, 6, 7]`` and ``[9]`` (left-padded), then one token:

      >>> decoder = model.clone(decode=True)
      >>> cache = jax.jit(decoder.init)(jax.random.key(0), jnp.zeros((2, 8), jnp.int32))["cache"]
      >>> step = jax.jit(decoder.apply, static_argnames="mutable")
      >>> prompt = jnp.array([[5, 6, 7], [0, 0, 9]])
      >>> mask = jnp.array([[1, 1, 1], [0, 0, 1]])
      >>> params = {"params": variables["params"]}
      >>> logits, state = step({**params, "cache": cache}, prompt, mask, mutable="cache")
      >>> alone = jax.jit(model.apply)(variables, jnp.array([[9]]))
      >>> bool(jnp.allclose(logits[1, -1], alone[0, -1], atol=1e-5))
      True
      >>> logits, state = step({**params, **state}, jnp.array([[1], [2]]), mutable="cache")
      >>> logits.shape
      (2, 1, 64)
    """

    config: DecoderConfig
    decode: bool = False
    dtype: Dtype | None = None

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        global_attention_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Next-token logits ``[B, T, vocab_size]`` (float32).

        Args:
          input_ids: int ``[B, T]``.
          attention_mask: ``[B, T]``, nonzero = a real token. Without ``decode``: right
            padding (positions ``0..T-1``). With ``decode``: the new tokens' padding, left
            padding of a prompt (real tokens count positions from 0 in each row; padded
            ones are never attended to); None = all real.
          global_attention_mask: ``[B, T]``, nonzero = a global token (Longformer's
            convention, as :class:`~effjax.models.Encoder`'s): under ``"global_local"``
            it attends to every earlier token and every later token attends to it (the
            causal cut still applies); variants without global tokens ignore it. Not
            with ``reversible`` or ``mem_len``.
          deterministic: False enables dropout (needs a ``"dropout"`` rng).
        """
        cfg = self.config
        check_param_kinds(self)
        if cfg.reversible:
            _check_reversible_call(self.decode, attention_mask)
        padding_mask = padding_mask_from(input_ids, attention_mask, cfg)
        global_mask = _check_global_attention_mask(cfg, global_attention_mask, input_ids)
        dtype = cfg.compute_dtype(self.dtype)
        embed = embedding_layer(
            cfg.quantization,
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=_init(cfg),
            dtype=dtype,
            name="token_embeddings",
        )
        x = embed(input_ids)
        if cfg.positions != "relative":  # relative positions enter every attention layer
            x = x + self._position_embeddings(input_ids, padding_mask)
        x = nn.Dropout(cfg.hidden_dropout_rate)(x, deterministic=deterministic)
        if cfg.reversible:
            x = self._reversible_layers(x, deterministic)
        else:
            # Rematerialisation is for training; a decoding step keeps nothing for a backward.
            remat_cfg = cfg.replace(remat="none") if self.decode else cfg
            for i in range(cfg.num_layers):
                layer = DecoderLayer(
                    cfg, cfg.options_for_layer(i), self.decode, dtype, name=f"layer_{i}"
                )
                x = call_block(
                    remat_cfg,
                    layer,
                    x,
                    padding_mask,
                    global_mask=global_mask,
                    deterministic=deterministic,
                )
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name="final_norm")(x)
        if cfg.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = model_dense(cfg, cfg.vocab_size, "lm_head", use_bias=False)(x)
        return logits.astype(jnp.float32)

    def _reversible_layers(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """All blocks as one reversible stack over the halves of ``x [B, T, D]``."""
        cfg = self.config
        stack = ReversibleStack(
            f=lambda: _ReversibleAttention(cfg, cfg.compute_dtype(self.dtype)),
            g=lambda: _ReversibleFeedForward(cfg, cfg.compute_dtype(self.dtype)),
            num_layers=cfg.num_layers,
            name="layers",
        )
        y1, y2 = stack(*jnp.split(x, 2, axis=-1), deterministic=deterministic)
        return jnp.concatenate([y1, y2], axis=-1)

    def _position_embeddings(self, input_ids, padding_mask) -> jax.Array:
        """``[B or 1, T, D]``: the learned table's or the sinusoidal rows of the positions."""
        cfg = self.config
        positions = self._positions(input_ids, padding_mask)
        if cfg.positions == "sinusoidal":
            return jnp.take(self._sinusoids(), positions, axis=0)
        return embedding_layer(
            cfg.quantization,
            cfg.max_position_embeddings,
            cfg.hidden_size,
            embedding_init=_init(cfg),
            name="position_embeddings",
        )(positions)

    def _sinusoids(self) -> jax.Array:
        """``[max_len, D]``: Vaswani et al.'s table; for a reversible stack, the table of
        width ``D / 2`` in each half.

        The table puts the sines of every frequency in its first half and the cosines in
        its second, and a reversible stack splits the hidden state into exactly those
        halves: its attention branch would see cosines only, whose dot products depend
        on the absolute positions, not their offset, and a one-layer model could not
        learn to attend a fixed distance back (the duplication task stayed at chance).
        With a full sine/cosine code per half, ``PE(p) . PE(p + k)`` depends on ``k``
        alone in both branches (as in the Reformer's trax model, which feeds each half
        a copy of the ``D / 2``-wide embedding).

        The table is scaled to the token embeddings' initial scale: each entry's root
        mean square over positions becomes ``initializer_range`` instead of ``1 / sqrt 2``.
        Vaswani et al. balance the two by multiplying embeddings initialised at
        ``D ** -0.5`` by ``sqrt D``; with GPT-2's initialisation (std 0.02) an unscaled
        table is ~35x the token signal, and a width-64 model on associative recall kept
        its loss at the uniform guess over the values for 1000 steps.
        """
        cfg = self.config
        scale = cfg.initializer_range * math.sqrt(2.0)
        if not cfg.reversible:
            return scale * sinusoidal_positions(cfg.max_position_embeddings, cfg.hidden_size)
        half = sinusoidal_positions(cfg.max_position_embeddings, cfg.hidden_size // 2)
        return scale * jnp.concatenate([half, half], axis=-1)

    def _positions(self, input_ids, padding_mask) -> jax.Array:
        """``int [B or 1, T]``: ``0..T-1``; when decoding, each row's count of real tokens
        before each one, continuing from that row's count in the cache (``position``,
        int ``[B]``), so a left-padded row's first real token is at position 0."""
        batch, length = input_ids.shape
        positions = jnp.arange(length, dtype=jnp.int32)[None]
        if not self.decode:
            return positions
        real = None if padding_mask is None else padding_mask.astype(jnp.int32)
        if real is not None:
            positions = jnp.cumsum(real, axis=1) - real
        is_initialized = self.has_variable("cache", "position")
        count = self.variable("cache", "position", jnp.zeros, (batch,), jnp.int32)
        if not is_initialized:
            return positions
        offset = count.value
        count.value = offset + (length if real is None else jnp.sum(real, axis=1))
        return offset[:, None] + positions


def _next_token(logits: jax.Array, key, temperature: float, top_k: int | None) -> jax.Array:
    """``[B, V] -> int [B]``: argmax without a key, else a sample of ``softmax(logits / T)``
    restricted to the ``top_k`` most likely tokens."""
    if key is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(
    model: DecoderLM,
    variables: Mapping[str, Any],
    prompt_ids: jax.Array,
    *,
    max_new_tokens: int,
    prompt_mask: jax.Array | None = None,
    rng: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> jax.Array:
    """Extends ``prompt_ids int [B, P]`` by ``max_new_tokens`` tokens: ``-> int [B, P + n]``.

    ``variables`` are the model's variables as ``init`` returns them: ``params`` and
    every other collection the attention needs (Performer's ``random_features``); a
    ``"cache"`` collection in them is ignored (generation builds its own). The prompt
    is fed in one step, then one token per step through the attention layers'
    decoding caches (jitted ``lax.scan``). Greedy when ``rng`` is None,
    otherwise sampling from ``softmax(logits / temperature)`` (top-k when given),
    with a fresh subkey per step, so the same ``rng`` gives the same tokens.

    Prompts of different lengths are **left-padded** to ``P`` and marked by
    ``prompt_mask`` (bool ``[B, P]``, True = a real token; None = all real): each row's
    real tokens take positions ``0, 1, ...`` and the padded ones are never attended to,
    so every row gets the tokens it would get alone (greedy: exactly the same, up to
    float rounding of near-ties). The pad ids are irrelevant; they stay in the output,
    whose row ``b`` is its padded prompt followed by its ``max_new_tokens`` new tokens.
    This works with every attention core that has a decoding cache (dense's full KV
    cache, local's rolling window, Performer/linear's recurrent state) and with relative
    positions (Transformer-XL's core keeps the full KV cache; a ``"memory"`` collection
    in ``variables`` is not read, the cache already holds every earlier token).

    Args:
      model: a :class:`DecoderLM` (not reversible).
      variables: its variables (all collections).
      prompt_ids: int ``[B, P]``, ``P >= 1``; ``P + max_new_tokens`` must fit the
        position table.
      max_new_tokens: n >= 1.
      prompt_mask: bool ``[B, P]`` or None; each row is left-padded (no pad after a
        real token) and has at least one real token.
      rng: PRNG key to sample with; None = greedy.
      temperature, top_k: sampling temperature (> 0) and top-k cut (None = all).

    Raises:
      ValueError: bad shapes, a ``prompt_mask`` that is not left padding or has an
        empty row, or a prompt plus new tokens longer than the position table.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.models import DecoderConfig, DecoderLM, generate
      >>> cfg = DecoderConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4,
      ...                     intermediate_size=64, max_position_embeddings=16)
      >>> model = DecoderLM(cfg)
      >>> prompt = jnp.ones((2, 4), jnp.int32)
      >>> variables = jax.jit(model.init)(jax.random.key(0), prompt)
      >>> generate(model, variables, prompt, max_new_tokens=5).shape
      (2, 9)

      Ragged prompts ``[3, 4, 5, 6]`` and ``[7, 8]``, left-padded with 0:

      >>> ragged = jnp.array([[3, 4, 5, 6], [0, 0, 7, 8]])
      >>> mask = jnp.array([[True, True, True, True], [False, False, True, True]])
      >>> out = generate(model, variables, ragged, prompt_mask=mask, max_new_tokens=3)
      >>> alone = generate(model, variables, jnp.array([[7, 8]]), max_new_tokens=3)
      >>> bool((out[1, 4:] == alone[0, 2:]).all())
      True
    """
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(
            "variables must be the model's variables (a mapping with 'params' and the other "
            f"collections init returned), got {type(variables).__name__}"
            + (f" with keys {sorted(variables)}" if isinstance(variables, Mapping) else "")
        )
    variables = {name: v for name, v in variables.items() if name != "cache"}
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be [B, P] with P >= 1, got shape {prompt_ids.shape}")
    prompt_mask = _check_prompt_mask(prompt_mask, prompt_ids)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if rng is not None and temperature <= 0:
        raise ValueError(f"temperature must be positive when sampling, got {temperature}")
    if top_k is not None and not 1 <= top_k <= model.config.vocab_size:
        raise ValueError(f"top_k must be in [1, vocab_size={model.config.vocab_size}], got {top_k}")
    prompt_len = prompt_ids.shape[1]
    total = prompt_len + max_new_tokens
    check_input_length(total, model.config)
    decoder = model.clone(decode=True)
    try:
        hash(decoder)
        run = _generate_cached
    except TypeError:  # array-valued attention options: compile for this call only
        run = jax.jit(functools.partial(_generate, decoder), static_argnums=(4, 5, 6))
        return run(variables, prompt_ids, prompt_mask, rng, total, temperature, top_k)
    return run(decoder, variables, prompt_ids, prompt_mask, rng, total, temperature, top_k)


def _check_prompt_mask(prompt_mask, prompt_ids: jax.Array) -> jax.Array | None:
    """``prompt_mask`` as bool ``[B, P]`` after checking it is left padding with no empty
    row (its values are checked when concrete, i.e. unless ``generate`` runs under jit)."""
    if prompt_mask is None:
        return None
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_mask must have prompt_ids' shape [B, P] = {list(prompt_ids.shape)}, "
            f"got shape {prompt_mask.shape}"
        )
    mask = prompt_mask.astype(bool)
    if isinstance(mask, jax.core.Tracer):
        return mask
    mask_np = np.asarray(mask)
    empty = np.flatnonzero(~mask_np.any(axis=1))
    if empty.size:
        raise ValueError(
            f"prompt_mask of shape {prompt_mask.shape} has rows without a real token: "
            f"{empty.tolist()}"
        )
    # Left padding: once a row's real tokens start, every later token is real.
    right_padded = np.flatnonzero((mask_np[:, :-1] & ~mask_np[:, 1:]).any(axis=1))
    if right_padded.size:
        raise ValueError(
            f"prompt_mask of shape {prompt_mask.shape} must be left padding (pads before "
            f"the real tokens), but rows {right_padded.tolist()} have a pad after a real token"
        )
    return mask


def _generate(decoder, variables, prompt_ids, prompt_mask, rng, total, temperature, top_k):
    batch, prompt_len = prompt_ids.shape
    steps = total - prompt_len
    # The cache is sized by the init input; jit drops the unused parameter initialisation.
    cache = decoder.init(jax.random.key(0), jnp.zeros((batch, total), jnp.int32))["cache"]
    keys = (None,) * steps if rng is None else tuple(jax.random.split(rng, steps))

    def step(cache, tokens, mask=None):
        logits, mutated = decoder.apply(
            {**variables, "cache": cache}, tokens, mask, mutable=["cache"]
        )
        return mutated["cache"], logits[:, -1]

    # Left padding puts every row's last prompt token in the last column.
    cache, logits = step(cache, prompt_ids, prompt_mask)
    first = _next_token(logits, keys[0], temperature, top_k)
    if steps == 1:
        return jnp.concatenate([prompt_ids, first[:, None]], axis=1)

    def body(carry, key):
        cache, token = carry
        cache, logits = step(cache, token[:, None])
        token = _next_token(logits, key, temperature, top_k)
        return (cache, token), token

    scan_keys = None if rng is None else jnp.stack(keys[1:])
    _, rest = jax.lax.scan(body, (cache, first), scan_keys, length=steps - 1)
    return jnp.concatenate([prompt_ids, first[:, None], rest.T], axis=1)


_generate_cached = jax.jit(_generate, static_argnums=(0, 5, 6, 7))


def next_token_loss(
    logits: jax.Array, tokens: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean cross-entropy of ``logits[:, t]`` predicting ``tokens[:, t + 1]``.

    Args:
      logits: ``[B, T, V]``; tokens: int ``[B, T]``; weights: optional ``[B, T - 1]``
        per-target weights (e.g. only the second half of a copy task).

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(next_token_loss(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3), jnp.int32))), 3)
      1.386
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    if weights is None:
        return jnp.mean(losses)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-9)
