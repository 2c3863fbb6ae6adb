"""The wheel as a user gets it: built, installed into a fresh virtual environment, run.

The fresh environment reuses this one's installed dependencies (a .pth line, so no
network and no editable effjax leaks in) and gets effjax only from the built wheel.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import effjax

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, **kwargs):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """effjax's wheel, built from a copy of the sources (the tree gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src)
    shutil.copytree(ROOT / "effjax", src / "effjax", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp, src])
    (found,) = tmp.glob("effjax-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """A fresh venv with the wheel installed; returns its bin/ and an environment to run in."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    target = Path(
        sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)})
    )
    # Dependencies from this environment; listed after the venv's own site-packages, so
    # effjax comes from the wheel.
    (target / "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", env_dir / "bin/python"]
    _run([*pip, "install", "-q", "--no-deps", "--no-index", wheel])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HOME=str(root), XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return env_dir / "bin", env | {"PWD": str(root)}


def test_wheel_ships_configs_license_and_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("effjax/configs/smoke.py", "effjax/configs/listops.py", "effjax/py.typed"):
        assert path in names
    dist_info = f"effjax-{effjax.__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "effjax = effjax.cli:main" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata


def test_installed_wheel_imports_from_the_venv_and_finds_its_configs(venv):
    bin_dir, env = venv
    cwd = env["PWD"]  # away from the repository: nothing importable from the sources
    where = [bin_dir / "python", "-c", "import effjax; print(effjax.__file__)"]
    out = _run(where, cwd=cwd, env=env)
    assert Path(out.strip()).is_relative_to(bin_dir.parent)
    listing = _run([bin_dir / "effjax", "train", "--list-configs"], cwd=cwd, env=env)
    assert listing.split()[0] == "listops" and "\nsmoke " in listing


@pytest.mark.slow
def test_installed_wheel_trains_smoke_and_runs_the_quick_bench(venv):
    bin_dir, env = venv
    cwd = Path(env["PWD"])
    argv = [bin_dir / "effjax", "train", "smoke", "--workdir", cwd / "run", "--no-progress"]
    summary = json.loads(_run(argv, cwd=cwd, env=env).strip().splitlines()[-1])
    assert summary["step"] == 150 and summary["validation/accuracy"] > 0.15  # chance: 0.1
    _run([bin_dir / "effjax", "bench", "--quick", "--out", cwd / "bench"], cwd=cwd, env=env)
    records = [json.loads(line) for line in (cwd / "bench/results.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in records} >= {"jax", "dense", "local", "performer"}
    assert all(r["status"] == "ok" for r in records)
    assert (cwd / "bench/results.md").read_text().startswith("# effjax bench results")
