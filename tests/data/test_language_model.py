import itertools

import numpy as np
import pytest

from effjax.data import LanguageModelData, repeated_blocks


def test_consecutive_batches_are_consecutive_text_in_every_row():
    stream = np.arange(2 * 13)  # rows [0, 13) and [13, 26): 4 segments of 3 (+1 target)
    data = LanguageModelData({"train": stream}, batch_size=2, segment_length=3)
    assert data.num_segments("train") == 4
    batches = [data.train_batch(step) for step in range(5)]
    np.testing.assert_array_equal(batches[0]["inputs"], [[0, 1, 2], [13, 14, 15]])
    for before, after in itertools.pairwise(batches[:4]):
        np.testing.assert_array_equal(after["inputs"][:, 0], before["targets"][:, -1])
        np.testing.assert_array_equal(before["targets"][:, :-1], before["inputs"][:, 1:])
    np.testing.assert_array_equal(batches[4]["inputs"], batches[0]["inputs"])  # wraps
    assert batches[0]["padding_mask"].all()


def test_eval_batches_are_in_order_and_limited_in_rows():
    data = LanguageModelData(
        {"train": np.arange(40), "validation": np.arange(100, 140)}, batch_size=2, segment_length=4
    )
    segments = list(data.eval_batches("validation"))
    assert len(segments) == 4 and segments[1]["inputs"][0].tolist() == [104, 105, 106, 107]
    assert len(list(data.eval_batches("validation", limit=5))) == 2  # 5 rows -> 2 segments
    assert len(list(data.eval_batches("validation", limit=1))) == 1


def test_too_short_stream_names_the_split():
    with pytest.raises(ValueError, match="split 'validation' has 5 tokens"):
        LanguageModelData(
            {"train": np.arange(40), "validation": np.arange(5)}, batch_size=2, segment_length=4
        )


def test_repeated_blocks_repeat_one_period_back_within_a_block():
    period, repeats = 5, 3
    stream = repeated_blocks(100, period=period, repeats=repeats, vocab_size=7, seed=1)
    assert stream.shape == (100,) and stream.min() >= 1 and stream.max() <= 6
    position = np.arange(100)
    repeat = position % (period * repeats) >= period  # not the block's first copy
    back = np.roll(stream, period)
    assert (stream[repeat] == back[repeat]).all()
    assert (stream[~repeat][period:] != back[~repeat][period:]).any()  # new blocks differ
