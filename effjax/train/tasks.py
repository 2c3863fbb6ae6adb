"""From an experiment config to the model and data the loop trains.

Example (``build_data`` is skipped: it generates ListOps into ``data.cache_dir``):
  >>> from effjax.train.config import load_config
  >>> config = load_config("smoke")
  >>> build_model(config).num_labels
  10
  >>> data = build_data(config)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import numpy as np

from effjax.data import listops, synthetic, text
from effjax.data.batching import ClassificationData
from effjax.data.language_model import LanguageModelData
from effjax.models import DecoderConfig, DecoderLM, EncoderConfig, EncoderForSequenceClassification
from effjax.models.encoder import check_input_length
from effjax.train.config import LM_DATA_KINDS, ExperimentConfig
from effjax.train.loop import LossFn, classification_loss, language_model_loss

#: ListOps inputs start with a classification token after the ListOps vocabulary.
LISTOPS_CLS_ID = len(listops.VOCAB)
LISTOPS_VOCAB_SIZE = LISTOPS_CLS_ID + 1


def data_vocab_size(config: ExperimentConfig) -> int:
    """Token ids the data can produce (exclusive bound)."""
    data = config.data
    if data.kind == "listops":
        return LISTOPS_VOCAB_SIZE
    if data.kind == "associative_recall":
        return synthetic.recall_vocab_size(data.recall_pairs, data.recall_vocab)
    if data.kind == "repeated_blocks":
        return data.repeat_vocab
    if data.tokenizer is not None:
        return len(text.load_tokenizer(data.tokenizer))
    return text.BYTE_VOCAB_SIZE


def check_inputs(config: ExperimentConfig) -> None:
    """Missing data files and size mismatches, found before anything is built.

    Raises:
      ValueError: the text dataset or tokenizer directory is missing, the model's
        vocabulary is smaller than the data's, its position table is shorter than the
        padded length (the segment length for language modelling), or the model config
        is not an EncoderConfig (a DecoderConfig for language modelling).
    """
    data, model = config.data, config.model
    want = DecoderConfig if data.kind in LM_DATA_KINDS else EncoderConfig
    if not isinstance(model, want):
        raise ValueError(
            f"data.kind={data.kind!r} trains an effjax.models.{want.__name__}; config.model "
            f"is a {type(model).__name__}"
        )
    if data.kind in ("text", "text_lm"):
        if data.path is None or not Path(data.path).expanduser().is_dir():
            raise ValueError(f"data.path={data.path!r}: the text dataset directory does not exist")
        if data.tokenizer is not None and not Path(data.tokenizer).expanduser().is_dir():
            raise ValueError(f"data.tokenizer={data.tokenizer!r}: directory does not exist")
    if data.kind == "text_lm":
        _check_text_lm(data)
    vocab = data_vocab_size(config)
    if model.vocab_size < vocab:
        raise ValueError(
            f"model.vocab_size={model.vocab_size} is smaller than the data's vocabulary ({vocab})"
        )
    longest = max(data.boundaries) if data.boundaries else data.max_length
    check_input_length(longest, model, holder="inputs pad to")


def _check_text_lm(data) -> None:
    if data.tokenizer is not None:
        raise ValueError(f"data.kind='text_lm' reads bytes; data.tokenizer={data.tokenizer!r}")
    missing = [s for s in ("train", "validation") if not _text_file(data, s).is_file()]
    if missing:
        raise ValueError(
            f"data.path={data.path!r}: no {', '.join(f'{s}.txt' for s in missing)} "
            "(text_lm reads <split>.txt)"
        )


def _text_file(data, split: str) -> Path:
    return Path(data.path).expanduser() / f"{split}.txt"


def build_model(config: ExperimentConfig) -> nn.Module:
    """The encoder classifier of ``config.model`` with ``config.num_classes`` outputs, or
    for language modelling the :class:`~effjax.models.DecoderLM` of ``config.model``."""
    if config.data.kind in LM_DATA_KINDS:
        return DecoderLM(config.model)
    return EncoderForSequenceClassification(config.model, num_labels=config.num_classes)


def build_eval_model(config: ExperimentConfig) -> nn.Module:
    """The model evaluation runs: :func:`build_model`'s, with a decoder's
    ``eval_mem_len`` (``DecoderConfig.evaluation_config``) on the same parameters."""
    if config.data.kind in LM_DATA_KINDS:
        return DecoderLM(config.model.evaluation_config())
    return build_model(config)


def loss_for(config: ExperimentConfig) -> LossFn:
    """The training loss: next-token cross-entropy for language modelling, else the
    classification loss."""
    return language_model_loss if config.data.kind in LM_DATA_KINDS else classification_loss


def _listops(config: ExperimentConfig, encode) -> dict:
    """The generated ListOps splits with every expression's token ids ``encode``-d."""
    dataset = listops.load_listops(config.data.listops, Path(config.data.cache_dir).expanduser())
    return {
        split: ([encode(ids) for ids in dataset[split]["input_ids"]], dataset[split]["label"])
        for split in listops.SPLITS
    }


