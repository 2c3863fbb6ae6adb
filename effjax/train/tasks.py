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

from effjax.data import listops, synthetic, text
from effjax.data.batching import ClassificationData
from effjax.models import EncoderConfig, EncoderForSequenceClassification
from effjax.models.encoder import check_input_length
from effjax.train.config import ExperimentConfig

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
    if data.tokenizer is not None:
        return len(text.load_tokenizer(data.tokenizer))
    return text.BYTE_VOCAB_SIZE


def check_inputs(config: ExperimentConfig) -> None:
    """Missing data files and size mismatches, found before anything is built.

    Raises:
      ValueError: the text dataset or tokenizer directory is missing, the model's
        vocabulary is smaller than the data's, its position table is shorter than the
        padded length, or the model config is not an EncoderConfig.
    """
    data, model = config.data, config.model
    if not isinstance(model, EncoderConfig):
        raise ValueError(f"config.model must be an effjax.models.EncoderConfig, got {type(model)}")
    if data.kind == "text":
        if data.path is None or not Path(data.path).expanduser().is_dir():
            raise ValueError(f"data.path={data.path!r}: the text dataset directory does not exist")
        if data.tokenizer is not None and not Path(data.tokenizer).expanduser().is_dir():
            raise ValueError(f"data.tokenizer={data.tokenizer!r}: directory does not exist")
    vocab = data_vocab_size(config)
    if model.vocab_size < vocab:
        raise ValueError(
            f"model.vocab_size={model.vocab_size} is smaller than the data's vocabulary ({vocab})"
        )
    longest = max(data.boundaries) if data.boundaries else data.max_length
    check_input_length(longest, model, holder="inputs pad to")


def build_model(config: ExperimentConfig) -> EncoderForSequenceClassification:
    """The encoder classifier of ``config.model`` with ``config.num_classes`` outputs."""
    return EncoderForSequenceClassification(config.model, num_labels=config.num_classes)


def _listops_splits(config: ExperimentConfig) -> dict:
    cache = Path(config.data.cache_dir).expanduser()
    dataset = listops.load_listops(config.data.listops, cache)
    return {
        split: (
            [[LISTOPS_CLS_ID, *ids] for ids in dataset[split]["input_ids"]],
            dataset[split]["label"],
        )
        for split in listops.SPLITS
    }


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


def build_data(config: ExperimentConfig) -> ClassificationData:
    """Batches for ``config`` (see :func:`check_inputs` for the errors raised first)."""
    check_inputs(config)
    builders = {
        "listops": _listops_splits,
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
