"""What the benchmark plots show: measured ticks, guides, failures marked, styles, shapes."""

import numpy as np

from effjax.bench import plots

ENV = {"batch": 2, "heads": 4, "head_dim": 16, "dtype": "bfloat16", "backend": "gpu"}


def _record(variant, seq_len, time_s, peak_bytes, status="ok", kind="attention", mode="fwd"):
    return {
        **ENV,
        "kind": kind,
        "mode": mode,
        "variant": variant,
        "seq_len": seq_len,
        "time_s": time_s,
        "peak_bytes": peak_bytes,
        "status": status,
        "device_kind": "NVIDIA H200",
    }


RECORDS = [
    _record("jax", 384, 0.002, 3 * 2**20),
    _record("local", 384, 0.001, 2**20),
    _record("jax", 1000, 0.010, 12 * 2**20),
    _record("local", 1000, 0.003, 2 * 2**20),
    _record("jax", 3000, None, 90 * 2**20, status="oom"),  # compiled, over the limit
    _record("local", 3000, None, None, status="error"),
]


def _by_name():
    return {f.name: f for f in plots.figures(RECORDS)}


def test_ticks_units_and_title():
    figs = _by_name()
    assert set(figs) == {"time_attention_fwd.png", "memory_attention_fwd.png"}
    time, memory = figs["time_attention_fwd.png"], figs["memory_attention_fwd.png"]
    assert time.ticks == memory.ticks == (384, 1000, 3000)  # the measured lengths
    # The tables' units: milliseconds and MB.
    (jax_time,) = [line for line in time.lines if line.label == "jax"]
    assert jax_time.x == (384, 1000) and np.allclose(jax_time.y, (2.0, 10.0))
    (jax_memory,) = [line for line in memory.lines if line.label == "jax"]
    assert np.allclose(jax_memory.y, (3.0, 12.0))
    assert "ms" in time.ylabel and "MB" in memory.ylabel
    for text in ("B=2", "N=4", "H=16", "bfloat16", "gpu (NVIDIA H200)"):
        assert text in time.title


def test_failures_are_marked_where_they_happened():
    time, memory = _by_name()["time_attention_fwd.png"], _by_name()["memory_attention_fwd.png"]
    assert {(f.label, f.seq_len, f.status) for f in time.failed} == {
        ("jax", 3000, "oom"),
        ("local", 3000, "error"),
    }
    assert all(f.y is None for f in time.failed)  # no time: drawn at the top
    (oom,) = [f for f in memory.failed if f.status == "oom"]
    assert oom.y == 90.0  # its compiled footprint, in MB


def test_guides_grow_as_t_and_t_squared_from_the_baseline():
    time = _by_name()["time_attention_fwd.png"]
    linear, quadratic = time.guides
    assert linear.label == "O(T)" and quadratic.label == "O(T²)"
    assert linear.x == quadratic.x == (384, 1000, 3000)
    assert linear.y[0] == quadratic.y[0] == 2.0  # through jax's first point
    np.testing.assert_allclose(linear.y[-1] / linear.y[0], 3000 / 384)
    np.testing.assert_allclose(quadratic.y[-1] / quadratic.y[0], (3000 / 384) ** 2)


def test_every_variant_gets_its_own_line_style():
    names = [f"v{i}" for i in range(20)]
    styles = plots.line_styles(names)
    assert len(set(styles.values())) == 20


def test_plots_are_written(tmp_path):
    written = plots.write_plots(RECORDS, tmp_path)
    assert sorted(p.name for p in written) == ["memory_attention_fwd.png", "time_attention_fwd.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no leftovers
