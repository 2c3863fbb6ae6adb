"""ListOps accuracy of every attention variant at one model size, with learning curves.

    python experiments/listops.py --regime shallow --variants dense --seeds 0 1 2
    python experiments/listops.py --report-only

Trains configs/listops.py's encoder (2 layers, 64 wide, classification on a CLS token)
once per variant and seed on the same data, in one of the expression regimes below, and
writes experiments/results/listops.{json,md,png}: every run's test accuracy and its
validation curve, the baselines of that regime's test split (majority class; the
outermost operator alone), mean ± s.d. over seeds, and the train time per run. A rerun
adds the runs not yet in the JSON, so regimes and seeds accumulate; the file lists
every invocation.

Regimes (the LRA task is 500 < length < 2000 tokens, depth <= 10):
  ``lra_short``: 60 < length < 200, depth <= 5, <= 10 arguments (configs/listops.py);
  ``shallow``: 10 < length < 64, depth <= 2, <= 5 arguments, a 3x longer schedule.

``--steps N`` trains for N steps instead of the regime's; those runs form their own table
(regime ``<regime>-<N>steps``), never a row with runs of another length.

LRA numbers: Tay et al. 2020, "Long Range Arena", Table 1, ListOps column (see
docs/references.md); not the same scale as ours, so compare orderings, not values.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from effjax import provenance  # noqa: E402
from effjax.attention import available  # noqa: E402
from effjax.data import listops  # noqa: E402
from effjax.train import loop, tasks  # noqa: E402

#: Registry name -> (LRA model name, LRA ListOps accuracy).
LRA = {
    "dense": ("Transformer", 36.37),
    "local": ("Local Attention", 15.82),
    "global_local": ("Longformer", 35.63),
    "linformer": ("Linformer", 35.70),
    "lsh": ("Reformer", 37.27),
    "block_sparse": ("BigBird", 36.05),
    "linear": ("Linear Trans.", 16.13),
    "performer": ("Performer", 18.01),
}

#: Regime -> (changes to the ListOps spec, steps, peak learning rate, length buckets).
REGIMES = {
    "lra_short": ({}, 1000, 2e-3, (128, 200)),
    "shallow": (
        {"min_length": 10, "max_length": 64, "max_depth": 2, "max_args": 5},
        3000,
        1e-3,
        (32, 64),
    ),
}


def variant_options(name: str, max_length: int) -> dict:
    """Each variant's options; windows and blocks a quarter of the longest input or less."""
    window = max(4, max_length // 12)
    return {
        "local": {"window_size": window},
        "global_local": {"window_size": window},
        "linformer": {"proj_dim": 32, "max_len": max_length},
        "lsh": {"num_hashes": 2, "num_buckets": 8, "chunk_size": 32},
        "block_sparse": {"block_size": 8, "num_random_blocks": 2, "num_global_blocks": 1},
        "performer": {"num_features": 64, "redraw_interval": 100},
    }.get(name, {})


def _listops_config_module():
    spec = importlib.util.spec_from_file_location("listops_config", ROOT / "configs/listops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def regime_config(regime: str, variant: str = "dense", seed: int = 0, steps: int | None = None):
    """configs/listops.py's experiment in ``regime``, with ``variant`` and ``seed``, trained
    for ``steps`` (default: the regime's)."""
    module = _listops_config_module()
    spec_changes, regime_steps, learning_rate, boundaries = REGIMES[regime]
    steps = steps or regime_steps
    base = module.config
    spec = dataclasses.replace(base.data.listops, **spec_changes)
    max_tokens = spec.max_length + 1  # the CLS token
    data = dataclasses.replace(base.data, listops=spec, boundaries=boundaries)
    model = base.model.replace(
        max_position_embeddings=max(boundaries),
        attention=variant,
        attention_options=variant_options(variant, max_tokens),
    )
    return base.replace(
        name=f"listops-{regime}-{variant}",
        data=data,
        model=model,
        optimizer=dataclasses.replace(base.optimizer, learning_rate=learning_rate),
        run=dataclasses.replace(
            base.run,
            seed=seed,
            num_steps=steps,
            eval_every=max(100, steps // 15),
            checkpoint_every=steps,
            progress=False,
        ),
    )


def validation_curve(workdir: Path) -> list[list[float]]:
    """``[step, validation accuracy]`` pairs from the run's metrics.jsonl."""
    curve = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "validation/accuracy" in record:
            curve.append([record["step"], round(record["validation/accuracy"], 4)])
    return curve


def table_key(regime: str, steps: int | None) -> str:
    """The results' name for ``regime`` trained for ``steps``: the regime's own name at
    its own step count, else ``<regime>-<steps>steps``."""
    return regime if steps in (None, REGIMES[regime][1]) else f"{regime}-{steps}steps"


def run_variant(
    regime: str, name: str, seed: int, workdir: Path, data, steps: int | None = None
) -> dict:
    config = regime_config(regime, name, seed, steps)
    key = table_key(regime, steps)
    run_dir = workdir / key / f"{name}-seed{seed}"
    start = time.perf_counter()
    result = loop.train(config, run_dir, model=tasks.build_model(config), data=data)
    return {
        "regime": key,
        "variant": name,
        "seed": seed,
        "options": dict(config.model.attention_options),
        "test_accuracy": result["test/accuracy"],
        "steps": result["step"],
        "train_seconds": round(time.perf_counter() - start, 1),
        "curve": validation_curve(run_dir),
    }


def baselines(data) -> dict[str, float]:
    """Test accuracy of the majority class and of the outermost operator alone.

    The operator baseline predicts, for each outermost operator, the label most
    frequent with it in the training split (inputs are ``[CLS, operator, ...]``).
    """
    train_ids, train_labels = data.splits["train"]
    test_ids, test_labels = data.splits["test"]
    test_labels = np.asarray(test_labels)
    counts = np.zeros((tasks.LISTOPS_VOCAB_SIZE, 10), dtype=int)
    for ids, label in zip(train_ids, train_labels, strict=True):
        counts[ids[1], label] += 1
    by_operator = counts.argmax(axis=1)
    operator_acc = np.mean([by_operator[ids[1]] for ids in test_ids] == test_labels)
    majority_acc = np.mean(test_labels == counts.sum(0).argmax())
    return {"majority": float(majority_acc), "operator": float(operator_acc)}


def token_lengths(data) -> dict[str, float]:
    """Mean and longest input (with the CLS token) over every split."""
    lengths = [len(ids) for ids, _ in data.splits.values() for ids in ids]
    return {"mean": float(np.mean(lengths)), "max": int(np.max(lengths))}


def same_runs(runs: list[dict]) -> list[list[str]]:
    """Groups of variants with the same test accuracy on every seed (two or more seeds)."""
    by_variant: dict[str, dict] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], {})[r["seed"]] = r["test_accuracy"]
    groups: dict[tuple, list[str]] = {}
    for name, accs in by_variant.items():
        if len(accs) > 1:
            groups.setdefault(tuple(sorted(accs.items())), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def lra_operator_baseline(count: int) -> float:
    """The operator baseline in-sample on ``count`` LRA-length expressions (LRA's spec)."""
    spec = listops.ListOpsSpec(seed=1)
    counts = np.zeros((len(listops.VOCAB), 10), dtype=int)
    expressions = listops.generate_expressions(spec)
    for _ in range(count):
        source, label = next(expressions)
        counts[listops.TOKEN_IDS[source.split()[0]], label] += 1
    return float(counts.max(axis=1).sum() / counts.sum())


def _mean_sd(values: list[float]) -> str:
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{100 * np.mean(values):.1f} ± {100 * sd:.1f} (n={len(values)})"


def markdown(results: dict) -> str:
    lines = [
        "# ListOps: every attention variant at one model size",
        "",
        "Encoder (configs/listops.py): 2 layers, hidden 64, 4 heads, MLP 128, classification "
        "on a prepended CLS token; AdamW with 100 warm-up steps then cosine, batch 32; "
        "10,000 training / 500 validation / 2,000 test expressions from "
        "effjax.data.listops (LRA's operators MIN, MAX, MED, SM; operator probability "
        "0.25). Test accuracy on all 2,000 test expressions; ± is the sample s.d. over "
        "seeds. The LRA column is Tay et al. 2020, Table 1 (500-2000 tokens, depth 10).",
    ]
    lra = results.get("lra_operator_baseline")
    if lra:
        lines += [
            "",
            f"On LRA-length expressions ({lra['count']} drawn with LRA's spec), the "
            f"outermost operator alone scores {100 * lra['accuracy']:.1f}% (in-sample).",
        ]
    for regime, info in results["regimes"].items():
        runs = [r for r in results["runs"] if r["regime"] == regime]
        spec, base = info["spec"], info["baselines"]
        base_regime = regime.partition("-")[0]
        shortened = (
            f" (set by `--steps`; the `{base_regime}` regime's own runs have "
            f"{REGIMES[base_regime][1]} and a table of their own)"
            if base_regime != regime
            else ""
        )
        lines += [
            "",
            f"## Regime `{regime}`: {spec['min_length']} < length < {spec['max_length']}, "
            f"depth <= {spec['max_depth']}, <= {spec['max_args']} arguments",
            "",
            f"{info['steps']} steps{shortened}, peak learning rate "
            f"{info['learning_rate']:g}. Baselines "
            f"on this test split: majority class {100 * base['majority']:.1f}%, outermost "
            f"operator {100 * base['operator']:.1f}%.",
        ]
        if "token_lengths" in info:
            lengths = info["token_lengths"]
            lines[-1] += (
                f" Inputs (with the CLS token) are {lengths['mean']:.1f} tokens long on "
                f"average, {lengths['max']} at most: a variant whose window, blocks or "
                "chunks cover that many tokens computes dense attention here."
            )
        for names in same_runs(runs):
            lines[-1] += (
                f" Same test accuracy on every seed (the same computation up to rounding): "
                f"{', '.join(names)}."
            )
        lines += [
            "",
            "| variant | LRA model | LRA ListOps (%) | test acc. (%) | minus operator "
            "baseline (points) | steps | train time per run (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in dict.fromkeys(r["variant"] for r in runs):
            mine = [r for r in runs if r["variant"] == name]
            accs = [r["test_accuracy"] for r in mine]
            lra_name, lra_value = LRA.get(name, ("not in LRA", None))
            lra_cell = "-" if lra_value is None else f"{lra_value:.2f}"
            margin = 100 * (np.mean(accs) - base["operator"])
            lines.append(
                f"| {name} | {lra_name} | {lra_cell} | {_mean_sd(accs)} | {margin:+.1f} "
                f"| {mine[0]['steps']} | {np.mean([r['train_seconds'] for r in mine]):.0f} |"
            )
        imported = [r for r in runs if not r.get("curve")]
        if imported:
            sources = ", ".join(sorted({r["imported_from"] for r in imported}))
            lines += [
                "",
                f"{len(imported)} rows of this regime have no learning curve: they are the "
                f"earlier single-seed table ({sources}), made by that commit's script "
                "(options per row in the JSON) and imported by the invocation below.",
            ]
    lines += [
        "",
        "Validation curves: listops.png (one panel per regime with curves; per variant "
        "the mean over seeds, shaded ± s.d.; the operator baseline dashed).",
        "",
        "## Provenance",
        "",
    ]
    for info in results["invocations"]:
        lines += [*provenance.stamp_lines(info), ""]
    if len(results["invocations"]) > 1:
        lines.append(
            f"The runs were merged from the {len(results['invocations'])} invocations above."
        )
    return "\n".join(lines).rstrip() + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [g for g in results["regimes"] if any(r["regime"] == g and r.get("curve")
                                                    for r in results["runs"])]  # fmt: skip
    fig, axes = plt.subplots(1, len(regimes), figsize=(6 * len(regimes), 4), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        runs = [r for r in results["runs"] if r["regime"] == regime and r.get("curve")]
        colours = {
            name: plt.get_cmap("tab20")(2 * i % 20 + 2 * i // 20)  # the dark hues first
            for i, name in enumerate(dict.fromkeys(r["variant"] for r in runs))
        }
        for name, colour in colours.items():
            curves = [dict(r["curve"]) for r in runs if r["variant"] == name]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            accs = np.array([[c[s] for s in steps] for c in curves])
            mean, sd = accs.mean(0), accs.std(0, ddof=1) if len(accs) > 1 else 0 * accs[0]
            ax.plot(steps, mean, marker=".", color=colour, label=f"{name} (n={len(accs)})")
            ax.fill_between(steps, mean - sd, mean + sd, color=colour, alpha=0.15)
        base = results["regimes"][regime]["baselines"]["operator"]
        ax.axhline(base, color="gray", linestyle="--", label="operator baseline")
        ax.set(title=f"ListOps, {regime}", xlabel="step", ylabel="validation accuracy")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    scratch = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(scratch, dpi=110)
    plt.close(fig)
    scratch.replace(path)


def save(results: dict, out: Path) -> None:
    provenance.write_json(out.with_suffix(".json"), results)
    provenance.write_text(out.with_suffix(".md"), markdown(results))
    if any(r.get("curve") for r in results["runs"]):
        plot(results, out.with_suffix(".png"))


def import_rows(results: dict, commit: str) -> None:
    """The rows of the earlier table (experiments/results/listops.json at ``commit``, a
    list of single-seed runs of the ``lra_short`` regime without curves), as runs."""
    source = f"{commit}:experiments/results/listops.json"
    rows = json.loads(subprocess.run(["git", "show", source], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    done = {(r["regime"], r["variant"], r["seed"]) for r in results["runs"]}
    results["runs"] += [
        {"regime": "lra_short", "variant": r["variant"], "seed": 0, "options": r["options"],
         "test_accuracy": r["test_accuracy"], "steps": r["steps"],
         "train_seconds": round(r["seconds"], 1), "curve": [], "imported_from": source}
        for r in rows
        if "test_accuracy" in r and ("lra_short", r["variant"], 0) not in done
    ]  # fmt: skip


def merge(results: dict, other: dict) -> None:
    """Adds ``other``'s regimes, runs (those not yet in ``results``) and invocations."""
    done = {(r["regime"], r["variant"], r["seed"]) for r in results["runs"]}
    results["runs"] += [
        r for r in other["runs"] if (r["regime"], r["variant"], r["seed"]) not in done
    ]
    results["regimes"].update(other["regimes"])
    results["invocations"] = provenance.merge_invocations(
        results["invocations"], other["invocations"]
    )
    if "lra_operator_baseline" in other:
        results["lra_operator_baseline"] = other["lra_operator_baseline"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=sorted(REGIMES), default="shallow")
    parser.add_argument("--variants", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, default=None, help="train steps (default: the regime's)"
    )
    parser.add_argument(
        "--import-from",
        metavar="COMMIT",
        help="add the earlier single-seed table of that commit (regime lra_short)",
    )
    parser.add_argument(
        "--lra-baseline",
        type=int,
        default=0,
        help="also score the operator baseline on this many LRA-length expressions",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/effjax-listops"))
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/results/listops")
    parser.add_argument("--report-only", action="store_true", help="rewrite .md/.png from .json")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="add the runs of these results files (from parallel invocations)",
    )
    args = parser.parse_args()
    start = time.time()
    json_path = args.out.with_suffix(".json")
    saved = json.loads(json_path.read_text()) if json_path.exists() else None
    results = saved if isinstance(saved, dict) else {"regimes": {}, "runs": [], "invocations": []}
    for other in args.merge:
        merge(results, json.loads(other.read_text()))
    if args.report_only:
        for key, info in results["regimes"].items():
            if "token_lengths" not in info:  # runs from before lengths were recorded
                config = regime_config(key.partition("-")[0])
                info["token_lengths"] = token_lengths(tasks.build_data(config))
        save(results, args.out)
        return
    results["invocations"].append(provenance.stamp(sys.argv, start=start))
    if args.lra_baseline:
        accuracy = lra_operator_baseline(args.lra_baseline)
        results["lra_operator_baseline"] = {"count": args.lra_baseline, "accuracy": accuracy}
    config = regime_config(args.regime, steps=args.steps)
    data = tasks.build_data(config)  # shared by every variant and seed
    key = table_key(args.regime, args.steps)
    results["regimes"][key] = {
        "spec": dataclasses.asdict(config.data.listops),
        "steps": config.run.num_steps,
        "learning_rate": config.optimizer.learning_rate,
        "baselines": baselines(data),
        "token_lengths": token_lengths(data),
    }
    if args.import_from:
        import_rows(results, args.import_from)
    done = {(r["regime"], r["variant"], r["seed"]) for r in results["runs"]}
    for seed in args.seeds:
        for name in args.variants or available():
            if (key, name, seed) in done:
                continue
            results["runs"].append(
                run_variant(args.regime, name, seed, args.workdir, data, args.steps)
            )
            print(json.dumps({k: v for k, v in results["runs"][-1].items() if k != "curve"}))
            results["invocations"][-1] = provenance.stamp(sys.argv, start=start)
            save(results, args.out)
    results["invocations"][-1] = provenance.stamp(sys.argv, start=start)
    save(results, args.out)


if __name__ == "__main__":
    main()
