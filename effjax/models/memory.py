"""Transformer-XL's segment recurrence (Dai et al. 2019, Sec. 3.2) and the Compressive
Transformer's compressed memory (Rae et al. 2020): a layer's memory.

A long text is read as consecutive segments. Each layer keeps the inputs it saw for
the last ``M`` positions (``h^{n-1}_{tau}``) and the next segment's queries attend over
``[stop_gradient(memory); segment]``, so information reaches ``M`` positions back per
layer (``N M`` through ``N`` layers) while gradients stay inside the segment.

With a compressed memory of ``M_c`` slots and compression rate ``c``, the ``T``
positions each segment pushes out of the ``M``-slot memory are not dropped but
compressed ``c`` to one (mean pooling, or a learned 1-D convolution of stride ``c``)
into a second first-in-first-out memory, and the queries attend over
``[compressed; memory; segment]``: ``M + c M_c`` positions back at the cost of
``M + M_c`` slots.

The memories are ordinary Flax state in the :data:`MEMORY` collection: call the model
with ``mutable=[MEMORY]`` and give the returned collection to the next segment's call
(``effjax train`` carries it across steps). A model called without the collection
reads no memory (a first segment).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

#: The collection of state a model carries from one call to the next (segment memory).
MEMORY = "memory"
#: The collection the compressive memory sows its attention-reconstruction losses into
#: (apply with ``mutable=[COMPRESSION_LOSSES]``; see :func:`compression_losses`).
COMPRESSION_LOSSES = "compression_losses"
#: The compression functions of ``DecoderConfig.compression``.
COMPRESSIONS = ("mean", "conv")

#: ``attend(queries [B, T, D], memories [B, S, D], memory_mask bool [B, S]) -> [B, T, ...]``:
#: the content attention the reconstruction loss compares (the layer's, frozen).
Attend = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _last(x: jax.Array, length: int) -> jax.Array:
    """The last ``length`` positions of ``x [B, L, ...]``, left-padded with zeros (False)
    when ``L < length``."""
    short = length - x.shape[1]
    if short > 0:
        x = jnp.pad(x, [(0, 0), (short, 0)] + [(0, 0)] * (x.ndim - 2))
    return x[:, x.shape[1] - length :]


def _mean_pooling_init(rate: int):
    """A ``[c, D, D]`` convolution kernel that averages each window of ``c`` positions, so
    a fresh ``"conv"`` compressor starts as ``"mean"`` (and ``c = 1`` as the identity)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.eye(shape[1], shape[2], dtype=dtype) / rate, shape)

    return init


