"""Language modelling over consecutive segments, for segment-recurrent models.

Transformer-XL (Dai et al. 2019) reads a long text as consecutive segments and carries
a memory from one to the next, so the batches must come in text order: each split's
token stream is cut into ``B`` contiguous rows (row ``b`` holds tokens
``[b n, (b + 1) n)``, ``n = len // B``), and batch ``k`` is segment ``k`` of every
row. A training step's batch is still a function of the step alone (resumable runs):
step ``s`` reads segment ``s mod K``; after the last segment it wraps to the first, and
the one memory carried across the wrap is from the end of the text.

Example:
  >>> import numpy as np
  >>> data = LanguageModelData({"train": np.arange(12)}, batch_size=2, segment_length=2)
  >>> batch = data.train_batch(1)
  >>> batch["inputs"].tolist(), batch["targets"].tolist()
  ([[2, 3], [8, 9]], [[3, 4], [9, 10]])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np


class LanguageModelData:
    """Next-token batches ``{"inputs", "targets" int32 [B, T], "padding_mask" bool [B, T]}``
    of consecutive segments (see the module docstring).

    Args:
      streams: ``{split: int [N]}`` token streams; must include ``"train"``.
      batch_size: ``B``, rows read side by side.
      segment_length: ``T``, tokens per segment.

    Raises:
      ValueError: a stream is too short for one segment per row, or a size is not positive.
    """

    def __init__(self, streams: Mapping[str, np.ndarray], *, batch_size: int, segment_length: int):
        if "train" not in streams:
            raise ValueError(f"streams must include 'train', got {sorted(streams)}")
        if min(batch_size, segment_length) < 1:
            raise ValueError(
                f"batch_size={batch_size} and segment_length={segment_length} must be positive"
            )
        self.batch_size, self.segment_length = batch_size, segment_length
        self.splits = {name: self._rows(name, np.asarray(s)) for name, s in streams.items()}

    def _rows(self, name: str, stream: np.ndarray) -> np.ndarray:
        """``[B, n]`` contiguous rows of ``stream``, ``n - 1`` a multiple of ``T`` (the
        last token of a row is only a target)."""
        per_row = len(stream) // self.batch_size
        segments = (per_row - 1) // self.segment_length
        if segments < 1:
            raise ValueError(
                f"split {name!r} has {len(stream)} tokens: too few for one segment of "
                f"{self.segment_length} (+1 target) in each of {self.batch_size} rows"
            )
        rows = stream[: per_row * self.batch_size].reshape(self.batch_size, per_row)
        return rows[:, : segments * self.segment_length + 1].astype(np.int32)

    def num_segments(self, split: str) -> int:
        """``K``: segments (batches) per pass over ``split``."""
        return (self.splits[split].shape[1] - 1) // self.segment_length

    def _batch(self, split: str, index: int, rows: np.ndarray | None = None) -> dict:
        start = index * self.segment_length
        table = self.splits[split] if rows is None else self.splits[split][rows]
        window = table[:, start : start + self.segment_length + 1]
        return {
            "inputs": window[:, :-1],
            "targets": window[:, 1:],
            "padding_mask": np.ones(window[:, 1:].shape, bool),
        }

    def train_batch(self, step: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Segment ``step mod K`` of the training rows (only ``rows`` of them when given:
        one process's share on a multi-host run, effjax.train.sharding.process_rows)."""
        return self._batch("train", step % self.num_segments("train"), rows)

    def eval_batches(self, split: str, limit: int | None = None) -> Iterator[dict]:
        """The segments of ``split`` in order (every one a full batch); with ``limit``
        (examples, i.e. rows of segments) the first ``max(1, limit // B)``."""
        count = self.num_segments(split)
        if limit is not None:
            count = min(count, max(1, limit // self.batch_size))
        for index in range(count):
            yield self._batch(split, index)
