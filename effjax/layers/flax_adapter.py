"""effjax attention as the ``attention_fn`` of flax's ``nn.MultiHeadDotProductAttention``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from effjax.attention import registry
from effjax.attention.dense import dot_product_attention, dot_product_attention_weights


def _flatten_batch(x: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """``[batch..., A, B, C] -> [prod(batch), A, B, C]``."""
    return x.reshape((math.prod(batch_shape), *x.shape[len(batch_shape) :]))


def _flatten_logit_array(name: str, x, batch_shape: tuple[int, ...]) -> jax.Array:
    """A flax mask/bias broadcastable to ``[batch..., N, T, S]`` -> ``[B|1, N|1, T|1, S|1]``."""
    x = jnp.asarray(x)
    rank = len(batch_shape) + 3
    if x.ndim > rank:
        raise ValueError(
            f"{name} must be broadcastable to [batch..., N, T, S] with batch {batch_shape}, "
            f"got shape {x.shape}"
        )
    x = x.reshape((1,) * (rank - x.ndim) + x.shape)
    if all(d == 1 for d in x.shape[: len(batch_shape)]):
        return x.reshape((1, *x.shape[len(batch_shape) :]))
    try:
        x = jnp.broadcast_to(x, batch_shape + x.shape[len(batch_shape) :])
    except ValueError as err:
        raise ValueError(
            f"{name} of shape {x.shape} does not broadcast to the batch dims {batch_shape}"
        ) from err
    return _flatten_batch(x, batch_shape)


def _dropout(weights, rng, rate: float, broadcast: bool, batch_shape) -> jax.Array:
    """flax's attention-weight dropout, drawing the same bits as flax for the same key."""
    if rng is None:
        raise ValueError(
            "attention dropout (dropout_rate > 0, deterministic=False) needs dropout_rng"
        )
    keep_prob = 1.0 - rate
    # flax draws [1 (each batch dim), 1 (heads), T, S] when broadcasting, else the full
    # [batch..., N, T, S]: draw the same shape, then flatten the batch dims as the weights are.
    rest = (1, *weights.shape[-2:]) if broadcast else weights.shape[1:]
    shape = ((1,) * len(batch_shape) if broadcast else batch_shape) + rest
    keep = jax.random.bernoulli(rng, keep_prob, shape).reshape((-1, *rest))
    return weights * (keep.astype(weights.dtype) / jnp.asarray(keep_prob, weights.dtype))


def _check_no_einsum_override(**overrides: Any) -> None:
    given = sorted(name for name, value in overrides.items() if value is not None)
    if given:
        raise ValueError(
            f"effjax's attention_fn computes its own products in float32 and cannot use "
            f"{', '.join(given)}; leave them unset"
        )


