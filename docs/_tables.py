"""The "choosing a variant" table, with its numbers read from the committed results files.

Written at build time to docs/guides/_variants_table.md (not committed), so the guide
shows what experiments/results/ holds and never a hand-copied number.
"""

from __future__ import annotations

import json
from pathlib import Path

from effjax.attention import registry

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"
BENCH = RESULTS / "bench_cpu" / "results.jsonl"
LISTOPS = RESULTS / "listops.json"
SEQ_LEN = 4096

#: What each variant is (from its docstring and tests); the numbers come from the files.
PROPERTIES = {
    # name: (cost per query, exactness, causal, decoding cache)
    "dense": ("O(S)", "exact (the reference)", "yes", "full key/value cache"),
    "chunked": ("O(S), memory O(T)", "exact (online softmax over key tiles)", "yes", "no"),
    "local": ("O(w)", "exact for its window mask", "yes", "rolling window cache"),
    "global_local": ("O(w + g)", "exact for window + global mask", "yes", "no"),
    "block_sparse": ("O(b (3 + g + r))", "exact for its block mask (random blocks)", "yes", "no"),
    "lsh": ("O(n_hashes · 2c)", "exact for its bucket mask (hashing approximates)", "yes", "no"),
    "performer": ("O(F H)", "unbiased estimate of softmax", "yes", "recurrent state"),
    "linear": ("O(H²)", "another kernel (elu+1), not softmax", "yes", "recurrent state"),
    "linformer": ("O(k)", "low-rank approximation", "no (refused)", "no"),
    "routing": (
        "O(T / C)",
        "exact for its k-means cluster mask",
        "yes",
        "key/value cache; each step reruns the causal pass over it (exact at the cache's length)",
    ),
    "sinkhorn": (
        "O(2b)",
        "own block + a softly sorted block",
        "yes (not SortCut)",
        "key/value cache; each step reruns the causal pass over it (exact)",
    ),
    "synthesizer": (
        "O(S)",
        "synthesised logits, optionally mixed with dot-product",
        "yes",
        "key/value cache, table rows by position (exact)",
    ),
    "persistent_memory": (
        "O(M + S)",
        "exact dense attention over memory + keys",
        "yes",
        "full key/value cache (the memory always seen)",
    ),
    "gaussian": ("O(w)", "fixed Gaussian weights (a convolution of the values)", "yes", "no"),
}
_UNDESCRIBED = ("see its docstring",) * 2 + ("-", "-")


def _bench() -> dict[tuple[str, str], dict]:
    records = [json.loads(line) for line in BENCH.read_text().splitlines() if line.strip()]
    return {
        (r["variant"], r["mode"]): r
        for r in records
        if r["kind"] == "attention" and r["seq_len"] == SEQ_LEN
    }


def _speedup(bench, variant: str, mode: str) -> str:
    mine, base = bench.get((variant, mode)), bench.get(("jax", mode))
    if not mine or not base or mine["status"] != "ok" or base["status"] != "ok":
        return "-"
    return f"{base['time_s'] / mine['time_s']:.1f}x"


def _megabytes(bench, variant: str) -> str:
    r = bench.get((variant, "fwd_bwd"))
    return f"{r['peak_bytes'] / 2**20:.0f}" if r and r.get("peak_bytes") else "-"


def _listops_accuracy() -> dict[str, dict[str, str]]:
    """Test accuracy (%) per regime and variant; the mean, with the count, over seeds.

    listops.json is a list of runs, or a dict holding them under "runs"; a run without a
    "regime" belongs to the unnamed one.
    """
    data = json.loads(LISTOPS.read_text())
    runs = data.get("runs") if isinstance(data, dict) else data
    if not isinstance(runs, list) or not all("variant" in r for r in runs):
        raise ValueError(f"{LISTOPS}: expected a list of runs with 'variant' (docs/_tables.py)")
    accuracies: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if r.get("test_accuracy") is not None:
            regime = accuracies.setdefault(r.get("regime", ""), {})
            regime.setdefault(r["variant"], []).append(100 * r["test_accuracy"])
    return {
        regime: {
            v: f"{sum(a) / len(a):.1f}" + (f" (mean of {len(a)})" if len(a) > 1 else "")
            for v, a in by_variant.items()
        }
        for regime, by_variant in sorted(accuracies.items())
    }


def variants_table() -> str:
    bench = _bench()
    listops = _listops_accuracy()
    base_mb = _megabytes(bench, "jax")
    regimes = " | ".join(f"ListOps {r} test acc. (%)".replace("  ", " ") for r in listops)
    lines = [
        f"| variant | cost per query | exactness | causal | padding | decoding "
        f"| fwd speed-up at T={SEQ_LEN} | fwd+bwd speed-up | fwd+bwd compiled MB "
        f"(jax.nn: {base_mb}) | {regimes} |",
        "|---" * (9 + len(listops)) + "|",
    ]
    # Every registered variant gets a row, described or not, so none is left out.
    names = [*PROPERTIES, *(n for n in registry.available() if n not in PROPERTIES)]
    for name in names:
        cost, exact, causal, decoding = PROPERTIES.get(name, _UNDESCRIBED)
        lines.append(
            f"| `{name}` | {cost} | {exact} | {causal} | yes | {decoding} "
            f"| {_speedup(bench, name, 'fwd')} | {_speedup(bench, name, 'fwd_bwd')} "
            f"| {_megabytes(bench, name)} | "
            + " | ".join(by_variant.get(name, "-") for by_variant in listops.values())
            + " |"
        )
    return "\n".join(lines) + "\n"


def write(folder: Path) -> None:
    path = folder / "_variants_table.md"
    text = variants_table()
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
