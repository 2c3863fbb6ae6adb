"""Mutation testing: does the default (not slow) test suite notice small bugs?

Each mutation below is a one-spot edit of ``effjax/attention``, ``effjax/compress``,
the int8 arrays of ``effjax/layers/quantized.py`` or the decoding caches of
``effjax/layers/cores`` that breaks a documented property (an exact text, found
exactly once, and its replacement). The tool copies the working tree to a scratch directory per
mutation, applies it there (your tree is never touched), and runs the not-slow
tests named beside it (files or test ids, to keep each run short). A mutation the
tests pass with is a *survivor*: a property nothing checks.

Usage::

  python tools/mutate.py              # every mutation; exit 1 on a survivor
  python tools/mutate.py --list       # names only
  python tools/mutate.py lsh_bucket_xR_only performer_constant_norms
  python tools/mutate.py --file effjax/attention/lsh.py   # the mutations of one file
  python tools/mutate.py --jobs 2     # two mutations at a time
  make mutate

A mutation whose text no longer occurs exactly once is reported as stale (also
exit 1): update it along with the code. Before mutating, the named tests run
once on the unmutated copy (skip with ``--no-baseline``), since a test that
already fails would "kill" every mutation.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ATTN, COMPRESS = "effjax/attention", "effjax/compress"
CORES = "effjax/layers/cores"
T_ATTN, T_COMPRESS, T_LAYERS = "tests/attention", "tests/compress", "tests/layers"


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # occurs exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest paths or node ids


MUTATIONS = (
    Mutation(
        "lsh_bucket_xR_only",  # argmax over xR instead of [xR, -xR]
        f"{ATTN}/lsh.py",
        "top >= -bottom, jnp.argmax",
        "top >= -jnp.inf, jnp.argmax",
        (
            f"{T_ATTN}/test_lsh.py::test_buckets_are_the_argmax_over_rotated_and_negated_projections",
        ),
    ),
    Mutation(
        "lsh_no_shared_key_correction",  # multi-round keys counted once per round
        f"{ATTN}/lsh.py",
        "logits = logits - jnp.log(jnp.maximum(count, 1).astype(jnp.float32))",
        "logits = logits",
        (f"{T_ATTN}/test_lsh.py",),
    ),
    Mutation(
        "lsh_self_logit_not_suppressed",
        f"{ATTN}/lsh.py",
        "SELF_LOGIT = -1e5",
        "SELF_LOGIT = 0.0",
        (f"{T_ATTN}/test_lsh.py",),
    ),
    Mutation(
        "performer_constant_norms",  # sqrt(H) instead of chi(H)-distributed row norms
        f"{ATTN}/kernel.py",
        "return (directions * norms[:, None])[:num_features]",
        "return (directions * jnp.sqrt(head_dim))[:num_features]",
        (
            f"{T_ATTN}/test_kernel.py::test_orthogonal_features_are_orthogonal_blocks_with_chi_norms",
        ),
    ),
    Mutation(
        "performer_key_norm_sign",  # exp(Wk + |k|^2/2): a biased softmax estimate
        f"{ATTN}/kernel.py",
        "logits = project(k) - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)",
        "logits = project(k) + 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)",
        (f"{T_ATTN}/test_kernel.py",),
    ),
    Mutation(
        "global_local_overflow_dropped",  # flags beyond max_global_tokens vanish as keys
        f"{ATTN}/global_local.py",
        "global_mask = global_mask & (jnp.cumsum(global_mask, axis=1) <= num_slots)",
        "global_mask = global_mask",
        (
            f"{T_ATTN}/test_global_local.py::test_flags_beyond_max_global_tokens_are_ordinary_tokens_under_jit",
        ),
    ),
    Mutation(
        "block_sparse_edge_rows_short",  # unused window slots stay empty
        f"{ATTN}/block_sparse.py",
        "spare = np.sum(~window_used, axis=1, keepdims=True)",
        "spare = 0 * np.sum(~window_used, axis=1, keepdims=True)",
        (
            f"{T_ATTN}/test_block_sparse.py::test_a_budget_that_covers_every_block_is_dense_attention",
        ),
    ),
    Mutation(
        "block_sparse_causal_random_in_window",  # random blocks may repeat block i - 1
        f"{ATTN}/block_sparse.py",
        "count = np.maximum(rows - 1 - g, 0)",
        "count = np.maximum(rows - g, 0)",
        (f"{T_ATTN}/test_block_sparse.py::test_causal_pattern_keeps_only_the_past",),
    ),
    Mutation(
        "local_causal_sees_future",
        f"{ATTN}/local.py",
        "    if is_causal:\n        right = 0\n    if implementation",
        "    if implementation",
        (f"{T_ATTN}/test_local.py",),
    ),
    Mutation(
        "window_mask_off_by_one",
        f"{ATTN}/masks.py",
        "seen = (rel >= -left * dilation)",
        "seen = (rel > -left * dilation)",
        (f"{T_ATTN}/test_masks.py",),
    ),
    Mutation(
        "default_scale_1_over_H",
        f"{ATTN}/_common.py",
        "return 1.0 / math.sqrt(head_dim) if scale is None",
        "return 1.0 / head_dim if scale is None",
        (f"{T_ATTN}/test_dense.py",),
    ),
    Mutation(
        "keyless_rows_not_zeroed",  # a query with no key would divide 0 by 0
        f"{ATTN}/_blockwise.py",
        "safe_total = jnp.where(has_key, total, 1.0)",
        "safe_total = total",
        (f"{T_ATTN}/test_dense.py::DenseVsNumpyTest",),
    ),
    Mutation(
        "dense_local_window_as_dense_mask",  # local_window_size would build a [T, S] mask
        f"{ATTN}/dense.py",
        "use_local = call.window is not None and",
        "use_local = False and",
        (f"{T_ATTN}/test_dense.py::DifferencesFromJaxTest",),
    ),
    Mutation(
        "dense_query_seq_lengths_ignored",
        f"{ATTN}/dense.py",
        "query_valid = None if q_lengths is None else",
        "query_valid = None if True else",
        (f"{T_ATTN}/test_dense.py::JaxArgumentsTest",),
    ),
    Mutation(
        "dense_local_window_off_by_one",  # the O(T w) path sees one key too many on the left
        f"{ATTN}/dense.py",
        "window=(left, 0 if call.is_causal else right),",
        "window=(left + 1, 0 if call.is_causal else right),",
        (f"{T_ATTN}/test_dense.py::DifferencesFromJaxTest",),
    ),
    Mutation(
        "dense_window_mask_off_by_one",  # the dense path (with a mask or bias) likewise
        f"{ATTN}/dense.py",
        "window = masks_lib.window_mask(dims.q_len, dims.kv_len, self.window)",
        "window = masks_lib.window_mask(dims.q_len, dims.kv_len, (self.window[0] + 1, 0))",
        (f"{T_ATTN}/test_dense.py::JaxArgumentsTest",),
    ),
    Mutation(
        "dense_key_value_seq_lengths_ignored",
        f"{ATTN}/dense.py",
        "    if kv_lengths is not None:\n        key_valid",
        "    if False:\n        key_valid",
        (f"{T_ATTN}/test_dense.py::DifferencesFromJaxTest",),
    ),
    Mutation(
        "lsh_padded_keys_keep_their_bucket",  # padding content moves real keys between chunks
        f"{ATTN}/lsh.py",
        "return jnp.where(real, buckets, num_buckets)",
        "return buckets",
        (f"{T_ATTN}/test_lsh.py::test_padding_content_changes_no_real_output",),
    ),
    Mutation(
        "lsh_causal_not_strict_by_default",  # the paper's layout: later tokens move chunks
        f"{ATTN}/lsh.py",
        "strict = is_causal and strict_causal and num_chunks > 1",
        "strict = is_causal and not strict_causal and num_chunks > 1",
        (f"{T_ATTN}/test_lsh.py::test_causal_outputs_do_not_depend_on_later_tokens",),
    ),
    Mutation(
        "lsh_strict_looks_back_into_another_bucket",
        f"{ATTN}/lsh.py",
        "look_back = (jnp.arange(total) > 0).reshape((1, 1, 1, total)) & ~first",
        "look_back = (jnp.arange(total) > 0).reshape((1, 1, 1, total))",
        (f"{T_ATTN}/test_lsh.py",),
    ),
    Mutation(
        "routing_padded_keys_seen",
        f"{ATTN}/routing.py",
        "mask = mask & key_real[:, :, :, None, :]",
        "mask = mask",
        (f"{T_ATTN}/test_routing.py",),
    ),
    Mutation(
        "routing_causal_padded_keys_keep_their_cluster",
        f"{ATTN}/routing.py",
        "k_cluster = jnp.where(padding_mask[:, None], k_cluster, num_clusters)",
        "k_cluster = k_cluster",
        (f"{T_ATTN}/test_routing.py",),
    ),
    Mutation(
        "routing_causal_window_ignores_clusters",
        f"{ATTN}/routing.py",
        "mask = in_range & (same == q_cluster[..., None])",
        "mask = in_range",
        (f"{T_ATTN}/test_routing.py",),
    ),
    Mutation(
        "sinkhorn_causal_block_sorted_with_itself",  # block i's own future in its partner
        f"{ATTN}/sinkhorn.py",
        "block_mask = jnp.asarray(np.tri(num_blocks, k=-1, dtype=bool))",
        "block_mask = jnp.asarray(np.tri(num_blocks, k=0, dtype=bool))",
        (f"{T_ATTN}/test_sinkhorn.py",),
    ),
    Mutation(
        "sinkhorn_own_block_not_causal",
        f"{ATTN}/sinkhorn.py",
        "own = own & jnp.asarray(np.tri(block_size, dtype=bool))[None, None]",
        "own = own",
        (f"{T_ATTN}/test_sinkhorn.py",),
    ),
    Mutation(
        "sinkhorn_padding_ignored",
        f"{ATTN}/sinkhorn.py",
        "        valid = padding_mask\n",
        "        valid = valid\n",
        (f"{T_ATTN}/test_sinkhorn.py",),
    ),
    Mutation(
        "global_local_unused_slot_written",  # fewer flags than slots: a token overwritten
        f"{ATTN}/global_local.py",
        "target = jnp.where(slot_used, slot_pos, dims.q_len)",
        "target = slot_pos",
        (f"{T_ATTN}/test_global_local.py",),
    ),
    Mutation(
        "traced_is_causal_not_refused_in_gaussian",
        f"{ATTN}/gaussian.py",
        '    is_causal = _common.check_static_bool("is_causal", is_causal)\n',
        "",
        (f"{T_ATTN}/test_contract.py::test_a_traced_is_causal_asks_for_a_static_bool",),
    ),
    Mutation(
        "decode_cache_overflow_one_late",  # the first token past the cache is not poisoned
        f"{CORES}/base.py",
        "return start, start + num_new > length.value",
        "return start, start + num_new > length.value + 1",
        (f"{T_LAYERS}/test_cores.py::test_a_full_decoding_cache_fails_loudly",),
    ),
    Mutation(
        "dense_decode_not_poisoned",
        f"{CORES}/dense.py",
        "return self.poison_if_full(out, full)",
        "return out",
        (f"{T_LAYERS}/test_cores.py::test_a_full_decoding_cache_fails_loudly",),
    ),
    Mutation(
        "local_decode_not_poisoned",
        f"{CORES}/local.py",
        "return self.poison_if_full(out, full)",
        "return out",
        (f"{T_LAYERS}/test_cores.py::test_a_full_decoding_cache_fails_loudly",),
    ),
    Mutation(
        "kernel_decode_not_poisoned",
        f"{CORES}/kernel.py",
        "return self.poison_if_full(out, position[1])",
        "return out",
        (f"{T_LAYERS}/test_cores.py::test_a_full_decoding_cache_fails_loudly",),
    ),
    Mutation(
        "empty_keys_not_handled",
        f"{ATTN}/_common.py",
        "return self.q_len == 0 or self.kv_len == 0",
        "return self.q_len == 0",
        (f"{T_ATTN}/test_contract.py",),
    ),
    Mutation(
        "traced_option_message",
        f"{ATTN}/helpers.py",
        "if isinstance(value, jax.core.Tracer):",
        "if False:",
        (f"{T_ATTN}/test_contract.py",),
    ),
    Mutation(
        "linformer_values_use_key_projection",
        f"{ATTN}/lowrank.py",
        "projected_value = _project(proj_v, value)",
        "projected_value = _project(proj_k, value)",
        (f"{T_ATTN}/test_lowrank.py",),
    ),
    Mutation(
        "int8_scale_per_last_axis",  # [D, N, H] kernels get H scales instead of N*H
        f"{COMPRESS}/quantize.py",
        "return 2 if is_head_projection and layer_ndim == 3 else 1",
        "return 1",
        (f"{T_COMPRESS}/test_quantize.py",),
    ),
    Mutation(
        "int8_scale_per_input_channel",  # max |w| over the output axes instead of the inputs
        "effjax/layers/quantized.py",
        "reduce_axes = tuple(range(num_stacked_axes, x.ndim - num_output_axes))",
        "reduce_axes = tuple(range(x.ndim - num_output_axes, x.ndim))",
        (f"{T_COMPRESS}/test_quantize.py",),
    ),
    Mutation(
        "int8_experts_share_scales",  # [E, D, F]: F scales shared by the E experts
        f"{COMPRESS}/_tree.py",
        "return blocks + int(experts)",
        "return blocks",
        (f"{T_COMPRESS}/test_quantize.py",),
    ),
    Mutation(
        "int8_reversible_blocks_share_scales",  # [L, ...]: one set of scales for all blocks
        f"{COMPRESS}/_tree.py",
        "return blocks + int(experts)",
        "return int(experts)",
        (f"{T_COMPRESS}/test_quantize.py",),
    ),
    Mutation(
        "fake_quant_no_straight_through",
        f"{COMPRESS}/quantize.py",
        "return x + jax.lax.stop_gradient(rounded - x)",
        "return rounded",
        (f"{T_COMPRESS}/test_quantize.py",),
    ),
    Mutation(
        "calibration_ignores_percentile",
        f"{COMPRESS}/quantize.py",
        "jnp.percentile(magnitudes, percentile)",
        "jnp.percentile(magnitudes, 100.0)",
        (f"{T_COMPRESS}/test_quantize.py",),
    ),
    Mutation(
        "kd_loss_without_T_squared",
        f"{COMPRESS}/distill.py",
        "return temperature**2 * _masked_mean(kl, mask)",
        "return _masked_mean(kl, mask)",
        (f"{T_COMPRESS}/test_distill.py",),
    ),
    Mutation(
        "magnitude_pruning_by_signed_value",
        f"{COMPRESS}/prune.py",
        "jax.tree_util.tree_map(jnp.abs, params), sparsity",
        "params, sparsity",
        (f"{T_COMPRESS}/test_prune.py",),
    ),
    Mutation(
        "keep_masks_lets_pruned_weights_move",
        f"{COMPRESS}/prune.py",
        "lambda u, p, k: jnp.where(k, u, -p.astype(u.dtype))",
        "lambda u, p, k: u",
        (f"{T_COMPRESS}/test_prune.py",),
    ),
    Mutation(
        "sparsity_schedule_linear",
        f"{COMPRESS}/prune.py",
        "(1.0 - progress) ** power",
        "(1.0 - progress)",
        (f"{T_COMPRESS}/test_prune.py",),
    ),
)


def _tree_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files (what a fresh checkout would hold)."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in listed.split("\0") if f and (root / f).is_file()]


def _copy_tree(root: Path, files: list[str], dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def apply(mutation: Mutation, tree: Path) -> None:
    """Applies ``mutation`` inside ``tree``; ValueError if its text is not found exactly once."""
    path = tree / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise ValueError(f"{mutation.old!r} occurs {count} times in {mutation.path}")
    path.write_text(text.replace(mutation.old, mutation.new))


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    """(pytest exit code, output tail) of the not-slow ``tests`` run in ``tree``: 0 passed,
    1 a test failed, anything else (collection error, no test) says nothing about the code."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow"]
    command += ["-p", "no:cacheprovider", *(["-n", "0"] if _has_xdist() else [])]
    try:
        done = subprocess.run(
            [*command, *tests], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return 1, f"timed out after {timeout:.0f} s"  # a hang counts as caught
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def _has_xdist() -> bool:
    try:
        import xdist  # noqa: F401
    except ImportError:
        return False
    return True


def check(mutation: Mutation, files: list[str], timeout: float) -> tuple[str, str, float]:
    """("killed" | "SURVIVED" | "STALE" | "BROKEN", detail, seconds) for one mutation;
    BROKEN = the tests did not run (import or collection error), which proves nothing."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutate-{mutation.name}-") as scratch:
        tree = Path(scratch)
        _copy_tree(ROOT, files, tree)
        try:
            apply(mutation, tree)
        except ValueError as error:
            return "STALE", str(error), time.perf_counter() - start
        code, tail = run_tests(tree, mutation.tests, timeout)
    status = {0: "SURVIVED", 1: "killed"}.get(code, "BROKEN")
    return status, tail, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutation names and exit")
    parser.add_argument(
        "--file", action="append", default=[], help="only mutations of this file (repeatable)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="mutations run at once")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutations {unknown}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.names] if args.names else list(MUTATIONS)
    if args.file:
        paths = {m.path for m in MUTATIONS}
        missing = [f for f in args.file if f not in paths]
        if missing:
            parser.error(f"no mutation of {missing}; mutated files: {', '.join(sorted(paths))}")
        chosen = [m for m in chosen if m.path in args.file]
    if args.list:
        print("\n".join(m.name for m in chosen))
        return 0
    files = _tree_files(ROOT)

    if not args.no_baseline:
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        with tempfile.TemporaryDirectory(prefix="mutate-baseline-") as scratch:
            _copy_tree(ROOT, files, Path(scratch))
            code, tail = run_tests(Path(scratch), tests, args.timeout)
        if code != 0:
            print(f"baseline: the unmutated tests fail ({tail}); fix them first", flush=True)
            return 2
        print(f"baseline: {tail}", flush=True)

    bad = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = {pool.submit(check, m, files, args.timeout): m for m in chosen}
        for future in concurrent.futures.as_completed(futures):
            status, detail, seconds = future.result()
            bad += status != "killed"
            print(f"{status:8s} {futures[future].name} ({seconds:.0f} s): {detail}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} mutations killed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
