"""The log-log plots of a benchmark run: time and compiled memory against length.

Each figure is described by a :class:`Figure` (pure data, tested) before matplotlib
draws it: ticks at the measured lengths, O(T) and O(T^2) guide lines through the
baseline's first point, points over the memory limit (OOM) and failed programs marked
where they would be, one line style per variant, and the run's shapes in the title.
Units are the tables' (results.md): milliseconds and MB (2^20 bytes).
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: field of a record -> (file prefix, axis label, factor from the record's unit).
QUANTITIES = {
    "time_s": ("time", "time (ms, median)", 1e3),
    "peak_bytes": ("memory", "compiled memory (MB)", 2.0**-20),
}
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


@dataclasses.dataclass(frozen=True)
class Line:
    """One variant's measured points and the style that tells it from the others."""

    label: str
    x: tuple[int, ...]
    y: tuple[float, ...]
    linestyle: str
    marker: str


@dataclasses.dataclass(frozen=True)
class Failed:
    """A length a variant could not run: ``status`` is "oom" or "error".

    ``y`` is its compiled footprint when known (memory plots), else None: it is then
    drawn at the top of the axes.
    """

    label: str
    seq_len: int
    status: str
    y: float | None


@dataclasses.dataclass(frozen=True)
class Figure:
    """Everything one plot shows, before drawing."""

    name: str
    title: str
    ylabel: str
    ticks: tuple[int, ...]
    lines: tuple[Line, ...]
    guides: tuple[Line, ...]
    failed: tuple[Failed, ...]


def line_styles(variants: Iterable[str]) -> dict[str, tuple[str, str]]:
    """(linestyle, marker) per variant, no two alike, in the order the variants come.

    Example:
      >>> line_styles(["jax", "dense", "local"])
      {'jax': ('-', 'o'), 'dense': ('--', 's'), 'local': ('-.', '^')}
    """
    # 4 line styles x 10 markers give lcm(4, 10) = 20 distinct pairs (and colours differ).
    return {
        v: (_LINESTYLES[i % len(_LINESTYLES)], _MARKERS[i % len(_MARKERS)])
        for i, v in enumerate(dict.fromkeys(variants))
    }


def guide_lines(x0: int, y0: float, ticks: Iterable[int]) -> tuple[Line, ...]:
    """O(T) and O(T^2) through ``(x0, y0)`` over ``ticks``.

    Example:
      >>> linear, quadratic = guide_lines(256, 1.0, (256, 512, 1024))
      >>> linear.y, quadratic.y
      ((1.0, 2.0, 4.0), (1.0, 4.0, 16.0))
    """
    xs = tuple(sorted(ticks))
    return tuple(
        Line(label, xs, tuple(y0 * (x / x0) ** power for x in xs), ":", "")
        for label, power in (("O(T)", 1), ("O(T²)", 2))
    )


def shape_title(rows: list[dict[str, Any]]) -> str:
    """``B=1, N=8, H=64, float32, cpu (device kind)`` from the records of one plot."""
    first = rows[0]
    device = first.get("device_kind", "")
    backend = first.get("backend", "")
    where = f"{backend} ({device})" if device and device != backend else backend
    return (
        f"B={first['batch']}, N={first['heads']}, H={first['head_dim']}, {first['dtype']}, {where}"
    )


def figures(records: list[dict[str, Any]]) -> list[Figure]:
    """The figures of a run: per (kind, mode), one of time and one of compiled memory."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["kind"], r["mode"])].append(r)
    out = []
    for (kind, mode), rows in groups.items():
        ticks = tuple(sorted({r["seq_len"] for r in rows}))
        styles = line_styles(r["variant"] for r in rows)
        for field, (prefix, ylabel, factor) in QUANTITIES.items():
            lines, failed = [], []
            for variant, (linestyle, marker) in styles.items():
                mine = sorted(
                    (r for r in rows if r["variant"] == variant), key=lambda r: r["seq_len"]
                )
                ok = [r for r in mine if r["status"] == "ok" and r.get(field) is not None]
                if ok:
                    x = tuple(r["seq_len"] for r in ok)
                    y = tuple(r[field] * factor for r in ok)
                    lines.append(Line(variant, x, y, linestyle, marker))
                for r in mine:
                    if r["status"] != "ok":
                        value = r.get(field)
                        y = value * factor if value is not None else None
                        failed.append(Failed(variant, r["seq_len"], r["status"], y))
            anchor = lines[0] if lines else None  # the baseline comes first in a run
            guides = guide_lines(anchor.x[0], anchor.y[0], ticks) if anchor else ()
            out.append(
                Figure(
                    name=f"{prefix}_{kind}_{mode}.png",
                    title=f"{kind} {mode}: {shape_title(rows)}",
                    ylabel=ylabel,
                    ticks=ticks,
                    lines=tuple(lines),
                    guides=guides,
                    failed=tuple(failed),
                )
            )
    return out


def draw(figure: Figure, path: Path) -> None:
    """Draws ``figure`` into the PNG ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    colors = {}
    for line in figure.lines:
        (handle,) = ax.plot(
            line.x,
            line.y,
            linestyle=line.linestyle,
            marker=line.marker,
            label=line.label,
            markersize=5,
        )
        colors[line.label] = handle.get_color()
    for guide in figure.guides:
        ax.plot(guide.x, guide.y, color="0.25", linestyle=(0, (1, 3)), linewidth=0.9)
        ax.annotate(
            guide.label,
            (guide.x[-1], guide.y[-1]),
            textcoords="offset points",
            xytext=(5, 0),
            color="0.25",
            fontsize=8,
            va="center",
        )
    top = ax.get_ylim()[1]
    kinds = {}
    for i, f in enumerate(figure.failed):
        kind = "OOM" if f.status == "oom" else "error"
        kinds[kind] = True
        y = f.y if f.y is not None else top
        color = colors.get(f.label, "black")
        ax.scatter([f.seq_len], [y], marker="x", s=60, color=color, zorder=3)
        ax.annotate(
            f"{f.label} {kind}",
            (f.seq_len, y),
            textcoords="offset points",
            xytext=(5, -10 - 9 * (i % 3)),
            fontsize=7,
            color=color,
        )
    for kind in kinds:  # one legend entry per kind of failure, in black
        ax.scatter([], [], marker="x", color="black", label=f"{kind} (not run)")
    ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel=figure.ylabel)
    ax.set_title(figure.title, fontsize=10)
    ax.xaxis.set_major_locator(FixedLocator(figure.ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    # Room on the right for the guides' and failures' labels.
    ax.set_xlim(figure.ticks[0] / 1.25, figure.ticks[-1] * 1.9)
    ax.set_xticklabels([str(t) for t in figure.ticks])  # as the tables write T
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write_plots(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """time_<kind>_<mode>.png and memory_<kind>_<mode>.png in ``out_dir``; returns their paths."""
    written = []
    for figure in figures(records):
        draw(figure, Path(out_dir) / figure.name)
        written.append(Path(out_dir) / figure.name)
    return written
