"""Switch mixture-of-experts feed-forward (Fedus et al. 2021; top-2 as in Lepikhin et al. 2020).

A router sends each token to one expert (or two) out of ``E`` feed-forward networks;
each expert takes at most ``capacity`` tokens per sequence and the rest are dropped:
their output is zero, so in a residual block ``x + MoE(x)`` they pass on unchanged.
Routing uses gathers and scatters of token indices (no ``[T, E, capacity]`` one-hot
dispatch tensor), so memory is linear in the sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from effjax.attention.helpers import gather_rows
from effjax.layers.feedforward import Activation, activation

Dtype = Any

#: The collection that :class:`SwitchFeedForward` sows its auxiliary losses and
#: statistics into (apply with ``mutable=[MOE_LOSSES]``; see :func:`moe_aux_losses`).
MOE_LOSSES = "moe_losses"


def expert_capacity(length: int, num_experts: int, capacity_factor: float, top_k: int = 1) -> int:
    """Tokens one expert takes per sequence: ``ceil(top_k * length * capacity_factor / E)``,
    at least 1 (Fedus et al. 2021, eq. 3, per sequence)."""
    return max(1, math.ceil(top_k * length * capacity_factor / num_experts))


def route(
    probs: jax.Array, valid: jax.Array, *, top_k: int, capacity: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Assigns tokens to expert slots: ``probs [G, S, E]`` float32 router probabilities,
    ``valid bool [G, S]`` (False = padding, never routed).

    Returns ``(expert, slot, gate, kept)``, each ``[G, S, top_k]``: the expert of each of
    a token's choices, its slot ``expert * capacity + position``, its combine weight (the
    router probability; for ``top_k = 2`` normalised over the two choices, as GShard), and
    whether it fits. Within an expert, first choices come before second choices, and
    earlier tokens first.
    """
    g, s, e = probs.shape
    remaining = probs
    experts, gates = [], []
    for _ in range(top_k):
        choice = jnp.argmax(remaining, axis=-1)
        experts.append(choice)
        gates.append(jnp.take_along_axis(probs, choice[..., None], axis=-1)[..., 0])
        remaining = jnp.where(jax.nn.one_hot(choice, e, dtype=bool), -1.0, remaining)
    expert = jnp.stack(experts, axis=-1)  # [G, S, k]
    gate = jnp.stack(gates, axis=-1)
    if top_k > 1:
        gate = gate / jnp.sum(gate, axis=-1, keepdims=True)
    one_hot = jax.nn.one_hot(expert, e, dtype=jnp.int32) * valid[..., None, None]
    # Priority: choice-major, then sequence order; position = earlier claims on the expert.
    claims = one_hot.transpose(0, 2, 1, 3).reshape(g, top_k * s, e)
    position = jnp.sum((jnp.cumsum(claims, axis=1) - 1) * claims, axis=-1)
    position = position.reshape(g, top_k, s).transpose(0, 2, 1)
    kept = valid[..., None] & (position < capacity)
    return expert, expert * capacity + position, gate, kept


class _ExpertAffine(nn.Module):
    """``kernel [E, D_in, D_out]`` and ``bias [E, D_out]``: one Dense projection per expert."""

    features: int
    kernel_init: Callable[..., jax.Array]
    param_dtype: Dtype

    @nn.compact
    def __call__(self, num_experts: int, in_features: int) -> tuple[jax.Array, jax.Array]:
        def kernel_init(key, shape, dtype):
            # Each expert's kernel initialised as a [D_in, D_out] Dense kernel.
            keys = jax.random.split(key, shape[0])
            return jax.vmap(lambda k: self.kernel_init(k, shape[1:], dtype))(keys)

        shape = (num_experts, in_features, self.features)
        kernel = self.param("kernel", kernel_init, shape, self.param_dtype)
        bias = self.param(
            "bias", nn.initializers.zeros_init(), (num_experts, self.features), self.param_dtype
        )
        return kernel, bias


class _Experts(nn.Module):
    """Every expert's feed-forward on its own slots: ``[E, B, C, D] -> [E, B, C, D]``."""

    d_ff: int
    activation: str | Activation
    param_dtype: Dtype
    kernel_init: Callable[..., jax.Array]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        e, d_model, dtype = x.shape[0], x.shape[-1], x.dtype
        affine = lambda n, name: _ExpertAffine(n, self.kernel_init, self.param_dtype, name=name)  # noqa: E731
        w_in, b_in = (p.astype(dtype) for p in affine(self.d_ff, "intermediate")(e, d_model))
        w_out, b_out = (p.astype(dtype) for p in affine(d_model, "output")(e, self.d_ff))
        act = activation(self.activation) if isinstance(self.activation, str) else self.activation
        h = act(jnp.einsum("ebcd,edf->ebcf", x, w_in) + b_in[:, None, None])
        return jnp.einsum("ebcf,efd->ebcd", h, w_out) + b_out[:, None, None]