class SegmentMemory(nn.Module):
    """One layer's memory: ``(x [B, T, D], padding_mask [B, T] | None) ->
    (context [B, M_c + M + T, D], context_mask bool [B, M_c + M + T])``.

    Variables (collection :data:`MEMORY`): ``hidden [B, M, D]``, the layer inputs of the
    last ``M = mem_len`` positions, and ``mask bool [B, M]``, which of them hold a real
    token; both start as zeros (an empty memory: every slot masked, so a first segment
    computes exactly what a model without memory computes). When the collection is
    mutable (and not at ``init``), the call replaces them with the last ``M`` positions of
    ``[memory; x]``, under ``stop_gradient``. Without the collection (and not mutable)
    the context is ``x`` alone. A memory of another length than ``mem_len`` (a model
    evaluated with ``eval_mem_len``) is read whole and written back at ``mem_len``.

    With ``compressed_mem_len = M_c > 0`` (Rae et al. 2020, the Compressive Transformer)
    there are also ``compressed [B, M_c, D]`` and ``compressed_mask [B, M_c]``, read
    before the memory. The ``T`` positions an update pushes out of ``[memory; x]`` (its
    first ``T``) are compressed to ``T / c`` slots, ``c = compression_rate`` (``T`` must
    be a multiple of ``c``), and appended to it, keeping the last ``M_c``:

    * ``"mean"``: the mean of each ``c`` consecutive real positions (a slot is real when
      one of its positions is);
    * ``"conv"``: a learned 1-D convolution (kernel ``c``, stride ``c``, submodule
      ``compress``; empty positions enter as zeros), initialised to the mean.

    Given ``attend`` (the layer's content attention with frozen parameters), an update
    also sows into :data:`COMPRESSION_LOSSES` (when mutable) the paper's
    attention-reconstruction loss ``mean ||attend(x, old) - attend(x, compress(old))||^2``
    over the real queries of the rows with a real evicted position, ``old`` being the
    evicted positions; everything but the compression is under ``stop_gradient``, so
    the loss trains only the compressor, and the language-model loss never reaches it
    (the compressed memory is first read by the next call, as a constant).

    Example:
      >>> x = jnp.ones((1, 3, 4))
      >>> memory = SegmentMemory(mem_len=2)
      >>> variables = memory.init(jax.random.key(0), x, None)
      >>> (context, mask), state = memory.apply(variables, 2 * x, None, mutable=[MEMORY])
      >>> context.shape, mask.tolist()  # the empty memory, then the segment
      ((1, 5, 4), [[False, False, True, True, True]])
      >>> state[MEMORY]["hidden"][0, :, 0].tolist()  # the segment's last 2 positions
      [2.0, 2.0]

      Compressed, rate 2: the 2 positions the segment ``[1, 2]`` pushes out of a full
      memory ``[3, 5]`` become one slot, their mean:

      >>> memory = SegmentMemory(mem_len=2, compressed_mem_len=1, compression_rate=2)
      >>> x = jnp.array([1.0, 2.0])[None, :, None]
      >>> variables = memory.init(jax.random.key(0), x, None)
      >>> full = {MEMORY: {**variables[MEMORY], "hidden": jnp.array([[[3.0], [5.0]]]),
      ...                  "mask": jnp.ones((1, 2), bool)}}
      >>> _, state = memory.apply(full, x, None, mutable=[MEMORY])
      >>> state[MEMORY]["compressed"].tolist(), state[MEMORY]["hidden"].tolist()
      ([[[4.0]]], [[[1.0], [2.0]]])
    """

    mem_len: int
    compressed_mem_len: int = 0
    compression_rate: int = 1
    compression: str = "mean"

    @nn.compact
    def __call__(
        self, x: jax.Array, padding_mask: jax.Array | None, attend: Attend | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        batch, length, features = x.shape
        mutable = self.is_mutable_collection(MEMORY)
        if not mutable and not self.has_variable(MEMORY, "hidden"):
            return x, padding_mask
        shape = (batch, self.mem_len, features)
        hidden = self.variable(MEMORY, "hidden", jnp.zeros, shape, x.dtype)
        mask = self.variable(MEMORY, "mask", jnp.zeros, (batch, self.mem_len), bool)
        if hidden.value.shape[0] != batch or hidden.value.shape[2] != features:
            raise ValueError(
                f"memory holds hidden states of shape {hidden.value.shape}, the segment is "
                f"{x.shape}: the batch size and width must stay the same across segments"
            )
        real = jnp.ones(x.shape[:2], bool) if padding_mask is None else padding_mask
        recent = jnp.concatenate([jax.lax.stop_gradient(hidden.value).astype(x.dtype), x], 1)
        recent_mask = jnp.concatenate([mask.value, real], axis=1)
        update = mutable and not self.is_initializing()
        if update:
            hidden.value = jax.lax.stop_gradient(_last(recent, self.mem_len))
            mask.value = _last(recent_mask, self.mem_len)
        if not self.compressed_mem_len:
            return recent, recent_mask
        slots = (batch, self.compressed_mem_len, features)
        compressed = self.variable(MEMORY, "compressed", jnp.zeros, slots, x.dtype)
        compressed_mask = self.variable(MEMORY, "compressed_mask", jnp.zeros, slots[:2], bool)
        context = jnp.concatenate([jax.lax.stop_gradient(compressed.value), recent], axis=1)
        context_mask = jnp.concatenate([compressed_mask.value, recent_mask], axis=1)
        # The compressor runs at init too, so that its parameters exist.
        evicted = jax.lax.stop_gradient(recent[:, :length])
        evicted_mask = recent_mask[:, :length]
        new, new_mask = self._compress(evicted, evicted_mask)
        if update:
            compressed.value = jax.lax.stop_gradient(
                _last(jnp.concatenate([compressed.value, new], axis=1), self.compressed_mem_len)
            )
            compressed_mask.value = _last(
                jnp.concatenate([compressed_mask.value, new_mask], axis=1),
                self.compressed_mem_len,
            )
            if attend is not None and self.is_mutable_collection(COMPRESSION_LOSSES):
                loss = _reconstruction_loss(attend, x, real, evicted, evicted_mask, new, new_mask)
                self.sow(COMPRESSION_LOSSES, "attention_reconstruction", loss)
        return context, context_mask

    def _compress(self, evicted: jax.Array, evicted_mask: jax.Array):
        """``[B, T, D], [B, T] -> [B, T / c, D], [B, T / c]`` (see the class doc)."""
        batch, length, features = evicted.shape
        rate = self.compression_rate
        if length % rate:
            raise ValueError(
                f"the segment length T={length} (input of shape {evicted.shape}) must be a "
                f"multiple of compression_rate={rate}"
            )
        groups = evicted_mask.reshape(batch, length // rate, rate)
        zeroed = jnp.where(evicted_mask[..., None], evicted, 0)
        if self.compression == "mean":
            sums = zeroed.reshape(batch, length // rate, rate, features).sum(axis=2)
            new = sums / jnp.maximum(groups.sum(axis=2), 1)[..., None].astype(sums.dtype)
        else:
            new = nn.Conv(
                features,
                kernel_size=(rate,),
                strides=(rate,),
                padding="VALID",
                kernel_init=_mean_pooling_init(rate),
                name="compress",
            )(zeroed)
        return new, groups.any(axis=2)


def _reconstruction_loss(attend, x, real, old, old_mask, new, new_mask) -> jax.Array:
    """Rae et al. 2020's attention-reconstruction loss (see :class:`SegmentMemory`)."""
    queries = jax.lax.stop_gradient(x)
    error = (attend(queries, old, old_mask) - attend(queries, new, new_mask)) ** 2
    weight = (real & old_mask.any(axis=1, keepdims=True)).astype(error.dtype)
    per_query = error.reshape(*error.shape[:2], -1).mean(axis=-1)
    return jnp.sum(per_query * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def compression_losses(collection: Any) -> dict[str, jax.Array]:
    """What the compressive memories sowed: ``aux_loss``, the attention-reconstruction
    losses summed over the layers (Rae et al. 2020 add them up; only the compressors
    get their gradient), and ``attention_reconstruction``, their mean.

    ``collection`` is the :data:`COMPRESSION_LOSSES` collection returned by
    ``apply(..., mutable=[COMPRESSION_LOSSES])`` (or the whole mutated-variables dict);
    zeros when nothing was sown.

    Example:
      >>> compression_losses({})["aux_loss"]
      Array(0., dtype=float32)
    """
    losses = jax.tree.leaves(collection.get(COMPRESSION_LOSSES, collection))
    if not losses:
        zero = jnp.zeros((), jnp.float32)
        return {"aux_loss": zero, "attention_reconstruction": zero}
    stacked = jnp.stack(losses)
    return {"aux_loss": jnp.sum(stacked), "attention_reconstruction": jnp.mean(stacked)}
