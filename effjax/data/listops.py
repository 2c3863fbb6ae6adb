"""ListOps (Nangia & Bowman 2018) as defined by the Long Range Arena (Tay et al. 2020).

An expression is a tree of operators over digits 0-9, written in prefix form::

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]   ->  5

``MIN``/``MAX`` take the minimum/maximum of their arguments, ``MED`` the integer
median (``int(numpy.median(args))``, the LRA definition), ``SM`` the sum modulo 10.
The label is the value of the whole expression (10 classes). LRA draws trees with
at most 10 arguments per operator, depth at most 10, and keeps expressions whose
token count lies strictly between 500 and 2000; duplicates are removed. Each node
below the depth limit is an operator with probability ``operator_prob`` (LRA: 0.25)
and a digit otherwise.

Token ids (``VOCAB``): 0 is padding, digits ``d`` are ``d + 1``, then the four
operators and the closing bracket.

Example:
  >>> from effjax.data.listops import evaluate, tokenize
  >>> evaluate(tokenize("[SM 4 [MAX 2 9 ] 8 ]"))
  1
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

PAD_ID = 0
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
VOCAB: tuple[str, ...] = ("<pad>", *(str(d) for d in range(10)), *OPERATORS, CLOSE)
TOKEN_IDS = {token: i for i, token in enumerate(VOCAB)}
NUM_CLASSES = 10
SPLITS = ("train", "validation", "test")


def _median(args: Sequence[int]) -> int:
    return int(np.median(args))


_APPLY = {
    "[MIN": min,
    "[MAX": max,
    "[MED": _median,
    "[SM": lambda args: sum(args) % 10,
}


@dataclasses.dataclass(frozen=True)
class ListOpsSpec:
    """How ListOps expressions are drawn. Defaults are the LRA task.

    Attributes:
      min_length: expressions must have more than this many tokens (LRA: 500).
      max_length: and fewer than this many (LRA: 2000).
      max_depth: operator nesting limit, the root being depth 1 (LRA: 10).
      max_args: most arguments per operator; the least is 2 (LRA: 10).
      operator_prob: probability that a node above the depth limit is an operator (LRA: 0.25).
      num_train, num_validation, num_test: split sizes (LRA: 96k / 2k / 2k).
      seed: the generator's seed.
    """

    min_length: int = 500
    max_length: int = 2000
    max_depth: int = 10
    max_args: int = 10
    operator_prob: float = 0.25
    num_train: int = 96_000
    num_validation: int = 2_000
    num_test: int = 2_000
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.min_length < self.max_length - 1:
            raise ValueError(
                f"need 0 <= min_length < max_length - 1, got min_length={self.min_length}, "
                f"max_length={self.max_length}"
            )
        if self.max_depth < 1 or self.max_args < 2:
            raise ValueError(
                f"need max_depth >= 1 and max_args >= 2, got {self.max_depth}, {self.max_args}"
            )
        if not 0.0 < self.operator_prob <= 1.0:
            raise ValueError(f"operator_prob must be in (0, 1], got {self.operator_prob}")

    def split_sizes(self) -> dict[str, int]:
        return dict(zip(SPLITS, (self.num_train, self.num_validation, self.num_test), strict=True))

    def fingerprint(self) -> str:
        """A short hash of the spec, naming its cache directory."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _draw_tree(rng: np.random.Generator, depth: int, spec: ListOpsSpec) -> tuple[list[str], int]:
    """One subtree as (tokens, value); ``depth`` counts the root as 1."""
    if depth > spec.max_depth or rng.random() >= spec.operator_prob:
        digit = int(rng.integers(10))
        return [str(digit)], digit
    operator = OPERATORS[int(rng.integers(len(OPERATORS)))]
    tokens, values = [operator], []
    for _ in range(int(rng.integers(2, spec.max_args + 1))):
        sub_tokens, sub_value = _draw_tree(rng, depth + 1, spec)
        tokens += sub_tokens
        values.append(sub_value)
    tokens.append(CLOSE)
    return tokens, _APPLY[operator](values)


def generate_expressions(spec: ListOpsSpec) -> Iterator[tuple[str, int]]:
    """Endless unique ``(source, label)`` pairs whose length lies in the spec's range.

    The root is always an operator (a lone digit is not a list operation). Draws whose
    token count falls outside ``(min_length, max_length)`` or repeat an earlier
    expression are rejected, as in LRA.
    """
    rng = np.random.default_rng(spec.seed)
    seen: set[str] = set()
    while True:
        operator = OPERATORS[int(rng.integers(len(OPERATORS)))]
        tokens, values = [operator], []
        for _ in range(int(rng.integers(2, spec.max_args + 1))):
            sub_tokens, sub_value = _draw_tree(rng, 2, spec)
            tokens += sub_tokens
            values.append(sub_value)
        tokens.append(CLOSE)
        source = " ".join(tokens)
        if spec.min_length < len(tokens) < spec.max_length and source not in seen:
            seen.add(source)
            yield source, _APPLY[operator](values)


