"""Padding, bucketing and the (seed, step) batch order."""

import numpy as np
import pytest

from effjax.data.batching import BatchOrder, ClassificationData, bucket_length, pad_batch


def test_pad_batch_values_and_mask():
    tokens, mask = pad_batch([[3, 4], [5, 6, 7], []], length=4, pad_id=9)
    np.testing.assert_array_equal(tokens, [[3, 4, 9, 9], [5, 6, 7, 9], [9, 9, 9, 9]])
    np.testing.assert_array_equal(mask.sum(1), [2, 3, 0])
    with pytest.raises(ValueError, match="more than length=2"):
        pad_batch([[1, 2, 3]], length=2)


def test_bucket_length():
    assert [bucket_length(n, [8, 16, 32]) for n in (1, 8, 9, 32)] == [8, 8, 16, 32]
    with pytest.raises(ValueError, match="exceeds the largest"):
        bucket_length(33, [8, 16, 32])


def test_batch_order_is_a_function_of_seed_and_step():
    lengths = np.arange(1, 41)
    order = BatchOrder(lengths, batch_size=4, seed=7)
    again = BatchOrder(lengths, batch_size=4, seed=7)
    steps = [13, 2, 25, 0]  # any order of queries gives the same batches
    for step in steps:
        np.testing.assert_array_equal(order.indices(step), again.indices(step))
    epoch = np.concatenate([order.indices(s) for s in range(order.batches_per_epoch)])
    assert sorted(epoch.tolist()) == list(range(40))  # each example once per epoch
    next_epoch = np.concatenate([order.indices(s) for s in range(10, 20)])
    assert next_epoch.tolist() != epoch.tolist()  # reshuffled
    other = BatchOrder(lengths, batch_size=4, seed=8)
    assert other.indices(0).tolist() != order.indices(0).tolist()


def test_buckets_group_similar_lengths():
    lengths = [3, 30, 5, 28, 7, 31, 2, 25]
    order = BatchOrder(lengths, batch_size=2, seed=0, boundaries=[8, 32])
    for step in range(order.batches_per_epoch):
        members = np.asarray(lengths)[order.indices(step)]
        assert (members <= 8).all() or (members > 8).all()


def test_classification_data_batches():
    splits = {
        "train": ([[1, 2], [3], [4, 5, 6], [7]], [0, 1, 2, 3]),
        "test": ([[1], [2, 3], [4]], [5, 6, 7]),
    }
    data = ClassificationData(splits, batch_size=2, seed=0, max_length=5)
    batch = data.train_batch(0)
    for row, label in zip(batch["inputs"], batch["labels"], strict=True):
        index = splits["train"][1].index(label)
        assert row[: len(splits["train"][0][index])].tolist() == splits["train"][0][index]
    assert batch["inputs"].shape == (2, 5)
    tests = list(data.eval_batches("test"))
    assert [b["labels"].tolist() for b in tests] == [[5, 6], [7]]
    assert tests[0]["padding_mask"].sum() == 3
