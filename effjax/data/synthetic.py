"""Synthetic long-range tasks: associative recall, copy, and Reformer's duplication task.

All generators are host-side numpy with an explicit seed (data, not model randomness)
and return fixed-length int32 arrays.

* Associative recall (Ba et al. 2016; Zoology, Arora et al. 2023): ``k1 v1 ... kn vn
  SEP q`` -> the value paired with key ``q``. The answer may sit anywhere in the
  context, so a model must carry information across the whole sequence.
* Multi-query associative recall (MQAR; Zoology, Arora et al. 2023, Sec. 3): the pairs,
  then every key again as a query at a later position, as language modelling with the
  loss on the queries.
* Copy: ``x SEP x`` as language modelling, loss on the second ``x``.
* Duplication (Kitaev et al. 2020, Reformer §5): ``0 w 0 w`` with ``w`` drawn from
  symbols ``1..V-1``; loss on the second ``w``.
* Repeated blocks: one long stream of random blocks, each written several times, for
  segment-recurrent language models (the answer sits one block length back).

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


def multi_query_recall(
    num_examples: int,
    *,
    seq_len: int,
    num_pairs: int,
    vocab_size: int,
    seed: int,
    power_a: float = 0.01,
) -> dict[str, np.ndarray]:
    """Multi-query associative recall (MQAR), Zoology's layout (Arora et al. 2023, Sec. 3).

    Ids: 0 filler, keys ``1 .. vocab_size // 2 - 1``, values ``vocab_size // 2 ..
    vocab_size - 1``. Each example starts with ``num_pairs`` pairs ``k_1 v_1 ... k_P v_P``
    (distinct keys, values drawn independently); the rest of the sequence is filler
    except that every key appears once more, in random order, as a query. Query ``s``
    of the ``(seq_len - 2P) // 2`` slots sits at position ``2P + 2s``; slots are drawn
    without replacement with Zoology's power law ``p(s) ∝ (s + 1) ** (power_a - 1)``
    (most queries close to the pairs, a few far), so two queries never share a slot
    and a query is always followed by filler: no query can overwrite another one or
    its answer position.

    Returns:
      ``inputs`` int32 ``[num_examples, seq_len]``, ``targets`` int32 (the queried
      value at query positions, 0 elsewhere) and ``loss_mask`` bool (True at the
      ``num_pairs`` query positions of each row): the model predicts the value as the
      next token after reading the query key.

    Raises:
      ValueError: ``seq_len < 4 * num_pairs`` (fewer query slots than queries), or
        fewer than ``num_pairs`` keys in the vocabulary.

    Example:
      >>> from effjax.data.synthetic import multi_query_recall
      >>> batch = multi_query_recall(2, seq_len=16, num_pairs=2, vocab_size=10, seed=0)
      >>> batch["inputs"].shape, batch["loss_mask"].sum(axis=1).tolist()
      ((2, 16), [2, 2])
    """
    first_value = vocab_size // 2
    if num_pairs <= 0 or seq_len < 4 * num_pairs:
        raise ValueError(
            f"seq_len={seq_len} must be at least 4 * num_pairs={4 * num_pairs} "
            "(the pairs plus one query slot of two positions per key), num_pairs >= 1"
        )
    if first_value - 1 < num_pairs:
        raise ValueError(
            f"vocab_size={vocab_size} has {first_value - 1} keys, fewer than "
            f"num_pairs={num_pairs} (keys must be distinct)"
        )
    rng = np.random.default_rng(seed)
    shape = (num_examples, num_pairs)
    keys = np.argsort(rng.random((num_examples, first_value - 1)), axis=1)[:, :num_pairs] + 1
    values = rng.integers(first_value, vocab_size, size=shape)
    num_slots = (seq_len - 2 * num_pairs) // 2
    # Sampling without replacement proportional to p: the top-P of log p + Gumbel noise.
    log_p = (power_a - 1.0) * np.log(np.arange(1, num_slots + 1))
    gumbel = -np.log(-np.log(rng.random((num_examples, num_slots))))
    slots = np.argsort(-(log_p + gumbel), axis=1)[:, :num_pairs]
    positions = 2 * num_pairs + 2 * slots
    inputs = np.zeros((num_examples, seq_len), dtype=np.int32)
    inputs[:, 0 : 2 * num_pairs : 2] = keys
    inputs[:, 1 : 2 * num_pairs : 2] = values
    rows = np.arange(num_examples)[:, None]
    inputs[rows, positions] = keys
    targets = np.zeros_like(inputs)
    targets[rows, positions] = values
    loss_mask = np.zeros(inputs.shape, dtype=bool)
    loss_mask[rows, positions] = True
    return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask}


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


def repeated_blocks(
    num_tokens: int, *, period: int, repeats: int, vocab_size: int, seed: int
) -> np.ndarray:
    """One token stream of random blocks, each repeated: ``p_1 p_1 ... p_1 p_2 ...``.

    Each block ``p`` is ``period`` tokens over ``1..vocab_size-1``, written ``repeats``
    times in a row. Every token after a block's first copy equals the token ``period``
    positions back, so a language model predicts it only if it sees that far: a
    segment-recurrent model (Transformer-XL) with segment length ``T < period`` needs
    its memory (``T + M >= period + 1``); without, it stays at chance.

    Returns:
      ``int32 [num_tokens]``.

    Example:
      >>> repeated_blocks(8, period=2, repeats=2, vocab_size=9, seed=0).tolist()
      [7, 6, 7, 6, 5, 3, 5, 3]
    """
    if min(period, repeats, num_tokens) < 1 or vocab_size < 2:
        raise ValueError(
            f"period={period}, repeats={repeats}, num_tokens={num_tokens} must be positive "
            f"and vocab_size={vocab_size} >= 2"
        )
    block = period * repeats
    count = -(-num_tokens // block)
    patterns = np.random.default_rng(seed).integers(1, vocab_size, size=(count, 1, period))
    stream = np.broadcast_to(patterns, (count, repeats, period)).reshape(-1)
    return stream[:num_tokens].astype(np.int32)