def tokenize(source: str) -> list[int]:
    """Space-separated ListOps source -> token ids (see ``VOCAB``)."""
    try:
        return [TOKEN_IDS[token] for token in source.split()]
    except KeyError as error:
        raise ValueError(f"unknown ListOps token {error.args[0]!r} in {source[:80]!r}") from None


def detokenize(token_ids: Sequence[int]) -> str:
    """Token ids -> the space-separated source (padding dropped); inverts :func:`tokenize`.

    Example:
      >>> detokenize(tokenize("[SM 4 [MAX 2 9 ] 8 ]"))
      '[SM 4 [MAX 2 9 ] 8 ]'
    """
    return " ".join(VOCAB[i] for i in token_ids if i != PAD_ID)


def evaluate(token_ids: Sequence[int]) -> int:
    """The value of a tokenized expression (padding ignored), by a stack machine.

    Raises:
      ValueError: the tokens do not form exactly one well-bracketed expression.
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for token_id in token_ids:
        if token_id == PAD_ID:
            continue
        if result is not None:
            raise ValueError("tokens continue after the expression ended")
        token = VOCAB[int(token_id)]
        if token in _APPLY:
            stack.append((token, []))
            continue
        if token == CLOSE:
            if not stack:
                raise ValueError("']' without an open operator")
            operator, args = stack.pop()
            if not args:
                raise ValueError(f"{operator} closed without arguments")
            value = _APPLY[operator](args)
        else:
            value = int(token)
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    if stack or result is None:
        raise ValueError("unterminated expression")
    return result


def depth(token_ids: Sequence[int]) -> int:
    """Operator nesting depth of a tokenized expression (a lone digit has depth 0)."""
    level = deepest = 0
    for token_id in token_ids:
        token = VOCAB[int(token_id)]
        level += token in _APPLY
        level -= token == CLOSE
        deepest = max(deepest, level)
    return deepest


def _examples(spec_json: str):
    """Every split's examples in one stream (train, validation, test), so none repeats."""
    spec = ListOpsSpec(**json.loads(spec_json))
    total = sum(spec.split_sizes().values())
    for _, (source, label) in zip(range(total), generate_expressions(spec), strict=False):
        yield {"source": source, "input_ids": tokenize(source), "label": label}


def load_listops(spec: ListOpsSpec, cache_dir: str | Path):
    """The ListOps splits as a ``datasets.DatasetDict``, built once and cached.

    The first call generates all splits in one ``Dataset.from_generator`` pass, takes
    consecutive ranges for train, validation and test, and stores each with
    ``save_to_disk`` under ``cache_dir/listops-<fingerprint>``; later calls
    ``load_from_disk``. Columns: ``source`` (str), ``input_ids`` (list of int),
    ``label`` (int in 0..9).

    Example:
      >>> spec = ListOpsSpec(min_length=20, max_length=60, max_depth=3, num_train=8,
      ...                    num_validation=2, num_test=2)
      >>> import tempfile
      >>> cache = tempfile.TemporaryDirectory()  # removed when garbage-collected
      >>> ds = load_listops(spec, cache.name)
      >>> [len(ds[split]) for split in ("train", "validation", "test")]
      [8, 2, 2]
      >>> 0 <= ds["train"][0]["label"] <= 9
      True
    """
    import datasets

    root = Path(cache_dir) / f"listops-{spec.fingerprint()}"
    if not all((root / split).exists() for split in SPLITS):
        _build(spec, root)
    return datasets.DatasetDict(
        {split: datasets.load_from_disk(str(root / split)) for split in SPLITS}
    )


def _build(spec: ListOpsSpec, root: Path) -> None:
    """Generates every split; each lands in ``root/<split>`` by one rename (never half-written)."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        everything = datasets.Dataset.from_generator(
            _examples,
            gen_kwargs={"spec_json": json.dumps(dataclasses.asdict(spec))},
            cache_dir=str(Path(scratch) / "build"),
        )
        start = 0
        for split, size in spec.split_sizes().items():
            part = everything.select(range(start, start + size))
            part.save_to_disk(str(Path(scratch) / split))
            if not (root / split).exists():
                os.replace(Path(scratch) / split, root / split)
            start += size
