"""ListOps: the evaluator on hand-written expressions and the generator's LRA properties."""

import dataclasses

import numpy as np
import pytest

from effjax.data import listops
from effjax.data.listops import ListOpsSpec, depth, evaluate, tokenize


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("7", 7),
        ("[MIN 4 2 9 ]", 2),
        ("[MAX 4 2 9 ]", 9),
        ("[SM 4 2 9 ]", 5),  # 15 mod 10
        ("[MED 4 2 9 1 ]", 3),  # median 3.0
        ("[MED 1 2 ]", 1),  # int(1.5)
        ("[MED 8 3 5 ]", 5),
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[SM [MAX 2 9 ] [MIN 4 7 ] [MED 1 1 8 ] 3 ]", 7),  # 9 + 4 + 1 + 3 = 17
        ("[MIN [SM 9 9 ] [MAX [MED 3 6 ] [SM 5 5 ] ] ]", 4),  # min(8, max(4, 0))
    ],
)
def test_evaluator_on_hand_written_expressions(source, value):
    assert evaluate(tokenize(source)) == value


@pytest.mark.parametrize("source", ["[MIN 1 2", "]", "[MAX ]", "[SM 1 2 ] 3"])
def test_evaluator_rejects_malformed(source):
    with pytest.raises(ValueError):
        evaluate(tokenize(source))


def test_tokenize_rejects_unknown_token():
    with pytest.raises(ValueError, match="unknown ListOps token"):
        tokenize("[MAX 1 ( 2 ]")


def test_evaluator_ignores_padding():
    ids = tokenize("[MAX 2 9 [MIN 4 7 ] 0 ]") + [listops.PAD_ID] * 5
    assert evaluate(ids) == 9


def _arg_counts(ids):
    """Number of direct arguments of every operator, by a stack."""
    stack, counts = [], []
    for token in (listops.VOCAB[i] for i in ids):
        if stack and token != listops.CLOSE:
            stack[-1] += 1
        if token in listops.OPERATORS:
            stack.append(0)
        elif token == listops.CLOSE:
            counts.append(stack.pop())
    return counts


def test_generator_properties():
    spec = ListOpsSpec(min_length=30, max_length=120, max_depth=4, max_args=5, seed=3)
    samples = [s for _, s in zip(range(300), listops.generate_expressions(spec), strict=False)]
    sources = [source for source, _ in samples]
    assert len(set(sources)) == len(sources)  # duplicates removed
    seen_operators, depths = set(), []
    for source, label in samples:
        ids = tokenize(source)
        assert spec.min_length < len(ids) < spec.max_length
        assert label == evaluate(ids)
        assert 0 <= label < listops.NUM_CLASSES
        depths.append(depth(ids))
        counts = _arg_counts(ids)
        assert min(counts) >= 2 and max(counts) <= spec.max_args
        seen_operators |= {token for token in source.split() if token.startswith("[")}
    assert seen_operators == set(listops.OPERATORS)
    assert max(depths) == spec.max_depth  # the limit is reached and never exceeded
    labels = np.bincount([label for _, label in samples], minlength=10)
    assert (labels > 0).sum() >= 8  # many classes occur, not a degenerate task


def test_generator_is_deterministic_per_seed():
    spec = ListOpsSpec(min_length=10, max_length=60, max_depth=3)
    first = [s for _, s in zip(range(20), listops.generate_expressions(spec), strict=False)]
    again = [s for _, s in zip(range(20), listops.generate_expressions(spec), strict=False)]
    other = listops.generate_expressions(dataclasses.replace(spec, seed=1))
    assert first == again
    assert first != [s for _, s in zip(range(20), other, strict=False)]


def test_lra_default_lengths():
    spec = ListOpsSpec(num_train=3)
    source, label = next(listops.generate_expressions(spec))
    ids = tokenize(source)
    assert 500 < len(ids) < 2000 and depth(ids) <= 10 and evaluate(ids) == label


def test_load_listops_caches_disjoint_splits(tmp_path):
    spec = ListOpsSpec(
        min_length=10, max_length=40, max_depth=3, num_train=20, num_validation=5, num_test=5
    )
    data = listops.load_listops(spec, tmp_path)
    assert {split: len(data[split]) for split in listops.SPLITS} == spec.split_sizes()
    sources = [s for split in listops.SPLITS for s in data[split]["source"]]
    assert len(set(sources)) == len(sources)  # no expression in two splits
    for row in data["test"]:
        assert row["label"] == evaluate(row["input_ids"])
    cached = listops.load_listops(spec, tmp_path)  # from disk this time
    assert cached["train"]["source"] == data["train"]["source"]
    assert [p.name for p in tmp_path.iterdir()] == [f"listops-{spec.fingerprint()}"]
