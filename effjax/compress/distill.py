"""Knowledge distillation: losses, a jitted train step, and student initialisation.

- :func:`kd_loss`: soft-target loss of Hinton et al. (2015), as DistilBERT (Sanh et
  et al. 2019) used it: ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``.
- :func:`hidden_mse_loss`, :func:`hidden_cosine_loss`: match hidden states through
  a layer map (TinyBERT's MSE, Jiao et al. 2020; DistilBERT's cosine).
- :func:`attention_transfer_loss`: KL between attention distributions (MiniLM,
  Wang et al. 2020; TinyBERT matches the same maps with MSE);
  :func:`value_relation_loss`: MiniLM's value-relation transfer.
- :func:`distill_step` / :func:`make_distill_step`: one optimizer step of the
  student against a frozen teacher, a pure function of ``(state, batch)``.
- :func:`every_other_layer`, :func:`init_student_from_teacher`: DistilBERT's
  initialisation of a shallow student from a subset of the teacher's layers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from effjax.attention.helpers import masked_softmax

LayerMap = Sequence[tuple[int, int]]
_TINY = 1e-30


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``values [...]`` over the positions where ``mask [...]`` is True (0 if none)."""
    if mask is None:
        return jnp.mean(values)
    if mask.shape != values.shape:
        raise ValueError(f"mask must have shape {values.shape}, got {mask.shape}")
    weights = mask.astype(jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _kl_rows(teacher_probs: jax.Array, student_log_probs: jax.Array) -> jax.Array:
    """``sum_c p_t (log p_t - log p_s)`` over the last axis (0 log 0 = 0)."""
    return jnp.sum(
        jax.scipy.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs,
        axis=-1,
    )


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Soft-target distillation loss (Hinton et al. 2015):

        T^2 * mean_{unmasked positions} KL(softmax(z_t / T) || softmax(z_s / T))

    The ``T^2`` keeps gradient magnitudes comparable across temperatures.

    Args:
      student_logits, teacher_logits: ``[..., C]`` (e.g. ``[B, T, vocab]``), any float dtype.
      temperature: ``T > 0``.
      mask: bool ``[...]`` (the logits' shape without ``C``), True = a position that counts.

    Returns:
      A float32 scalar (0 when every position is masked).

    Example:
      >>> import jax.numpy as jnp
      >>> from effjax.compress import kd_loss
      >>> z = jnp.array([[1.0, 2.0, 3.0]])
      >>> round(float(kd_loss(z, z, temperature=2.0)), 6)
      0.0
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {student_logits.shape} and teacher_logits "
            f"{teacher_logits.shape} must have the same shape"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher_probs = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    student_log_probs = jax.nn.log_softmax(
        student_logits.astype(jnp.float32) / temperature, axis=-1
    )
    kl = _kl_rows(jax.lax.stop_gradient(teacher_probs), student_log_probs)
    return temperature**2 * _masked_mean(kl, mask)


def _layer_pairs(
    student: Sequence[jax.Array] | jax.Array,
    teacher: Sequence[jax.Array] | jax.Array,
    layer_map: LayerMap | None,
) -> list[tuple[jax.Array, jax.Array]]:
    student = [student] if isinstance(student, jax.Array) else list(student)
    teacher = [teacher] if isinstance(teacher, jax.Array) else list(teacher)
    if layer_map is None:
        if len(student) != len(teacher):
            raise ValueError(
                f"without a layer_map, student ({len(student)}) and teacher ({len(teacher)}) "
                "need the same number of layers"
            )
        layer_map = [(i, i) for i in range(len(student))]
    pairs = []
    for s, t in layer_map:
        if not (0 <= s < len(student) and 0 <= t < len(teacher)):
            raise ValueError(
                f"layer_map pair ({s}, {t}) is out of range for {len(student)} student and "
                f"{len(teacher)} teacher layers"
            )
        if student[s].shape != teacher[t].shape:
            raise ValueError(
                f"layer_map pair ({s}, {t}): student shape {student[s].shape} != teacher "
                f"shape {teacher[t].shape} (project the student first)"
            )
        pairs.append(
            (student[s].astype(jnp.float32), jax.lax.stop_gradient(teacher[t]).astype(jnp.float32))
        )
    return pairs


def hidden_mse_loss(
    student_hidden: Sequence[jax.Array] | jax.Array,
    teacher_hidden: Sequence[jax.Array] | jax.Array,
    *,
    layer_map: LayerMap | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean squared error between hidden states, averaged over mapped layer pairs.

    ``mean_pairs mean_{unmasked positions} mean_D (h_s - h_t)^2`` (TinyBERT's hidden loss
    without its projection; project a narrower student first).

    Args:
      student_hidden, teacher_hidden: one array or a list of per-layer arrays ``[..., D]``
        (e.g. ``[B, T, D]`` hidden states, or ``[B, D]`` sentence embeddings).
      layer_map: ``[(student_layer, teacher_layer), ...]``; default the identity.
      mask: bool ``[...]`` (shape without ``D``), True = a position that counts.
    """
    pairs = _layer_pairs(student_hidden, teacher_hidden, layer_map)
    return sum(_masked_mean(jnp.mean((s - t) ** 2, axis=-1), mask) for s, t in pairs) / len(pairs)


def hidden_cosine_loss(
    student_hidden: Sequence[jax.Array] | jax.Array,
    teacher_hidden: Sequence[jax.Array] | jax.Array,
    *,
    layer_map: LayerMap | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """``1 - cos(h_s, h_t)`` along ``D``, averaged over unmasked positions and layer pairs.

    DistilBERT's cosine embedding loss; arguments as in :func:`hidden_mse_loss`.
    """
    pairs = _layer_pairs(student_hidden, teacher_hidden, layer_map)

    def one_minus_cos(s, t):
        cos = jnp.sum(s * t, axis=-1) / jnp.maximum(
            jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1), 1e-12
        )
        return 1.0 - cos

    return sum(_masked_mean(one_minus_cos(s, t), mask) for s, t in pairs) / len(pairs)


def attention_transfer_loss(
    student_attention: jax.Array,
    teacher_attention: jax.Array,
    *,
    padding_mask: jax.Array | None = None,
) -> jax.Array:
    """``KL(A_t || A_s)`` between attention distributions (MiniLM's self-attention transfer).

    Averaged over heads and real query positions.

    Args:
      student_attention, teacher_attention: softmax weights ``[B, N, T, S]`` (rows sum to 1;
        same head count, as MiniLM requires).
      padding_mask: bool ``[B, T]``, True = a real query (self-attention: the token mask).
    """
    if student_attention.shape != teacher_attention.shape or student_attention.ndim != 4:
        raise ValueError(
            "attention maps must both be [B, N, T, S], got student "
            f"{student_attention.shape} and teacher {teacher_attention.shape}"
        )
    teacher = jax.lax.stop_gradient(teacher_attention).astype(jnp.float32)
    student_log = jnp.log(jnp.maximum(student_attention.astype(jnp.float32), _TINY))
    kl = _kl_rows(teacher, student_log)  # [B, N, T]
    mask = None
    if padding_mask is not None:
        b, n, t = kl.shape
        mask = jnp.broadcast_to(padding_mask[:, None, :], (b, n, t))
    return _masked_mean(kl, mask)


def _value_relation(values: jax.Array, num_heads: int, padding_mask: jax.Array | None) -> jax.Array:
    """``softmax(V_r V_r^T / sqrt(d_r))`` per relation head: ``[B, T, N, H] -> [B, R, T, T]``."""
    b, t, n, h = values.shape
    if (n * h) % num_heads:
        raise ValueError(
            f"num_relation_heads={num_heads} must divide N*H={n * h} (values {values.shape})"
        )
    d = n * h // num_heads
    v = values.astype(jnp.float32).reshape(b, t, num_heads, d)
    logits = jnp.einsum("btrd,bsrd->brts", v, v) / math.sqrt(d)
    mask = (
        None
        if padding_mask is None
        else jnp.broadcast_to(padding_mask[:, None, None, :], logits.shape)
    )
    return masked_softmax(logits, mask)


def value_relation_loss(
    student_values: jax.Array,
    teacher_values: jax.Array,
    *,
    num_relation_heads: int | None = None,
    padding_mask: jax.Array | None = None,
) -> jax.Array:
    """MiniLM's value-relation transfer: ``KL(VR_t || VR_s)``, ``VR = softmax(V V^T / sqrt(d))``.

    Value vectors are concatenated and re-split into ``num_relation_heads`` relation
    heads (MiniLMv2, Wang et al. 2021), so student and teacher may differ in head
    count and width.

    Args:
      student_values: ``[B, T, N_s, H_s]``; teacher_values: ``[B, T, N_t, H_t]``.
      num_relation_heads: default the teacher's head count.
      padding_mask: bool ``[B, T]``, True = a real token (masks keys and queries).
    """
    if student_values.ndim != 4 or student_values.shape[:2] != teacher_values.shape[:2]:
        raise ValueError(
            f"values must be [B, T, N, H] with the same B, T, got student {student_values.shape} "
            f"and teacher {teacher_values.shape}"
        )
    num_heads = num_relation_heads or teacher_values.shape[2]
    teacher = _value_relation(jax.lax.stop_gradient(teacher_values), num_heads, padding_mask)
    student = _value_relation(student_values, num_heads, padding_mask)
    return attention_transfer_loss(student, teacher, padding_mask=padding_mask)


class DistillState(NamedTuple):
    """State of :func:`distill_step`: the student is trained, the teacher only read."""

    step: jax.Array
    params: Any
    opt_state: Any
    teacher_params: Any


def init_distill_state(
    student_params: Any, teacher_params: Any, optimizer: optax.GradientTransformation
) -> DistillState:
    """A :class:`DistillState` at step 0."""
    return DistillState(
        jnp.zeros((), jnp.int32), student_params, optimizer.init(student_params), teacher_params
    )


def distill_step(
    state: DistillState,
    batch: Any,
    *,
    student_apply: Callable[[Any, Any], Any],
    teacher_apply: Callable[[Any, Any], Any],
    loss_fn: Callable[[Any, Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
) -> tuple[DistillState, dict[str, jax.Array]]:
    """One optimizer step of the student, a pure function of ``(state, batch)``.

    ``loss = loss_fn(student_apply(params, batch), teacher_out, batch)`` with
    ``teacher_out = stop_gradient(teacher_apply(teacher_params, batch))``; only
    ``state.params`` receive gradients. Being pure, it shards like any jitted step:
    put ``batch`` on a data-parallel ``NamedSharding``, the params replicated (or
    sharded), and jit does the rest.

    Returns:
      The new state and ``{"loss"}``.
    """
    teacher_out = jax.lax.stop_gradient(teacher_apply(state.teacher_params, batch))

    def student_loss(params):
        return loss_fn(student_apply(params, batch), teacher_out, batch)

    loss, grads = jax.value_and_grad(student_loss)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return DistillState(state.step + 1, params, opt_state, state.teacher_params), {"loss": loss}


def make_distill_step(**options: Any) -> Callable[[DistillState, Any], tuple[DistillState, dict]]:
    """``jax.jit`` of :func:`distill_step` with its keyword ``options`` bound.

    Example:
      >>> import optax
      >>> from effjax.compress import make_distill_step, hidden_cosine_loss
      >>> step = make_distill_step(
      ...     student_apply=lambda p, x: x @ p, teacher_apply=lambda p, x: x @ p,
      ...     loss_fn=lambda s, t, x: hidden_cosine_loss(s, t), optimizer=optax.adam(1e-3))
    """
    return jax.jit(functools.partial(distill_step, **options))


def every_other_layer(num_teacher_layers: int, num_student_layers: int) -> tuple[int, ...]:
    """Evenly spaced teacher layers for a student, first and last included (DistilBERT).

    ``floor(i * (L_t - 1) / (L_s - 1) + 1/2)`` for ``i < L_s``: 12 -> 6 gives
    ``(0, 2, 4, 7, 9, 11)``, the layers DistilBERT's initialisation copies ("one layer
    out of two", Sanh et al. 2019); 6 -> 3 gives ``(0, 3, 5)``. Keeping the last layer
    keeps the output space the teacher's heads and pooling were trained on.
    """
    if not 1 <= num_student_layers <= num_teacher_layers:
        raise ValueError(
            f"num_student_layers={num_student_layers} must be in "
            f"[1, num_teacher_layers={num_teacher_layers}]"
        )
    if num_student_layers == 1:
        return (num_teacher_layers - 1,)
    step = (num_teacher_layers - 1) / (num_student_layers - 1)
    return tuple(math.floor(i * step + 0.5) for i in range(num_student_layers))


def init_student_from_teacher(
    teacher_params: Mapping[str, Any],
    teacher_layers: Sequence[int],
    *,
    layer_name: str = "layers_{}",
) -> dict[str, Any]:
    """Student params made of the teacher's layers ``teacher_layers``, renumbered from 0.

    Every mapping in the tree that holds ``layer_name.format(i)`` keys has them replaced
    by ``layer_name.format(j) = teacher[layer_name.format(teacher_layers[j])]``; all other
    entries (embeddings, pooler, final norm) are kept. Arrays are shared, not copied.

    Example:
      >>> from effjax.compress import init_student_from_teacher
      >>> teacher = {"embed": 0, "layers_0": 10, "layers_1": 11, "layers_2": 12, "layers_3": 13}
      >>> init_student_from_teacher(teacher, (0, 2))
      {'embed': 0, 'layers_0': 10, 'layers_1': 12}
    """
    found = False

    def rebuild(tree):
        nonlocal found
        if not isinstance(tree, Mapping):
            return tree
        layer_keys = {layer_name.format(i): i for i in range(len(tree))}
        present = [k for k in tree if k in layer_keys]
        if not present:
            return {k: rebuild(v) for k, v in tree.items()}
        found = True
        for index in teacher_layers:
            if layer_name.format(index) not in tree:
                raise ValueError(
                    f"teacher_layers has {index}, but the teacher has only layers {sorted(present)}"
                )
        student = {k: rebuild(v) for k, v in tree.items() if k not in layer_keys}
        for j, index in enumerate(teacher_layers):
            student[layer_name.format(j)] = tree[layer_name.format(index)]
        return student

    student = rebuild(teacher_params)
    if not found:
        raise ValueError(f"no key of the form layer_name={layer_name!r} in teacher_params")
    return student
