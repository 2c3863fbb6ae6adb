import jax.numpy as jnp
import numpy as np
import pytest

from effjax.attention import masks


def test_window_mask_by_hand():
    np.testing.assert_array_equal(
        masks.window_mask(5, 5, (1, 2)).astype(int),
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]],
    )


def test_int_window_is_symmetric_and_causal_drops_right():
    np.testing.assert_array_equal(masks.window_mask(6, 6, 2), masks.window_mask(6, 6, (2, 2)))
    np.testing.assert_array_equal(
        masks.window_mask(6, 6, 2, is_causal=True),
        masks.window_mask(6, 6, (2, 0)),
    )


def test_dilated_window_skips_keys():
    row = np.asarray(masks.window_mask(9, 9, (2, 1), dilation=2))[4]
    np.testing.assert_array_equal(np.flatnonzero(row), [0, 2, 4, 6])


def test_window_is_bottom_right_aligned():
    # One query against five keys sits at position 4.
    np.testing.assert_array_equal(np.flatnonzero(masks.window_mask(1, 5, (1, 0))[0]), [3, 4])


@pytest.mark.parametrize("bad", [-1, (2, -1), (1, 2, 3), "3"])
def test_bad_window_raises(bad):
    with pytest.raises(ValueError, match="window_size"):
        masks.normalize_window(bad)


def test_global_tokens_mask():
    g = jnp.array([[True, False, False]])
    np.testing.assert_array_equal(
        masks.global_tokens_mask(g)[0, 0].astype(int), [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    )


def test_block_tables_expand():
    table = jnp.array([[0, -1], [0, 1]])  # query block 0 sees key block 0; block 1 sees 0 and 1
    block = masks.block_indices_to_block_mask(table, 2)
    np.testing.assert_array_equal(block, [[True, False], [True, True]])
    dense = masks.block_mask_to_dense(block, 2, 3, 3)
    np.testing.assert_array_equal(dense.astype(int), [[1, 1, 0], [1, 1, 0], [1, 1, 1]])


def test_combine_skips_none():
    assert masks.combine(None, None) is None
    a = jnp.array([True, False, True])
    np.testing.assert_array_equal(masks.combine(a, None, jnp.array([True, True, False])), [1, 0, 0])
