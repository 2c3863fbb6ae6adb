"""Padding with masks, length bucketing, and a batch order that is a function of (seed, step).

A resumable run must see the same batches after a restart, so nothing here keeps
iterator state: ``BatchOrder.indices(step)`` recomputes the epoch's permutation from
``(seed, epoch)`` with ``epoch = step // batches_per_epoch``.

Example:
  >>> from effjax.data.batching import BatchOrder, pad_batch
  >>> tokens, mask = pad_batch([[5, 6, 7], [8]], length=4)
  >>> tokens.tolist(), mask.tolist()
  ([[5, 6, 7, 0], [8, 0, 0, 0]], [[True, True, True, False], [True, False, False, False]])
  >>> order = BatchOrder(lengths=[3, 1, 2, 4], batch_size=2, seed=0)
  >>> sorted(int(i) for s in range(2) for i in order.indices(s))
  [0, 1, 2, 3]
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator, Sequence

import numpy as np


def pad_batch(
    sequences: Sequence[Sequence[int]], *, length: int | None = None, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token sequences into ``tokens int32 [B, L]`` and ``mask bool [B, L]``.

    ``L`` is ``length`` (default: the longest sequence). ``mask`` is True at real tokens.

    Raises:
      ValueError: a sequence is longer than ``length``.
    """
    longest = max((len(s) for s in sequences), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence has {longest} tokens, more than length={length}")
    tokens = np.full((len(sequences), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(sequences), length), dtype=bool)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = True
    return tokens, mask


def bucket_length(length: int, boundaries: Sequence[int]) -> int:
    """The smallest boundary >= ``length`` (the padded length of its bucket).

    Raises:
      ValueError: ``length`` exceeds the largest boundary.
    """
    position = bisect.bisect_left(boundaries, length)
    if position == len(boundaries):
        raise ValueError(f"length {length} exceeds the largest bucket boundary {boundaries[-1]}")
    return int(boundaries[position])


class BatchOrder:
    """Which examples form the batch of each training step, from ``(seed, step)`` alone.

    Each epoch shuffles the examples with ``numpy.random.default_rng((seed, epoch))``.
    With ``boundaries``, examples are grouped by the bucket of their length (so a batch
    pads to its bucket's boundary, not to the global maximum) and the batches of all
    buckets are shuffled together. Incomplete batches are dropped, so every batch has
    ``batch_size`` examples.

    Args:
      lengths: token count of every example.
      batch_size: examples per batch.
      seed: the run's seed.
      boundaries: sorted bucket boundaries; None puts everything in one bucket.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        boundaries: Sequence[int] | None = None,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.boundaries = None if boundaries is None else sorted(boundaries)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batches_per_epoch = len(self._epoch_batches(0))
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"no full batch of batch_size={batch_size} from {len(self.lengths)} examples"
            )

    def _buckets(self) -> list[np.ndarray]:
        if self.boundaries is None:
            return [np.arange(len(self.lengths))]
        keys = np.array([bucket_length(int(n), self.boundaries) for n in self.lengths])
        return [np.flatnonzero(keys == b) for b in self.boundaries]

    @functools.lru_cache(maxsize=2)  # noqa: B019 - two epochs live at a time, per instance
    def _epoch_batches(self, epoch: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng((self.seed, epoch))
        batches = []
        for members in self._buckets():
            members = rng.permutation(members)
            full = len(members) // self.batch_size * self.batch_size
            batches += list(members[:full].reshape(-1, self.batch_size))
        return tuple(batches[i] for i in rng.permutation(len(batches)))

    def indices(self, step: int) -> np.ndarray:
        """Example indices of the batch at ``step`` (int64 ``[batch_size]``)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        return self._epoch_batches(epoch)[position]

    def padded_length(self, indices: np.ndarray) -> int | None:
        """The bucket boundary this batch pads to (None without buckets: its longest)."""
        if self.boundaries is None:
            return None
        return bucket_length(int(self.lengths[indices].max()), self.boundaries)


class ClassificationData:
    """Token sequences with one label each, batched as ``{"inputs", "padding_mask", "labels"}``.

    Args:
      splits: ``{split: (sequences, labels)}``; must include ``"train"``.
      batch_size: examples per batch.
      seed: the run's seed (the batch order is a function of ``(seed, step)``).
      boundaries: bucket boundaries for length bucketing (None: pad each batch to
        ``max_length`` when given, else its longest sequence).
      max_length: fixed padded length when not bucketing.
      pad_id: the padding token.
    """

    def __init__(
        self,
        splits: dict[str, tuple[Sequence[Sequence[int]], Sequence[int]]],
        *,
        batch_size: int,
        seed: int,
        boundaries: Sequence[int] | None = None,
        max_length: int | None = None,
        pad_id: int = 0,
    ):
        if "train" not in splits:
            raise ValueError(f"splits must include 'train', got {sorted(splits)}")
        self.splits = splits
        self.batch_size = batch_size
        self.boundaries = boundaries
        self.max_length = max_length
        self.pad_id = pad_id
        sequences, _ = splits["train"]
        self.order = BatchOrder([len(s) for s in sequences], batch_size, seed, boundaries)

    def _batch(self, split: str, indices: Sequence[int], length: int | None) -> dict:
        sequences, labels = self.splits[split]
        tokens, mask = pad_batch([sequences[i] for i in indices], length=length, pad_id=self.pad_id)
        return {
            "inputs": tokens,
            "padding_mask": mask,
            "labels": np.asarray([labels[i] for i in indices], dtype=np.int32),
        }

    def _length_for(self, sequences, indices) -> int | None:
        if self.boundaries is not None:
            return bucket_length(max(len(sequences[i]) for i in indices), self.boundaries)
        return self.max_length

    def train_batch(self, step: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The training batch of ``step``: ``inputs int32 [B, L]``, ``padding_mask``, ``labels``.

        With ``rows`` (indices into the batch, one process's share on a multi-host run:
        effjax.train.sharding.process_rows) only those rows are gathered and padded, to
        the length the whole batch pads to, so every process's share has the same shape.
        """
        indices = self.order.indices(step)
        sequences = self.splits["train"][0]
        length = self._length_for(sequences, indices)
        if rows is not None:
            # The whole batch's length (its longest sequence when neither buckets nor
            # max_length fix it), which a share alone may not reach.
            length = length or max(len(sequences[i]) for i in indices)
            indices = indices[rows]
        return self._batch("train", indices, length)

    def eval_batches(self, split: str, limit: int | None = None) -> Iterator[dict]:
        """Batches of ``split`` in order, the last one partial; at most ``limit`` examples."""
        sequences, _ = self.splits[split]
        count = len(sequences) if limit is None else min(limit, len(sequences))
        for start in range(0, count, self.batch_size):
            indices = range(start, min(start + self.batch_size, count))
            yield self._batch(split, indices, self._length_for(sequences, indices))
