"""Synthetic tasks: the answers are where the definitions put them."""

import numpy as np
import pytest

from effjax.data import synthetic


def test_associative_recall_label_is_the_queried_value():
    tokens, labels = synthetic.associative_recall(50, num_pairs=6, num_keys=8, num_values=5, seed=1)
    assert tokens.shape == (50, 14)
    for row, label in zip(tokens, labels, strict=True):
        keys, values = row[0:12:2], row[1:12:2]
        assert len(set(keys.tolist())) == 6 and keys.min() >= 1 and keys.max() <= 8
        assert row[12] == 8 + 5 + 1  # separator
        (position,) = np.flatnonzero(keys == row[13])
        assert values[position] - 9 == label
    assert tokens.max() < synthetic.recall_vocab_size(8, 5)
    assert len(set(labels.tolist())) == 5
    with pytest.raises(ValueError, match="num_pairs=9"):
        synthetic.associative_recall(1, num_pairs=9, num_keys=8, num_values=2, seed=0)


@pytest.mark.parametrize("task", [synthetic.copy_task, synthetic.duplication_task])
def test_repeat_tasks_targets_repeat_the_first_half(task):
    data = task(4, length=5, vocab_size=7, seed=0)
    sequence = np.concatenate([data["inputs"], data["targets"][:, -1:]], axis=1)
    assert sequence.shape == (4, 12)
    np.testing.assert_array_equal(sequence[:, :6], sequence[:, 6:])
    np.testing.assert_array_equal(data["targets"][:, :-1], data["inputs"][:, 1:])
    # The loss covers exactly the targets in the second half.
    assert data["targets"][data["loss_mask"]].size == 4 * 6
    np.testing.assert_array_equal(data["targets"][data["loss_mask"]].reshape(4, 6), sequence[:, 6:])


def test_duplication_is_0w0w_and_copy_has_separator():
    dup = synthetic.duplication_task(3, length=4, vocab_size=5, seed=2)
    assert (dup["inputs"][:, 0] == 0).all() and (dup["inputs"][:, 5] == 0).all()
    assert (dup["inputs"][:, 1:5] >= 1).all()
    copy = synthetic.copy_task(3, length=4, vocab_size=6, seed=2)
    assert (copy["inputs"][:, 4] == 5).all() and (copy["inputs"][:, :4] <= 4).all()
