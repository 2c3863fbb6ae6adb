"""Synthetic long-range tasks: associative recall, copy, and Reformer's duplication task.

All generators are host-side numpy with an explicit seed (data, not model randomness)
and return fixed-length int32 arrays.

* Associative recall (Ba et al. 2016; Zoology, Arora et al. 2023): ``k1 v1 ... kn vn
  SEP q`` -> the value paired with key ``q``. The answer may sit anywhere in the
  context, so a model must carry information across the whole sequence.
* Copy: ``x SEP x`` as language modelling, loss on the second ``x``.
* Duplication (Kitaev et al. 2020, Reformer §5): ``0 w 0 w`` with ``w`` drawn from
  symbols ``1..V-1``; loss on the second ``w``.

Example:
  >>> from effjax.data.synthetic import associative_recall
  >>> tokens, labels = associative_recall(4, num_pairs=3, num_keys=5, num_values=4, seed=0)
  >>> tokens.shape, labels.shape
  ((4, 8), (4,))
"""

from __future__ import annotations

import numpy as np

PAD_ID = 0


def recall_vocab_size(num_keys: int, num_values: int) -> int:
    """Tokens used by :func:`associative_recall`: pad, keys, values, separator."""
    return 1 + num_keys + num_values + 1


def associative_recall(
    num_examples: int, *, num_pairs: int, num_keys: int, num_values: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Associative recall examples.

    Token ids: 0 pad, keys ``1..num_keys``, values ``num_keys+1..num_keys+num_values``,
    separator ``num_keys+num_values+1``. Keys within an example are distinct.

    Returns:
      ``tokens int32 [num_examples, 2 * num_pairs + 2]`` and ``labels int32
      [num_examples]`` (the queried value, in ``0..num_values-1``).

    Raises:
      ValueError: ``num_pairs > num_keys`` (keys could not be distinct).
    """
    if num_pairs > num_keys:
        raise ValueError(f"num_pairs={num_pairs} needs num_keys >= num_pairs, got {num_keys}")
    rng = np.random.default_rng(seed)
    keys = np.argsort(rng.random((num_examples, num_keys)), axis=1)[:, :num_pairs] + 1
    values = rng.integers(num_values, size=(num_examples, num_pairs))
    tokens = np.empty((num_examples, 2 * num_pairs + 2), dtype=np.int32)
    tokens[:, 0 : 2 * num_pairs : 2] = keys
    tokens[:, 1 : 2 * num_pairs : 2] = values + num_keys + 1
    tokens[:, -2] = num_keys + num_values + 1
    queried = rng.integers(num_pairs, size=num_examples)
    rows = np.arange(num_examples)
    tokens[:, -1] = keys[rows, queried]
    return tokens, values[rows, queried].astype(np.int32)


def _repeat_task(half: np.ndarray) -> dict[str, np.ndarray]:
    """``[half, half]`` as next-token prediction with the loss on the second half."""
    length = half.shape[1]
    sequence = np.concatenate([half, half], axis=1).astype(np.int32)
    loss_mask = np.zeros((half.shape[0], 2 * length - 1), dtype=bool)
    loss_mask[:, length - 1 :] = True  # targets[j] = sequence[j + 1]
    return {"inputs": sequence[:, :-1], "targets": sequence[:, 1:], "loss_mask": loss_mask}


def copy_task(
    num_examples: int, *, length: int, vocab_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Copy: ``x SEP x SEP`` with ``x`` over symbols ``1..vocab_size-2``, SEP ``vocab_size-1``.

    Returns:
      ``inputs``, ``targets`` int32 ``[num_examples, 2 * length + 1]`` (targets are the
      sequence shifted by one) and ``loss_mask`` bool, True where the target lies in
      the repeated half.
    """
    rng = np.random.default_rng(seed)
    half = rng.integers(1, vocab_size - 1, size=(num_examples, length + 1))
    half[:, -1] = vocab_size - 1
    return _repeat_task(half)


def duplication_task(
    num_examples: int, *, length: int, vocab_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Reformer's duplication task ``0 w 0 w``, ``w`` over symbols ``1..vocab_size-1``.

    Returns:
      As :func:`copy_task`, for sequences ``[0, w, 0, w]`` of ``2 * length + 2`` tokens.
    """
    rng = np.random.default_rng(seed)
    half = rng.integers(1, vocab_size, size=(num_examples, length + 1))
    half[:, 0] = 0
    return _repeat_task(half)
