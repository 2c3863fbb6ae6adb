import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from effjax import provenance


def test_stamp_names_the_command_commit_and_wall_time():
    info = provenance.stamp(["experiments/mqar.py", "--quick", "a b"], start=time.time() - 5)
    assert info["command"] == "python experiments/mqar.py --quick 'a b'"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=Path(provenance.__file__).parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert info["commit"].removesuffix("+dirty") == head
    assert 5 <= info["wall_time_s"] < 60
    assert f"{os.cpu_count()} CPUs" in info["machine"] and "jax " in info["machine"]
    lines = provenance.stamp_lines(info)
    assert lines[0] == f"Command: `{info['command']}`  " and lines[-1].startswith("Wall time: ")


def test_writes_replace_the_file_whole_and_leave_no_scratch(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "r.json"
    provenance.write_json(path, {"a": 1})
    provenance.write_json(path, {"b": [2]})
    assert json.loads(path.read_text()) == {"b": [2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        provenance.write_text(path, "half")
    assert json.loads(path.read_text()) == {"b": [2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_merge_invocations_keeps_one_stamp_per_run():
    a = {"command": "python x.py", "commit": "c1", "wall_time_s": 10.0}
    a_later = {**a, "wall_time_s": 30.0}
    b = {"command": "python x.py --seed 1", "commit": "c1", "wall_time_s": 5.0}
    merged = provenance.merge_invocations([a, b], [a_later, b])
    assert merged == [a_later, b]
    assert provenance.merge_invocations([a_later], [a]) == [a_later]