def _dense(query, key, value, bias, mask, flags: dict[str, Any], batch_shape, options):
    """flax.linen.dot_product_attention's computation on effjax's dense weights."""
    weights = dot_product_attention_weights(
        query, key, bias, mask, precision=flags["precision"], **options
    )
    dtype = query.dtype
    if flags["force_fp32_for_softmax"]:
        # flax keeps the float32 softmax output; effjax's softmax is always float32.
        dtype = jnp.promote_types(dtype, jnp.float32)
    weights = weights.astype(dtype)
    if flags["module"] is not None:
        flags["module"].sow(
            "intermediates", "attention_weights", weights.reshape(batch_shape + weights.shape[1:])
        )
    if flags["dropout_rate"] > 0.0 and not flags["deterministic"]:
        weights = _dropout(
            weights,
            flags["dropout_rng"],
            flags["dropout_rate"],
            flags["broadcast_dropout"],
            batch_shape,
        )
    b, n, t, s = weights.shape
    num_kv_heads = key.shape[2]
    out = jnp.einsum(
        "bkgts,bskh->btkgh",
        weights.reshape(b, num_kv_heads, n // num_kv_heads, t, s),
        value,
        precision=flags["precision"],
    )
    return out.reshape(b, t, n, value.shape[-1])


def _sparse(attention_fn, name, query, key, value, bias, mask, flags, options):
    """A variant that never forms weights: flax's per-key padding masks only, nothing dropped."""
    refused = {
        "bias": bias is not None,
        "module (sow_weights=True)": flags["module"] is not None,
        "precision": flags["precision"] is not None,
        "attention-weight dropout": flags["dropout_rate"] > 0.0 and not flags["deterministic"],
    }
    refused = [what for what, given in refused.items() if given]
    if refused:
        raise ValueError(
            f"attention {name!r} never forms attention weights, so it cannot take "
            f"{', '.join(refused)} from flax; use attention='dense', or "
            "effjax.layers.MultiHeadAttention(dropout_rate=...) for output dropout"
        )
    options = dict(options)
    if mask is not None:
        if mask.shape[1:3] != (1, 1):
            raise ValueError(
                f"attention {name!r} takes no dense mask from flax (got mask of shape "
                f"{mask.shape} after flattening batch dims): only a per-key padding mask "
                "[batch..., 1, 1, S] (True = a real key); describe other patterns through "
                "the variant's own options"
            )
        padding = jnp.broadcast_to(mask[:, 0, 0], (query.shape[0], key.shape[1]))
        given = options.pop("padding_mask", None)
        options["padding_mask"] = padding if given is None else padding & given
    return attention_fn(query, key, value, **options)


def as_flax_attention_fn(
    attention: str | Callable[..., jax.Array] = "dense", **options: Any
) -> Callable[..., jax.Array]:
    """An ``attention_fn`` for :class:`flax.linen.MultiHeadDotProductAttention`.

    The returned function has the signature of :func:`flax.linen.dot_product_attention`:
    ``query [batch..., T, N, H]``, ``key``/``value [batch..., S, K, H]`` (any leading
    batch dims, or none), ``bias``/``mask`` broadcastable to ``[batch..., N, T, S]``
    (flax's float 0/1 masks are read as bool), ``dtype`` (inputs are promoted as flax
    does) and ``force_fp32_for_softmax`` (the dtype of the weights; the softmax itself
    is always float32 in effjax).

    With ``attention="dense"`` it honours all of flax's contract: attention-weight
    dropout (``dropout_rng``, ``dropout_rate``, ``broadcast_dropout``,
    ``deterministic``; the same bits as flax for the same key), ``sow_weights``
    (through ``module``) and ``precision``. It differs from flax in one place: a query
    whose keys are all masked returns zeros (flax averages every value).

    Other variants never form the weights: they accept flax masks that are per-key
    padding ``[batch..., 1, 1, S]`` (passed as ``padding_mask``) and refuse a dense
    mask, a bias, weight dropout, ``sow_weights`` and ``precision`` with a
    ``ValueError``. flax's ``einsum_dot_general`` / ``*_einsum`` overrides are refused
    for every variant. Nothing flax passes is silently ignored.

    Args:
      attention: registry name or attention function.
      **options: keyword options of the variant (``is_causal=True``, ``window_size=...``).

    Example:
      >>> import flax.linen as nn
      >>> from effjax.layers import as_flax_attention_fn
      >>> layer = nn.MultiHeadDotProductAttention(
      ...     num_heads=4, attention_fn=as_flax_attention_fn("dense"))
      >>> local = nn.MultiHeadDotProductAttention(
      ...     num_heads=4, attention_fn=as_flax_attention_fn("local", window_size=16))
    """
    attention_fn = registry.resolve(attention)
    is_dense = attention_fn is dot_product_attention

    def flax_attention_fn(
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
        broadcast_dropout: bool = True,
        dropout_rng: jax.Array | None = None,
        dropout_rate: float = 0.0,
        deterministic: bool = False,
        dtype: Any = None,
        precision: jax.lax.PrecisionLike = None,
        module: Any = None,
        force_fp32_for_softmax: bool = False,
        einsum_dot_general: Callable[..., jax.Array] | None = None,
        qk_attn_weights_einsum: Callable[..., jax.Array] | None = None,
        attn_weights_value_einsum: Callable[..., jax.Array] | None = None,
    ) -> jax.Array:
        _check_no_einsum_override(
            einsum_dot_general=einsum_dot_general,
            qk_attn_weights_einsum=qk_attn_weights_einsum,
            attn_weights_value_einsum=attn_weights_value_einsum,
        )
        query, key, value = promote_dtype(query, key, value, dtype=dtype)
        batch_shape = query.shape[:-3]
        if query.ndim < 3 or key.shape[:-3] != batch_shape or value.shape[:-3] != batch_shape:
            raise ValueError(
                "query, key and value must be [batch..., length, heads, head_dim] with the "
                f"same batch dims, got {query.shape}, {key.shape}, {value.shape}"
            )
        q, k, v = (_flatten_batch(x, batch_shape) for x in (query, key, value))
        if mask is not None:
            mask = _flatten_logit_array("mask", mask, batch_shape).astype(bool)
        if bias is not None:
            bias = _flatten_logit_array("bias", bias, batch_shape)
        flags = {
            "broadcast_dropout": broadcast_dropout,
            "dropout_rng": dropout_rng,
            "dropout_rate": dropout_rate,
            "deterministic": deterministic,
            "precision": precision,
            "module": module,
            "force_fp32_for_softmax": force_fp32_for_softmax,
        }
        if is_dense:
            out = _dense(q, k, v, bias, mask, flags, batch_shape, options)
        else:
            out = _sparse(attention_fn, attention, q, k, v, bias, mask, flags, options)
        return out.reshape(batch_shape + out.shape[1:])

    return flax_attention_fn