def _listops_splits(config: ExperimentConfig) -> dict:
    return _listops(config, lambda ids: [LISTOPS_CLS_ID, *ids])


def _listops_byte_splits(config: ExperimentConfig) -> dict:
    """ListOps as byte-level text: each expression's source, bytes + 1 (0 = padding)."""
    length = config.data.max_length
    return _listops(
        config, lambda ids: text.encode_bytes(listops.detokenize(ids), max_length=length)
    )


def _recall_splits(config: ExperimentConfig) -> dict:
    data = config.data
    splits = {}
    for offset, (split, count) in enumerate(zip(listops.SPLITS, data.recall_examples, strict=True)):
        tokens, labels = synthetic.associative_recall(
            count,
            num_pairs=data.recall_pairs,
            num_keys=data.recall_pairs,
            num_values=data.recall_vocab,
            seed=config.run.seed * 3 + offset,
        )
        splits[split] = (tokens.tolist(), labels.tolist())
    return splits


def _text_splits(config: ExperimentConfig) -> dict:
    data = config.data
    tokenizer = None if data.tokenizer is None else text.load_tokenizer(data.tokenizer)
    return text.load_text_classification(
        Path(data.path).expanduser(), max_length=data.max_length, tokenizer=tokenizer
    )


def _lm_streams(config: ExperimentConfig) -> dict[str, np.ndarray]:
    data = config.data
    if data.kind == "text_lm":
        files = {split: _text_file(data, split) for split in listops.SPLITS}
        return {
            # The file's bytes shifted by one, as text.encode_bytes (0 stays padding).
            split: np.frombuffer(path.read_bytes(), np.uint8).astype(np.int32) + 1
            for split, path in files.items()
            if path.is_file()
        }
    return {
        split: synthetic.repeated_blocks(
            count,
            period=data.repeat_period,
            repeats=data.repeat_count,
            vocab_size=data.repeat_vocab,
            seed=config.run.seed * 3 + offset,
        )
        for offset, (split, count) in enumerate(
            zip(listops.SPLITS, data.repeat_tokens, strict=True)
        )
    }


def build_data(config: ExperimentConfig) -> ClassificationData | LanguageModelData:
    """Batches for ``config`` (see :func:`check_inputs` for the errors raised first)."""
    check_inputs(config)
    if config.data.kind in LM_DATA_KINDS:
        return LanguageModelData(
            _lm_streams(config),
            batch_size=config.run.batch_size,
            segment_length=config.data.max_length,
        )
    builders = {
        "listops": _listops_splits,
        "listops_bytes": _listops_byte_splits,
        "associative_recall": _recall_splits,
        "text": _text_splits,
    }
    splits = builders[config.data.kind](config)
    return ClassificationData(
        splits,
        batch_size=config.run.batch_size,
        seed=config.run.seed,
        boundaries=config.data.boundaries,
        max_length=None if config.data.boundaries else config.data.max_length,
    )
