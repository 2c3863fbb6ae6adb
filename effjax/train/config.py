"""Experiment configurations: plain frozen dataclasses, loaded from Python files by path.

A config file (``configs/smoke.py``, or a config shipped in :mod:`effjax.configs` and
named by its module name, ``smoke``) builds an :class:`ExperimentConfig` and names it
``config`` (or defines ``get_config()`` returning one)::

    from effjax.train.config import DataConfig, ExperimentConfig, OptimizerConfig, RunConfig
    config = ExperimentConfig(name="smoke", data=DataConfig(kind="listops", ...), ...)

A misspelt field fails when the file is loaded, with the class, the field and the
known fields in the message (:func:`load_config`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.machinery
import importlib.resources
import importlib.util
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from effjax.data.listops import ListOpsSpec

DATA_KINDS = (
    "listops",
    "listops_bytes",
    "associative_recall",
    "text",
    "repeated_blocks",
    "text_lm",
)
#: Kinds trained as language models (a DecoderConfig model, consecutive segments).
LM_DATA_KINDS = ("repeated_blocks", "text_lm")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the model is trained on.

    Attributes:
      kind: ``"listops"`` (generated, ``listops`` spec), ``"listops_bytes"`` (the same
        expressions as UTF-8 bytes of their source text, ``"[MAX 4 3 ]"``, for byte-level
        models such as Charformer's GBST encoder), ``"associative_recall"``
        (generated, ``recall_*``), or ``"text"`` (byte or tokenizer classification of
        local files under ``path``); language modelling over consecutive segments
        (effjax.data.LanguageModelData; the model is a ``DecoderConfig``):
        ``"repeated_blocks"`` (generated, ``repeat_*``: random blocks each written
        several times, effjax.data.repeated_blocks) or ``"text_lm"`` (the bytes of
        ``path/<split>.txt`` for the splits train, validation and test).
      listops: the ListOps generator's spec (kinds "listops" and "listops_bytes").
      cache_dir: where generated datasets are cached (``datasets.save_to_disk``).
      path: root of a text dataset: one sub-directory per split holding one
        sub-directory per class (kind "text").
      tokenizer: a local directory with a transformers tokenizer (kind "text");
        None reads bytes.
      max_length: padded length of every batch when ``boundaries`` is None; longer
        text is truncated. Language modelling: the segment length.
      boundaries: length buckets (batches pad to their bucket's boundary).
      recall_pairs, recall_vocab, recall_examples: associative recall's size.
      repeat_period, repeat_count, repeat_vocab, repeat_tokens: the repeated blocks'
        length, copies, vocabulary (ids ``1..repeat_vocab-1``) and tokens per split
        (train, validation, test).
    """

    kind: str = "listops"
    listops: ListOpsSpec = dataclasses.field(default_factory=ListOpsSpec)
    cache_dir: str = "~/.cache/effjax/data"
    path: str | None = None
    tokenizer: str | None = None
    max_length: int = 2048
    boundaries: tuple[int, ...] | None = None
    recall_pairs: int = 16
    recall_vocab: int = 16
    recall_examples: tuple[int, int, int] = (4096, 512, 512)
    repeat_period: int = 32
    repeat_count: int = 4
    repeat_vocab: int = 16
    repeat_tokens: tuple[int, int, int] = (65536, 8192, 8192)

    def __post_init__(self):
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data.kind={self.kind!r} is not one of {DATA_KINDS}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up then cosine, linear or no decay (optax).

    Attributes:
      learning_rate: peak learning rate.
      warmup_steps: linear warm-up from 0.
      decay: ``"cosine"``, ``"linear"`` or ``"constant"`` after warm-up.
      decay_steps: length of warm-up plus decay; None means the run's ``num_steps``.
      end_fraction: final learning rate as a fraction of the peak.
      weight_decay, b1, b2: AdamW's.
      grad_clip: global gradient-norm clip (None: no clipping).
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 100
    decay: str = "cosine"
    decay_steps: int | None = None
    end_fraction: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    grad_clip: float | None = 1.0

    def __post_init__(self):
        if self.decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"optimizer.decay={self.decay!r}: use cosine, linear or constant")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How long, how often, and on which devices.

    Attributes:
      seed: seeds initialisation, the batch order and every step's random key.
      batch_size: global batch size.
      num_steps: training steps (the command's ``--steps`` overrides it).
      log_every, eval_every, checkpoint_every: intervals in steps.
      eval_examples: examples of the validation split per evaluation (None: all).
      max_checkpoints: checkpoints kept.
      mesh_data, mesh_model, mesh_expert: device mesh shape (``mesh_data=-1``: all
        remaining devices); Switch experts are split over the ``"expert"`` axis.
      sharding: ``"data"`` (replicated parameters), ``"tensor"`` (parameters sharded
        over the model axis) or ``"sequence"`` (tensor + the batch's length axis).
      progress: show a progress bar.

    Per-step upkeep of attention variants (Performer's feature redraw) is configured in
    the model's attention options (``redraw_interval``), not here.
    """

    seed: int = 0
    batch_size: int = 32
    num_steps: int = 1000
    log_every: int = 50
    eval_every: int = 500
    eval_examples: int | None = None
    checkpoint_every: int = 200
    max_checkpoints: int = 3
    mesh_data: int = -1
    mesh_model: int = 1
    mesh_expert: int = 1
    sharding: str = "data"
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data, model, optimizer and run settings.

    ``model`` is a model configuration dataclass (``effjax.models.EncoderConfig``).
    """

    name: str
    data: DataConfig
    model: Any
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    num_classes: int = 10

    def replace(self, **changes) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def with_steps(self, num_steps: int | None) -> ExperimentConfig:
        """The config with ``run.num_steps`` overridden (``--steps``)."""
        if num_steps is None:
            return self
        return self.replace(run=dataclasses.replace(self.run, num_steps=num_steps))


#: Fields that may change between a run and its resumption; everything else must match.
RESUMABLE_CHANGES = frozenset(
    {
        "run.num_steps",
        "run.log_every",
        "run.eval_every",
        "run.eval_examples",
        "run.progress",
        "run.checkpoint_every",
        "run.max_checkpoints",
        "run.mesh_data",
        "run.mesh_model",
        "run.mesh_expert",
        "run.sharding",
        "name",
    }
)


def to_json(value: Any) -> Any:
    """A config as JSON-compatible nested dicts (dataclasses, mappings, tuples)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__class__": type(value).__name__, **fields}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def incompatibilities(saved: Mapping[str, Any], config: ExperimentConfig) -> list[str]:
    """Fields in which ``config`` differs from a saved run's config, as readable lines.

    ``decay_steps`` is compared resolved: a run whose schedule length changes cannot
    resume the old schedule.
    """
    old = _flatten(json.loads(json.dumps(saved)))
    new = _flatten(json.loads(json.dumps(to_json(config))))
    for flat, source in ((old, saved), (new, None)):
        if flat.get("optimizer.decay_steps") is None:
            steps = source["run"]["num_steps"] if source else config.run.num_steps
            flat["optimizer.decay_steps"] = steps
    keys = sorted(set(old) | set(new))
    return [
        f"{key}: checkpoint has {old.get(key)!r}, config has {new.get(key)!r}"
        for key in keys
        if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key)
    ]


_UNEXPECTED = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")


def _explain_type_error(error: TypeError, path: Path) -> str:
    match = _UNEXPECTED.search(str(error))
    if match is None:
        return f"config {path}: {error}"
    cls_name, field = match.groups()
    known = {
        cls.__name__: cls
        for cls in (ExperimentConfig, DataConfig, OptimizerConfig, RunConfig, ListOpsSpec)
    }
    names = [f.name for f in dataclasses.fields(known[cls_name])] if cls_name in known else []
    listing = f"; known fields: {', '.join(names)}" if names else ""
    return f"config {path}: unknown field {field!r} in {cls_name}{listing}"


def packaged_configs() -> dict[str, str]:
    """The example configs shipped in ``effjax.configs``: name -> first line of its docstring.

    Example:
      >>> sorted(packaged_configs())
      ['listops', 'smoke']
    """
    folder = importlib.resources.files("effjax.configs")
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".py") and not entry.name.startswith("_"):
            source = entry.read_text()
            summary = ast.get_docstring(ast.parse(source)) or ""
            found[entry.name.removesuffix(".py")] = summary.split("\n", 1)[0]
    return found


def resolve_config(name_or_path: str | Path) -> Path:
    """The file of a config given by path (``configs/smoke.py``) or packaged name (``smoke``).

    An existing file wins over a packaged name.

    Raises:
      ValueError: neither a file nor a packaged config name.

    Example:
      >>> resolve_config("smoke").name
      'smoke.py'
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if name in packaged_configs():
        return Path(str(importlib.resources.files("effjax.configs") / f"{name}.py"))
    raise ValueError(
        f"config {name!r} does not exist: it is neither a file nor a packaged config "
        f"(packaged: {', '.join(packaged_configs())})"
    )


def load_config(path: str | Path) -> ExperimentConfig:
    """Runs a config file (or a packaged config, by name) and returns its ``config``.

    The file defines ``config`` (an :class:`ExperimentConfig`) or ``get_config()``
    returning one. ``path`` is a file path or the name of a packaged config
    (:func:`packaged_configs`).

    Raises:
      ValueError: the file is missing, has an unknown or invalid field, or does not
        define an ExperimentConfig.

    Example:
      >>> cfg = load_config("smoke")
      >>> cfg.name, cfg.run.num_steps
      ('smoke', 150)
    """
    path = resolve_config(path)
    # An explicit loader also runs a file named without .py.
    loader = importlib.machinery.SourceFileLoader(f"_effjax_config_{path.stem}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config() if hasattr(module, "get_config") else module.config
    except TypeError as error:
        raise ValueError(_explain_type_error(error, path)) from error
    except ValueError as error:
        raise ValueError(f"config {path}: {error}") from error
    except AttributeError as error:
        if "config" not in str(error):
            raise
        raise ValueError(f"config {path} defines neither `config` nor `get_config()`") from None
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"config {path}: expected an ExperimentConfig, got {type(config)}")
    return config
