"""Transformer-XL's segment recurrence (Dai et al. 2019, Sec. 3.2): a layer's memory.

A long text is read as consecutive segments. Each layer keeps the inputs it saw for
the last ``M`` positions (``h^{n-1}_{tau}``) and the next segment's queries attend over
``[stop_gradient(memory); segment]``, so information reaches ``M`` positions back per
layer (``N M`` through ``N`` layers) while gradients stay inside the segment.

The memory is ordinary Flax state in the :data:`MEMORY` collection: call the model with
``mutable=[MEMORY]`` and give the returned collection to the next segment's call
(``effjax train`` carries it across steps). A model called without the collection
reads no memory (a first segment).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

#: The collection of state a model carries from one call to the next (segment memory).
MEMORY = "memory"


def _last(x: jax.Array, length: int) -> jax.Array:
    """The last ``length`` positions of ``x [B, L, ...]``, left-padded with zeros (False)
    when ``L < length``."""
    short = length - x.shape[1]
    if short > 0:
        x = jnp.pad(x, [(0, 0), (short, 0)] + [(0, 0)] * (x.ndim - 2))
    return x[:, x.shape[1] - length :]


class SegmentMemory(nn.Module):
    """One layer's memory: ``(x [B, T, D], padding_mask [B, T] | None) ->
    (context [B, M + T, D], context_mask bool [B, M + T])``.

    Variables (collection :data:`MEMORY`): ``hidden [B, M, D]``, the layer inputs of the
    last ``M = mem_len`` positions, and ``mask bool [B, M]``, which of them hold a real
    token; both start as zeros (an empty memory: every slot masked, so a first segment
    computes exactly what a model without memory computes). When the collection is
    mutable (and not at ``init``), the call replaces them with the last ``M`` positions of
    ``[memory; x]``, under ``stop_gradient``. Without the collection (and not mutable)
    the context is ``x`` alone. A memory of another length than ``mem_len`` (a model
    evaluated with ``eval_mem_len``) is read whole and written back at ``mem_len``.

    Example:
      >>> x = jnp.ones((1, 3, 4))
      >>> memory = SegmentMemory(mem_len=2)
      >>> variables = memory.init(jax.random.key(0), x, None)
      >>> (context, mask), state = memory.apply(variables, 2 * x, None, mutable=[MEMORY])
      >>> context.shape, mask.tolist()  # the empty memory, then the segment
      ((1, 5, 4), [[False, False, True, True, True]])
      >>> state[MEMORY]["hidden"][0, :, 0].tolist()  # the segment's last 2 positions
      [2.0, 2.0]
    """

    mem_len: int

    @nn.compact
    def __call__(
        self, x: jax.Array, padding_mask: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None]:
        batch, _, features = x.shape
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
        context = jnp.concatenate([jax.lax.stop_gradient(hidden.value).astype(x.dtype), x], 1)
        context_mask = jnp.concatenate([mask.value, real], axis=1)
        if mutable and not self.is_initializing():
            hidden.value = jax.lax.stop_gradient(_last(context, self.mem_len))
            mask.value = _last(context_mask, self.mem_len)
        return context, context_mask