class SwitchFeedForward(nn.Module):
    r"""Switch-Transformer feed-forward: ``[B, T, D] -> [B, T, D]`` through ``num_experts``
    experts ``FF_e(x) = act(x W_i^e + b_i^e) W_o^e + b_o^e``.

    Router (always float32, Fedus et al. 2021 Sec. 2.4): ``p = softmax(x W_r)``; token
    ``x`` goes to ``e = argmax p`` and its output is ``p_e FF_e(x)`` (top-1, Switch).
    With ``top_k=2`` it also goes to the second-best expert and the two outputs are mixed
    with the two probabilities normalised to sum 1 (GShard, Lepikhin et al. 2020).
    Each expert takes ``capacity = ceil(top_k * T * capacity_factor / E)`` tokens of each
    sequence (:func:`expert_capacity`), earlier tokens first; a token that finds its
    expert full gets zero from it (dropped: in ``x + MoE(x)`` it passes through the
    residual). Padding tokens (``padding_mask`` False) are not routed and get zero.

    Sown into the ``"moe_losses"`` collection (:data:`MOE_LOSSES`; add them to the loss
    with :func:`moe_aux_losses`), over the real tokens:

    * ``load_balancing_loss``: ``E * sum_e f_e P_e``, ``f_e`` the fraction of tokens
      whose first choice is ``e``, ``P_e`` the mean router probability of ``e``
      (Fedus et al. 2021, eq. 4); 1 when perfectly balanced.
    * ``router_z_loss``: ``mean (logsumexp(x W_r))^2`` (Zoph et al. 2022, eq. 5).
    * ``tokens_dropped``: the fraction of tokens no expert took.
    * ``aux_loss``: ``load_balancing_loss_weight * load_balancing_loss +
      router_z_loss_weight * router_z_loss``, the term to add to the training loss.

    Expert parallelism: with ``expert_axis`` the expert-major activations
    ``[E, B, capacity, D]`` are constrained to be split over that mesh axis (run under
    ``jax.set_mesh(mesh)``, with the expert parameters, whose leading axis is ``E``,
    split over it too), so XLA sends each token to its expert's device and back; the
    result equals the single-device one. Without ``expert_axis`` the activations carry
    the logical axes ``("expert", "batch", ...)`` instead, which ``effjax train`` maps to
    its mesh (effjax.train.sharding).

    Parameters: ``router/kernel [D, E]`` (float32), ``experts/intermediate/kernel
    [E, D, d_ff]`` and ``bias [E, d_ff]``, ``experts/output/kernel [E, d_ff, D]`` and
    ``bias [E, D]``.

    Attributes:
      num_experts: ``E``.
      d_ff: hidden size of each expert.
      capacity_factor: slack over an even split of the tokens (1.0 = exactly even).
      top_k: 1 (Switch) or 2 (GShard).
      activation: hidden activation, a function or a Hugging Face ``hidden_act`` name.
      dropout_rate: dropout on the output.
      expert_axis: mesh axis name to split the experts over, or None.
      load_balancing_loss_weight: ``alpha`` of the load-balancing loss (Switch: 1e-2).
      router_z_loss_weight: weight of the router z-loss (ST-MoE: 1e-3).
      dtype: expert computation dtype (default the input's); param_dtype: expert
        parameter dtype. The router always computes in float32.
      kernel_init: initializer of the expert kernels; router_init: of the router
        (Switch's scaled-down truncated normal, Sec. 2.4).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> moe = SwitchFeedForward(num_experts=4, d_ff=64)
      >>> x = jnp.ones((2, 8, 32))
      >>> variables = moe.init(jax.random.key(0), x)
      >>> y, aux = moe.apply(variables, x, mutable=[MOE_LOSSES])
      >>> y.shape, sorted(moe_aux_losses(aux))
      ((2, 8, 32), ['aux_loss', 'load_balancing_loss', 'router_z_loss', 'tokens_dropped'])
    """

    num_experts: int
    d_ff: int
    capacity_factor: float = 1.25
    top_k: int = 1
    activation: str | Activation = nn.gelu
    dropout_rate: float = 0.0
    expert_axis: str | None = None
    load_balancing_loss_weight: float = 1e-2
    router_z_loss_weight: float = 1e-3
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    router_init: Callable[..., jax.Array] = nn.initializers.variance_scaling(
        0.1, "fan_in", "truncated_normal"
    )

    def _check(self, x: jax.Array, padding_mask: jax.Array | None) -> None:
        if x.ndim != 3:
            raise ValueError(f"x must be [B, T, D], got shape {x.shape}")
        if padding_mask is not None and padding_mask.shape != x.shape[:2]:
            raise ValueError(
                f"padding_mask must be [B, T] = {x.shape[:2]}, got shape {padding_mask.shape}"
            )
        if self.num_experts < 1 or self.d_ff < 1:
            raise ValueError(
                f"num_experts and d_ff must be positive, got {self.num_experts}, {self.d_ff}"
            )
        if self.top_k not in (1, 2) or self.top_k > self.num_experts:
            raise ValueError(
                f"top_k must be 1 or 2 (and <= num_experts={self.num_experts}), got {self.top_k}"
            )
        if self.capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive, got {self.capacity_factor}")

    @nn.compact
    def __call__(
        self, x: jax.Array, padding_mask: jax.Array | None = None, *, deterministic: bool = True
    ) -> jax.Array:
        """Applies the experts to ``x [B, T, D]``; ``padding_mask`` bool ``[B, T]``, True = real."""
        self._check(x, padding_mask)
        b, t, d = x.shape
        e = self.num_experts
        valid = jnp.ones((b, t), bool) if padding_mask is None else padding_mask.astype(bool)
        router = self.param("router", self.router_init, (d, e), jnp.float32)
        logits = x.astype(jnp.float32) @ router
        probs = jax.nn.softmax(logits, axis=-1)
        capacity = expert_capacity(t, e, self.capacity_factor, self.top_k)
        expert, slot, gate, kept = route(probs, valid, top_k=self.top_k, capacity=capacity)
        self._sow_losses(logits, probs, expert, kept, valid)

        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        # Slot -> token index; empty slots point at an appended zero row.
        flat_slot = jnp.where(kept, slot, e * capacity).reshape(b, -1)
        token = jnp.broadcast_to(jnp.arange(t)[None, :, None], kept.shape).reshape(b, -1)
        slot_token = jnp.full((b, e * capacity + 1), t).at[jnp.arange(b)[:, None], flat_slot]
        slot_token = slot_token.set(token)[:, :-1]
        padded = jnp.concatenate([x, jnp.zeros((b, 1, d), dtype)], axis=1)
        expert_in = gather_rows(padded, slot_token).reshape(b, e, capacity, d)
        experts = _Experts(
            self.d_ff, self.activation, self.param_dtype, self.kernel_init, name="experts"
        )
        expert_out = experts(self._expert_major(expert_in.swapaxes(0, 1)))
        expert_out = self._expert_major(expert_out).swapaxes(0, 1).reshape(b, e * capacity, d)
        picked = gather_rows(expert_out, jnp.where(kept, slot, 0).reshape(b, -1))
        weight = jnp.where(kept, gate, 0.0).astype(dtype).reshape(b, -1)
        out = jnp.sum((picked * weight[..., None]).reshape(b, t, self.top_k, d), axis=2)
        if self.dropout_rate > 0.0:
            out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        return out

    def _expert_major(self, x: jax.Array) -> jax.Array:
        """Splits ``[E, B, C, D]`` over ``expert_axis`` (when set) so each device runs its
        experts; otherwise the logical axes ``("expert", "batch")``, a no-op unless logical
        axis rules are bound (``effjax train`` binds its mesh's)."""
        if self.expert_axis is None:
            return nn.with_logical_constraint(x, ("expert", "batch", None, None))
        return jax.lax.with_sharding_constraint(x, PartitionSpec(self.expert_axis))

    def _sow_losses(self, logits, probs, expert, kept, valid) -> None:
        """Load-balancing loss, router z-loss and dropped fraction over the real tokens."""
        real = valid.astype(jnp.float32)
        count = jnp.maximum(jnp.sum(real), 1.0)
        mean = lambda v: jnp.sum(v * real[..., None], axis=(0, 1)) / count  # noqa: E731
        first = jax.nn.one_hot(expert[..., 0], self.num_experts, dtype=jnp.float32)
        balance = self.num_experts * jnp.sum(mean(first) * mean(probs))
        z = jax.nn.logsumexp(logits, axis=-1)
        z_loss = mean((z * z)[..., None])[0]
        dropped = mean((~jnp.any(kept, axis=-1)).astype(jnp.float32)[..., None])[0]
        aux = self.load_balancing_loss_weight * balance + self.router_z_loss_weight * z_loss
        for name, value in (
            ("aux_loss", aux),
            ("load_balancing_loss", balance),
            ("router_z_loss", z_loss),
            ("tokens_dropped", dropped),
        ):
            self.sow(MOE_LOSSES, name, value)


_STATISTICS = ("aux_loss", "load_balancing_loss", "router_z_loss", "tokens_dropped")


def moe_aux_losses(collection: Any) -> dict[str, jax.Array]:
    """What the :class:`SwitchFeedForward` layers sowed: ``aux_loss`` summed over the
    layers (add it to the training loss, as Fedus et al. 2021 do per layer), the
    ``load_balancing_loss``, ``router_z_loss`` and ``tokens_dropped`` averaged over them.

    ``collection`` is the ``"moe_losses"`` collection returned by ``apply(...,
    mutable=["moe_losses"])`` (or the whole mutated-variables dict). Zeros when no layer
    sowed anything.

    Example:
      >>> moe_aux_losses({})["router_z_loss"]
      Array(0., dtype=float32)
    """
    collection = collection.get(MOE_LOSSES, collection)
    values: dict[str, list] = {name: [] for name in _STATISTICS}
    for path, value in jax.tree_util.tree_flatten_with_path(collection)[0]:
        name = next(k.key for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
        values[name].append(value)
    reduce = {"aux_loss": jnp.sum}
    return {
        name: reduce.get(name, jnp.mean)(jnp.stack(v)) if v else jnp.zeros((), jnp.float32)
        for name, v in values.items()
    }
