"""Synthetic tasks: the answers are where the definitions put them."""

import itertools

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


def _check_mqar_row(inputs, targets, loss_mask, num_pairs, vocab_size):
    """Checks one MQAR row against the task's definition with plain Python."""
    first_value = vocab_size // 2
    pairs = {int(inputs[2 * i]): int(inputs[2 * i + 1]) for i in range(num_pairs)}
    assert len(pairs) == num_pairs  # distinct keys
    assert all(1 <= k < first_value <= v < vocab_size for k, v in pairs.items())
    queries = [int(p) for p in np.flatnonzero(loss_mask)]
    # Every key is queried exactly once, after the pairs, and answered with its value.
    assert sorted(int(inputs[p]) for p in queries) == sorted(pairs)
    assert all(p >= 2 * num_pairs for p in queries)
    assert all(int(targets[p]) == pairs[int(inputs[p])] for p in queries)
    # No query slot touches another: each query is followed by filler, never a query.
    assert all(b - a >= 2 for a, b in itertools.pairwise(queries))
    assert all(p + 1 == len(inputs) or inputs[p + 1] == 0 for p in queries)
    rest = np.ones(len(inputs), dtype=bool)
    rest[: 2 * num_pairs] = False
    rest[queries] = False
    assert (inputs[rest] == 0).all() and (targets[~loss_mask] == 0).all()


@pytest.mark.parametrize(
    ("seq_len", "num_pairs", "vocab_size"),
    [(16, 4, 12), (64, 16, 40), (33, 8, 64)],  # (64, 16): every slot is taken
)
def test_multi_query_recall_matches_its_definition(seq_len, num_pairs, vocab_size):
    batch = synthetic.multi_query_recall(
        200, seq_len=seq_len, num_pairs=num_pairs, vocab_size=vocab_size, seed=3
    )
    assert batch["inputs"].shape == batch["targets"].shape == (200, seq_len)
    assert batch["inputs"].dtype == np.int32 and batch["loss_mask"].dtype == bool
    assert (batch["loss_mask"].sum(axis=1) == num_pairs).all()
    for row in zip(batch["inputs"], batch["targets"], batch["loss_mask"], strict=True):
        _check_mqar_row(*row, num_pairs, vocab_size)


def test_multi_query_recall_spreads_queries_and_is_seeded():
    def draw(seed):
        return synthetic.multi_query_recall(2000, seq_len=64, num_pairs=4, vocab_size=32, seed=seed)

    a, b, c = draw(0), draw(0), draw(1)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert (a["inputs"] != c["inputs"]).any()
    # Zoology's power law (exponent a - 1 = -0.99): near slots are more likely than far
    # ones, yet every one of the 28 slots is used somewhere.
    slots = (np.nonzero(a["loss_mask"])[1] - 8) // 2
    counts = np.bincount(slots, minlength=28)
    assert counts.min() > 0 and counts[0] > 3 * counts[-1]


def test_multi_query_recall_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="seq_len=15 must be at least 4 \\* num_pairs=16"):
        synthetic.multi_query_recall(1, seq_len=15, num_pairs=4, vocab_size=64, seed=0)
    with pytest.raises(ValueError, match="vocab_size=8 has 3 keys"):
        synthetic.multi_query_recall(1, seq_len=64, num_pairs=4, vocab_size=8, seed=0)
