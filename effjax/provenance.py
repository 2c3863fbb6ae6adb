"""Where a result came from, and files that are written whole or not at all.

Every results file of ``experiments/`` and ``effjax bench`` states the command that
made it, the commit, the machine and the wall time: :func:`stamp` collects them and
:func:`stamp_lines` renders them for a markdown file. :func:`write_text` and
:func:`write_json` write through a scratch file and a rename, so an interrupted run
leaves the previous file or the new one, never half of one.

Example:
  >>> import time
  >>> from effjax import provenance
  >>> info = provenance.stamp(["experiments/mqar.py", "--quick"], start=time.time())
  >>> sorted(info)
  ['command', 'commit', 'cpu_time_s', 'date_utc', 'machine', 'wall_time_s']
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import resource
import shlex
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.cache
def commit() -> str:
    """The checkout's commit id, with ``+dirty`` when tracked files differ from it.

    Read once per process (at the first call; call it when a run starts): the code a
    process runs is the code it imported, whatever the checkout moves to meanwhile.
    """
    head = _git("rev-parse", "HEAD")
    if head is None:
        return "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """CPU count, platform, Python, and JAX's backend, device kind and version."""
    import jax

    device = jax.devices()[0]
    return (
        f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
        f"jax {jax.__version__} on {jax.default_backend()} ({device.device_kind})"
    )


def cpu_seconds() -> float:
    """User + system CPU time of this process so far: unlike wall time, it does not grow
    when other jobs share the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stamp(argv: Sequence[str], *, start: float) -> dict[str, Any]:
    """The provenance of a result: ``command``, ``commit``, ``machine``, ``wall_time_s``
    (since ``start``, a ``time.time()``), ``cpu_time_s`` (:func:`cpu_seconds`) and
    ``date_utc``."""
    return {
        "command": "python " + shlex.join(argv),
        "commit": commit(),
        "machine": machine(),
        "wall_time_s": round(time.time() - start, 1),
        "cpu_time_s": round(cpu_seconds(), 1),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    }


def stamp_lines(info: dict[str, Any]) -> list[str]:
    """A :func:`stamp` as markdown lines (a results file's provenance paragraph)."""

    def seconds(key: str) -> str:  # an imported record may say "not recorded"
        value = info.get(key, "not recorded")
        return f"{value:.0f} s" if isinstance(value, int | float) else str(value)

    lines = [
        f"Command: `{info['command']}`",
        f"Commit: {info['commit']}",
        f"Machine: {info['machine']}",
        f"Wall time: {seconds('wall_time_s')}, CPU time {seconds('cpu_time_s')} "
        f"(finished {info.get('date_utc', 'at an unrecorded time')} UTC)",
    ]
    return [line + "  " for line in lines[:-1]] + lines[-1:]


def merge_invocations(known: list[dict], more: list[dict]) -> list[dict]:
    """``known`` plus the stamps of ``more``; a stamp of the same command and commit as a
    known one (a run re-stamped as it saved its progress) replaces it when it ran longer."""
    merged = list(known)
    for info in more:
        key = (info["command"], info["commit"])
        same = [i for i, old in enumerate(merged) if (old["command"], old["commit"]) == key]
        if not same:
            merged.append(info)
        elif _seconds(info) > _seconds(merged[same[0]]):
            merged[same[0]] = info
    return merged


def _seconds(info: dict) -> float:
    value = info.get("wall_time_s")
    return value if isinstance(value, int | float) else 0.0


def write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (scratch file in the same directory, then
    ``os.replace``); creates the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented JSON, written atomically (:func:`write_text`)."""
    write_text(path, json.dumps(value, indent=2) + "\n")
