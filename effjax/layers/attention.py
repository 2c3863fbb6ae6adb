"""Multi-head attention as a Flax linen module, on any effjax attention variant."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from effjax.layers.cores.base import AttentionCore, build_core
from effjax.layers.quantized import dense_layer, reject_int8_params

Dtype = Any
Initializer = Callable[..., jax.Array]


class MultiHeadAttention(nn.Module):
    """Multi-head attention whose core is any attention variant.

    ``inputs_q [B, T, D] -> [B, T, out_features or D]``: project to
    ``query [B, T, N, H]``, ``key``/``value [B, S, K, H]`` (GQA when
    ``num_kv_heads < num_heads``), apply the variant's core (submodule ``core``),
    project back. Everything variant-specific (options and their defaults,
    variables, randomness, decoding cache, shared-QK) belongs to the core, see
    :mod:`effjax.layers.cores`.

    Randomness: randomised variants (LSH rotations, BigBird random blocks) draw from
    the ``"attention"`` rng stream when ``deterministic=False`` and use a fixed key per
    layer otherwise; dropout draws from ``"dropout"``. Training therefore needs
    ``deterministic=False`` and ``rngs={"attention": ..., "dropout": ...}``.
    Performer's features live in the ``"random_features"`` collection: pass all of
    ``init``'s variables to ``apply``, not only ``params``.

    Attributes:
      num_heads: N, query heads.
      qkv_features: N * H, default the input's feature size.
      out_features: output size, default the input's feature size.
      num_kv_heads: K, key/value heads (must divide N), default N.
      attention: a registry name (``"dense"``, ``"local"``, ... see
        ``effjax.attention.available()``), a core instance (``LocalCore(window_size=64)``)
        or an attention function. A registered function behaves exactly like its name;
        an unregistered one is called as ``fn(q, k, v, padding_mask=, is_causal=,
        **attention_options)``.
      attention_options: the core's options (``{"window_size": 128}``); every option has
        the paper's default, and an unknown one is a ValueError listing the valid ones.
      is_causal: causal self-attention (a variant that cannot be causal says so).
      dropout_rate: dropout on the attention output before the output projection.
        Sparse and linear variants never materialise attention weights, so unlike
        flax's layer this does not drop individual weights.
      deterministic: default of the call argument (True when neither is given): True
        disables dropout and makes randomised variants use a fixed evaluation key;
        pass False when training.
      decode: autoregressive decoding with a ``"cache"`` collection. Initialise with
        an input of the maximum length, then call with ``T`` new tokens per step;
        tokens beyond that length return NaN.
      dtype: computation dtype; param_dtype: parameter dtype.
      quantization: ``"none"`` (float projections), ``"weight_only"`` or ``"dynamic"``:
        int8 projections (:class:`~effjax.layers.QuantizedDense`) that run on
        ``effjax.compress.quantize_params`` output.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from effjax.layers import MultiHeadAttention
      >>> layer = MultiHeadAttention(num_heads=4, attention="local", is_causal=True)
      >>> x = jnp.ones((2, 16, 32))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> layer.apply(variables, x).shape
      (2, 16, 32)
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    num_kv_heads: int | None = None
    attention: str | Callable[..., jax.Array] | AttentionCore = "dense"
    attention_options: Mapping[str, Any] = FrozenDict()
    is_causal: bool = False
    dropout_rate: float = 0.0
    deterministic: bool | None = None
    decode: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    quantization: str = "none"

    def __post_init__(self):
        # Options are checked when the layer is built, not deep inside a trace.
        build_core(self.attention, self.attention_options)
        super().__post_init__()

    def _head_sizes(self, in_features: int) -> tuple[int, int, int]:
        features = self.qkv_features or in_features
        num_kv_heads = self.num_kv_heads or self.num_heads
        if features % self.num_heads:
            raise ValueError(
                f"qkv_features={features} must be divisible by num_heads={self.num_heads}"
            )
        if self.num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} must divide num_heads={self.num_heads}")
        return self.num_heads, num_kv_heads, features // self.num_heads

    def _dense(self, features, name: str, axis=-1) -> nn.Module:
        return dense_layer(
            self.quantization,
            features,
            axis=axis,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name=name,
        )

    def _projection(self, heads: int, head_dim: int, name: str) -> nn.Module:
        return self._dense((heads, head_dim), name)

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array | None = None,
        *,
        padding_mask: jax.Array | None = None,
        global_mask: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """Attends ``inputs_q [B, T, D]`` to ``inputs_kv [B, S, D]`` (default: itself).

        Args:
          inputs_q: ``[B, T, D]``.
          inputs_kv: ``[B, S, D]``, default ``inputs_q`` (self-attention).
          padding_mask: bool ``[B, S]``, True = a real key.
          global_mask: bool ``[B, T]``, True = a global token (Longformer's
            ``"global_local"``: it attends to and is attended by every token). Variants
            without global tokens ignore it (dense attention already sees every token).
          deterministic: overrides the attribute of the same name (see the class doc).

        Returns:
          ``[B, T, out_features]``.
        """
        if inputs_q.ndim != 3:
            raise ValueError(f"inputs_q must be [B, T, D], got shape {inputs_q.shape}")
        if self.quantization == "none":
            reject_int8_params(self)
        else:  # the core's own parameters (Linformer's projections, ...) have no int8 path
            reject_int8_params(self, under="core", owner="the attention core")
        self_attention = inputs_kv is None or inputs_kv is inputs_q
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        if deterministic is None:
            deterministic = True if self.deterministic is None else self.deterministic
        num_heads, num_kv_heads, head_dim = self._head_sizes(inputs_q.shape[-1])
        core = build_core(self.attention, self.attention_options).clone(parent=self, name="core")

        if not core.uses_query_key:
            # Only the shapes matter (Gaussian, random synthesizer): nothing to project or
            # train; zeros, which XLA folds away, stand in for the queries and keys.
            dtype = self.dtype or jnp.result_type(inputs_q, self.param_dtype)
            query = jnp.zeros((*inputs_q.shape[:2], num_heads, head_dim), dtype)
            key = jnp.zeros((*inputs_kv.shape[:2], num_kv_heads, head_dim), dtype)
        elif core.shares_qk:
            # Reformer's shared-QK attention: the keys are the queries, no key projection.
            if num_kv_heads != num_heads or not self_attention:
                raise ValueError(
                    "shared_qk needs self-attention with num_kv_heads == num_heads, got "
                    f"num_heads={num_heads}, num_kv_heads={num_kv_heads}"
                )
            query = self._projection(num_heads, head_dim, "query")(inputs_q)
            key = query
        else:
            query = self._projection(num_heads, head_dim, "query")(inputs_q)
            key = self._projection(num_kv_heads, head_dim, "key")(inputs_kv)
        value = self._projection(num_kv_heads, head_dim, "value")(inputs_kv)
        projections = {
            name: self._projection(num_heads if like == "query" else num_kv_heads, head_dim, name)(
                inputs_q if like == "query" else inputs_kv
            )
            for name, like in core.extra_projections().items()
        }

        out = core(
            query,
            key,
            value,
            padding_mask=padding_mask,
            global_mask=global_mask,
            is_causal=self.is_causal,
            deterministic=deterministic,
            decode=self.decode,
            projections=projections,
        )
        if self.dropout_rate > 0.0 and not deterministic:
            out = nn.Dropout(rate=self.dropout_rate)(out, deterministic=False)
        return self._dense(self.out_features or inputs_q.shape[-1], "out", axis=(-2, -1))(out)
