"""experiments/mqar.py's merging of invocations: each run keeps the training options it
ran with, and the report lists them per cell."""

import dataclasses

import pytest

from experiments import mqar


def part(seq_len: int, pairs: int, accuracies: dict, **training) -> dict:
    """A results file as an invocation writes it (records without runs' own setups, as
    files written before runs carried them)."""
    setup = dataclasses.asdict(mqar.Setup(**training))
    cell = dict(seq_len=seq_len, pairs=pairs, options={}, steps=100, in_context_guess=0.25)
    timing = dict(compile_seconds=1.0, train_seconds=2.0, seconds_per_step=0.02)
    runs = [
        dict(
            variant=name,
            seed=seed,
            accuracy=accuracy,
            loss=1.0,
            **cell,
            **timing,
            curve=[[100, accuracy, 1.0]],
        )
        for (name, seed), accuracy in accuracies.items()
    ]
    command = f"python experiments/mqar.py --lengths {seq_len} --pairs {pairs}"
    return {"setup": setup, "runs": runs,
            "invocations": [{"command": command, "commit": "abc", "machine": "m"}]}  # fmt: skip


def test_merged_cells_keep_their_learning_rates_and_budgets():
    base = part(32, 4, {("dense", 0): 0.99, ("linear", 0): 0.3}, learning_rate=1e-3, max_steps=2500)
    other = part(64, 8, {("dense", 0): 1.0, ("dense", 1): 0.98, ("linear", 0): 0.2},
                 learning_rate=3e-3, max_steps=1500)  # fmt: skip
    mqar.merge(base, other, "other.json")
    by_cell = {(r["seq_len"], r["variant"], r["seed"]): r["setup"] for r in base["runs"]}
    assert len(by_cell) == 5
    assert by_cell[32, "linear", 0]["learning_rate"] == 1e-3
    assert by_cell[64, "dense", 1]["learning_rate"] == 3e-3
    assert by_cell[64, "linear", 0]["max_steps"] == 1500
    text = mqar.markdown(base)
    assert "- T=32, P=4: learning rate 0.001, 100 warm-up steps, at most 2500 steps\n" in text
    assert "- T=64, P=8: learning rate 0.003, 100 warm-up steps, at most 1500 steps\n" in text
    assert "| dense | 0.990 ± 0.000 (n=1) | 0.990 ± 0.014 (n=2) |" in text


def test_a_cell_with_two_schedules_names_the_variants_of_each():
    base = part(64, 8, {("dense", 0): 1.0}, learning_rate=3e-3, max_steps=1500)
    mqar.merge(base, part(64, 8, {("lsh", 0): 0.3}, learning_rate=3e-3, max_steps=800), "x")
    assert (
        "- T=64, P=8: learning rate 0.003, 100 warm-up steps, at most 1500 steps (dense); "
        "learning rate 0.003, 100 warm-up steps, at most 800 steps (lsh)\n"
    ) in mqar.markdown(base)


def test_merge_refuses_another_model():
    base = part(32, 4, {("dense", 0): 0.99})
    with pytest.raises(SystemExit, match="another model or evaluation"):
        mqar.merge(base, part(32, 8, {("dense", 0): 0.5}, hidden_size=128), "wide.json")


def test_the_fixed_state_drop_is_compared_with_dense_over_the_same_pairs():
    results = part(32, 2, {("dense", 0): 0.8, ("linear", 0): 0.6, ("local", 0): 0.98})
    mqar.merge(results, part(32, 4, {**{("dense", 0): 1.0, ("linear", 0): 0.3},
                                     ("local", 0): 0.98}), "p4.json")  # fmt: skip
    mqar.merge(results, part(32, 8, {("dense", 0): 0.4}), "p8.json")
    text = mqar.markdown(results)
    # Dense gains 20 points from 2 to 4 pairs (it loses 40 from 2 to 8, where linear did not run).
    assert "- linear (fixed state), T=32: loses 30.0 points from P=2 to P=4, dense -20.0: " in text
    assert (
        "- local (fixed state), T=32: loses 0.0 points from P=2 to P=4, dense -20.0: does " in text
    )
