import json

import jax.numpy as jnp
import numpy as np
import pytest

from effjax import cli
from effjax.bench import BenchConfig, measure, read_records, report, run_benchmark, suite

DESIGN_FIELDS = {
    "variant",
    "options",
    "mode",
    "batch",
    "seq_len",
    "heads",
    "head_dim",
    "dtype",
    "time_s",
    "time_s_min",
    "peak_bytes",
    "flops",
    "backend",
    "device_kind",
    "jax_version",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = BenchConfig(
        variants=("dense",),
        seq_lens=(64, 128),
        batch=1,
        heads=2,
        head_dim=16,
        min_repeats=1,
        max_repeats=2,
        min_time_s=0.0,
    )
    return out, run_benchmark(config, out, progress=False)


def test_records_carry_design_fields_and_files_are_written(quick_run):
    out, records = quick_run
    assert len(records) == 2 * 2 * 2  # (jax, dense) x 2 lengths x 2 modes
    on_disk = read_records(out / "results.jsonl")
    assert on_disk == json.loads(json.dumps(records))
    for r in on_disk:
        assert r.keys() >= DESIGN_FIELDS
        assert r["status"] == "ok" and r["time_s_min"] <= r["time_s"]
    for name in ("results.md", "time_attention_fwd.png", "memory_attention_fwd_bwd.png"):
        assert (out / name).stat().st_size > 0


def test_compiled_memory_of_dense_grows_quadratically(quick_run):
    # The [T, S] logits dominate: doubling T must roughly quadruple the temporaries. At
    # these lengths (one key block) dense runs XLA on CPU too, and its records say so.
    _, records = quick_run
    mem = {(r["variant"], r["seq_len"]): r["peak_bytes"] for r in records if r["mode"] == "fwd"}
    for name in ("jax", "dense"):
        assert 2.5 < mem[name, 128] / mem[name, 64] <= 4.0, name
    assert {r["implementation"] for r in records if r["variant"] == "dense"} == {"xla"}


def test_flops_are_counted_by_hand():
    shape = suite.Shape(batch=2, seq_len=10, heads=3, head_dim=4)
    # QK^T and PV: 2 * (2 T S H) per head per batch.
    assert suite.spec_for("dense").flops(shape, {}) == 2 * 3 * 2 * (2 * 10 * 10 * 4)
    assert suite.spec_for("local").flops(shape, {}) == suite.spec_for("dense").flops(shape, {})


def test_memory_limit_marks_oom_without_running():
    result = measure.measure(lambda x: x @ x.T, (jnp.ones((256, 256)),), memory_limit_bytes=1024)
    assert result.status == "oom" and result.peak_bytes > 1024 and result.time_s is None


def test_compile_only_records_memory_without_running():
    result = measure.measure(lambda x: x @ x.T, (jnp.ones((256, 256)),), run=False)
    assert result.status == "compiled" and result.time_s is None
    assert result.peak_bytes >= 2 * 256 * 256 * 4  # the argument and the output


@pytest.mark.parametrize(
    ("backend", "dtype", "want"),
    [
        # Dense goes chunked on CPU once the keys span more than one 512-key block.
        ("cpu", "float32", {"dense": "chunked", "persistent_memory": "chunked", "local": "xla"}),
        ("gpu", "bfloat16", {"dense": "cudnn", "persistent_memory": "cudnn", "local": "xla"}),
        ("tpu", "float32", {"dense": "pallas", "local": "pallas", "global_local": "pallas",
                            "persistent_memory": "pallas", "block_sparse": "xla"}),
    ],
)  # fmt: skip
def test_records_name_the_implementation_that_ran(backend, dtype, want):
    shape = suite.Shape(1, 4096, 8, 64)
    want = {"jax": "xla", "chunked": "chunked", "lsh": "xla", **want}
    got = {name: suite.implementation_of(name, shape, dtype, backend) for name in want}
    assert got == want
    assert suite.implementation_of("dense", suite.Shape(1, 512, 8, 64), backend="cpu") == "xla"


def test_compile_failure_is_recorded_not_raised():
    def bad(x):
        raise RuntimeError("boom")

    result = measure.measure(bad, (jnp.ones(3),))
    assert result.status == "error" and "boom" in result.error


def test_claims_table_flags_a_missed_target():
    base = {"kind": "attention", "mode": "fwd", "seq_len": 4096, "status": "ok", "flops": 8.0}
    records = [
        {**base, "variant": "jax", "time_s": 1.0, "peak_bytes": 1},
        {**base, "variant": "local", "time_s": 0.5, "peak_bytes": 1, "flops": 1.0},
    ]
    text = "\n".join(report.claim_lines(records))
    assert "local fwd at T=4096 >= 5x faster than jax.nn | 2.00x | NO" in text
    # 2x faster for 8x fewer FLOPs: a quarter of the saving turned into time.
    assert np.isclose(
        report.sparsity_efficiency(
            {(r["kind"], r["variant"], r["mode"], r["seq_len"]): r for r in records}, 4096
        )["local"],
        0.25,
    )


def test_profile_says_where_the_time_goes():
    base = {"kind": "attention", "mode": "fwd", "seq_len": 4096, "status": "ok"}
    records = [
        {**base, "variant": "jax", "time_s": 1.0, "flops": 8.0,
         "xla_cost": {"flops": 8.0, "transcendentals": 1.0, "bytes": 16.0}},
        {**base, "variant": "local", "time_s": 0.5, "flops": 1.0,
         "xla_cost": {"flops": 2.0, "transcendentals": 0.5, "bytes": 8.0, "loops": 0.0}},
        {**base, "variant": "lsh", "time_s": 0.5, "flops": 1.0,
         "xla_cost": {"flops": 1.5, "transcendentals": 0.5, "bytes": 3.0, "loops": 1.0}},
    ]  # fmt: skip
    index = {(r["kind"], r["variant"], r["mode"], r["seq_len"]): r for r in records}
    text = "\n".join(report.profile_lines(index, peak_flops=4.0))
    # 2 FLOPs executed per useful one, at 2 / 0.5 s = 4 FLOP/s = the peak; 8 bytes / 2 FLOPs;
    # 0.5 exps per useful FLOP; 0.5 s for 1 useful FLOP vs 1 s for 8.
    assert "| local | 2.00 | 100% | 4 | 500 | 4.00 |" in text
    assert "| lsh | >=1.50 | >=75% | 2 | >=500 | 4.00 |" in text


def test_results_md_lists_options_and_explains_an_empty_claims_table(quick_run):
    out, _ = quick_run
    text = (out / "results.md").read_text()
    assert "B=1, N=2, H=16, float32" in text
    assert "| attention | jax | jax.nn.dot_product_attention, the baseline" in text
    assert "| attention | dense | defaults |" in text
    claims = text.split("## Claims checked in this run")[1].split("##")[0]
    assert "No claim was checked in this run" in claims and "measured T=64, 128" in claims
    assert "|---" not in claims  # no empty table
    records = [{"kind": "attention", "variant": "local", "options": {"window_size": [8, 8]}}]
    assert "| attention | local | window_size=(8, 8) |" in report.options_lines(records)


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    assert read_records(path) == [{"a": 1}]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--variants", "nope"], "unknown variant"),
        (["bench", "--dtype", "int3"], "dtype must be one of"),
        (["bench", "--batch", "0"], "batch must be positive"),
        (["bench", "--seq-lens", "0,128"], "seq_lens must be positive"),
    ],
)
def test_bad_options_fail_before_running(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _peer_records(hf_times, effjax_times, pair="bigbird_block_sparse"):
    base = {"kind": "model", "mode": "fwd", "seq_len": 4096, "status": "ok"}
    return [
        {**base, "variant": f"{side}_{pair}", "time_s": float(np.median(t)), "times_s": t}
        for side, t in (("hf", hf_times), ("effjax", effjax_times))
    ]


@pytest.mark.parametrize(
    "hf_times, effjax_times, verdict, shown",
    [
        # Paired ratios 2.5, 2.4, 2.2, 2.6, 2.3: lower quartile 2.3 >= 2.
        ([5.0, 4.8, 4.4, 5.2, 4.6], [2.0] * 5, "yes", "2.40x (quartiles 2.30-2.50, 5 pairs)"),
        # 0.96x then 2.15x ... (the in-process flip of issue 17): quartiles straddle 2.
        ([1.92, 4.3, 1.9, 4.4, 4.2], [2.0] * 5, "within spread", "2.10x (quartiles 0.96-2.15"),
        ([3.0, 3.2, 3.1, 2.9, 3.3], [2.0] * 5, "NO", "1.55x (quartiles 1.50-1.60"),
        # One fast sample is no evidence.
        ([9.0], [2.0], "too few repetitions", "4.50x (quartiles 4.50-4.50, 1 pairs)"),
    ],
)
def test_peer_claims_hold_only_against_the_spread(hf_times, effjax_times, verdict, shown):
    text = "\n".join(report.claim_lines(_peer_records(hf_times, effjax_times)))
    assert "effjax bigbird_block_sparse model at T=4096 >= 2x faster" in text
    assert f"| {shown}" in text and text.count(f"| {verdict} |") == 1


def test_peer_ratios_pair_the_interleaved_samples():
    # Both frameworks slowed by the same background load in round 2: pairing cancels it.
    hf, mine = _peer_records([2.0, 8.0, 2.0, 2.0, 2.0], [1.0, 4.0, 1.0, 1.0, 1.0])
    spread = report.paired_ratios(hf, mine)
    assert (spread.median, spread.q1, spread.q3, spread.count) == (2.0, 2.0, 2.0, 5)
    assert report.claim_verdict(spread, 2.0) == "yes"
    assert report.paired_ratios({**hf, "status": "oom"}, mine) is None
    assert report.baseline_of("model", "hf_reformer_lsh") is None
    assert report.baseline_of("layer", "local") == "jax"


class _FakeWorker:
    """A worker answering from a script of times; serving a request moves the other
    worker's CPU clock by ``spin`` (a thread pool that keeps spinning while idle)."""

    def __init__(self, name, times, log, clocks, spin):
        self.name, self.times, self.log, self.clocks, self.spin = name, times, log, clocks, spin

    def request(self, op):
        self.log.append((self.name, op))
        for other in self.clocks:
            self.clocks[other] += self.spin if other != self.name else 1.0
        return {"ok": True, "time_s": self.times.pop(0)}

    def cpu_seconds(self):
        return self.clocks[self.name]


def test_peer_workers_are_timed_alternately_and_the_idle_one_is_watched():
    from effjax.bench import peers

    log, clocks = [], {"torch": 0.0, "effjax": 0.0}
    workers = {
        "torch": _FakeWorker("torch", [0.5] * 9, log, clocks, spin=0.25),
        "effjax": _FakeWorker("effjax", [0.3] * 9, log, clocks, spin=0.0),
    }
    # At least 3 rounds, then until 0.0 s passed (already): exactly 3, A B A B A B.
    times, idle = peers.interleaved_times(workers, min_pairs=3, max_pairs=9, min_time_s=0.0)
    assert log == [("torch", "time"), ("effjax", "time")] * 3
    assert times == {"torch": [0.5] * 3, "effjax": [0.3] * 3}
    # effjax's clock moved 0.25 s during each torch call; torch's stayed put meanwhile.
    assert idle == {"torch": 0.75, "effjax": 0.0}


def test_peer_worker_protocol_reports_failures():
    from effjax.bench import peers

    worker = peers.Worker("effjax")
    try:
        answer = worker.request(op="build", family="bigbird", setting="nope", seq_len=64, batch=1)
        assert answer["ok"] is False and answer["status"] == "error"
        answer = worker.request(op="time")  # nothing built
        assert answer["ok"] is False and "TypeError" in answer["error"]
        assert worker.cpu_seconds() > 0  # the worker's own clock, from /proc
        answer = worker.request(op="exit")  # the worker returns without answering
        assert answer["ok"] is False and answer["error"].startswith("worker exited 0")
    finally:
        worker.close()


def _one_shot_config(seq_len: int, **kinds) -> BenchConfig:
    """Dense only, one tiny length, forward, one timed call."""
    return BenchConfig(
        variants=("dense",),
        seq_lens=(seq_len,),
        modes=("fwd",),
        heads=2,
        head_dim=8,
        min_repeats=1,
        max_repeats=1,
        min_time_s=0.0,
        **kinds,
    )


def test_layer_records_time_whole_encoder_layers(tmp_path):
    config = _one_shot_config(seq_len=32, layers=True, training_layers=0)
    records = run_benchmark(config, tmp_path, progress=False)
    layers = {r["variant"]: r for r in records if r["kind"] == "layer"}
    assert set(layers) == {"jax", "dense"}
    # Same layer, same parameters: the attention core is the only difference, so the
    # compiled footprints of the two layers match to within the attention's temporaries.
    jax_bytes, dense_bytes = layers["jax"]["peak_bytes"], layers["dense"]["peak_bytes"]
    assert abs(jax_bytes - dense_bytes) < 0.5 * jax_bytes


def test_training_rows_run_memory_switches_beside_their_plain_model():
    from effjax.bench import report, training

    config = _one_shot_config(seq_len=8, layers=True, training_layers=1)
    variants = ("encoder", "encoder_bf16", "decoder", "decoder_reversible")
    records = list(training.training_records(config, {}, variants))
    assert [r["variant"] for r in records] == list(variants)
    assert all(r["status"] == "ok" and r["peak_bytes"] > 0 for r in records), records
    index = report._index(records)
    for variant in variants:
        ratio = report.speedup(index, variant, "fwd_bwd", 8, kind="training")
        assert (ratio is None) == (variant in ("encoder", "decoder"))
    assert index[("training", "encoder_bf16", "fwd_bwd", 8)]["dtype"] == "bfloat16"


def test_funnel_training_rows_count_fewer_flops_than_the_equal_depth_encoder():
    from effjax.bench import training

    config = _one_shot_config(seq_len=8, layers=True, training_layers=2)
    variants = ("encoder", "encoder_funnel", "encoder_funnel_upsample")
    rows = {r["variant"]: r for r in training.training_records(config, {}, variants)}
    assert rows["encoder_funnel"]["options"]["block_sizes"] == (1, 1)
    flops = {v: rows[v]["flops"] for v in variants}
    # The second block runs on 4 of the 8 positions; the decoder adds 2 full-length layers.
    assert flops["encoder_funnel"] < flops["encoder"] < flops["encoder_funnel_upsample"]
    assert all(r["status"] == "ok" and r["time_s"] > 0 for r in rows.values())
    assert training.funnel_blocks(12) == (4, 4, 4) and training.funnel_blocks(7) == (3, 2, 2)


@pytest.mark.slow
def test_peers_run_hugging_face_models_beside_effjax(tmp_path):
    pytest.importorskip("torch")
    config = _one_shot_config(seq_len=128, peers=True)
    records = run_benchmark(config, tmp_path, progress=False)
    models = {r["variant"]: r for r in records if r["kind"] == "model"}
    assert {"hf_bigbird_original_full", "effjax_bigbird_original_full"} <= models.keys()
    assert all(r["status"] == "ok" and r["time_s"] > 0 for r in models.values())
    assert "torch_version" in models["hf_reformer_full"]
    for record in models.values():  # its own process, one sample per interleaved round
        assert record["process"] == "separate" and len(record["times_s"]) == 1
        assert record["idle_peer_cpu_s"] is not None
