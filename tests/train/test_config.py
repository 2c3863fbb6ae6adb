"""Config files: loading, unknown fields, resumable changes, input checks."""

import dataclasses
from pathlib import Path

import pytest

from effjax.train import tasks
from effjax.train.config import incompatibilities, load_config, packaged_configs, to_json

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["smoke", "listops"])
def test_repository_configs_load(name):
    config = load_config(ROOT / "configs" / f"{name}.py")
    assert config.name.startswith(name)
    tasks.check_inputs(config)  # vocabulary and lengths fit the model
    assert incompatibilities(to_json(config), config) == []


def test_packaged_configs_load_by_name_and_equal_the_repository_files(tmp_path, monkeypatch):
    assert list(packaged_configs()) == ["listops", "smoke"]
    for name in packaged_configs():
        assert load_config(name) == load_config(ROOT / "configs" / f"{name}.py")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").write_text("from effjax.configs.listops import config\n")
    assert load_config("smoke").name == "listops-dense"  # an existing file wins over a name
    with pytest.raises(ValueError, match=r"'nope' does not exist.*packaged: listops, smoke"):
        load_config("nope")


def test_unknown_nested_field_names_class_and_field(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("from effjax.data.listops import ListOpsSpec\nspec = ListOpsSpec(max_dept=3)\n")
    with pytest.raises(ValueError, match="unknown field 'max_dept' in ListOpsSpec; known"):
        load_config(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.py")
    path.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines neither `config` nor `get_config"):
        load_config(path)


def test_run_control_fields_may_change_on_resume():
    config = load_config(ROOT / "configs/smoke.py")
    saved = to_json(config)
    longer_logs = config.replace(run=dataclasses.replace(config.run, log_every=7, eval_every=3))
    assert incompatibilities(saved, longer_logs) == []
    other_seed = config.replace(run=dataclasses.replace(config.run, seed=1))
    assert incompatibilities(saved, other_seed) == ["run.seed: checkpoint has 0, config has 1"]
    # --steps changes the schedule's length when decay_steps follows num_steps.
    (problem,) = incompatibilities(saved, config.with_steps(300))
    assert problem.startswith("optimizer.decay_steps: checkpoint has 150, config has 300")


def test_check_inputs_catches_small_vocabulary_and_positions():
    config = load_config(ROOT / "configs/smoke.py")
    with pytest.raises(ValueError, match=r"model.vocab_size=10 is smaller than .* \(17\)"):
        tasks.check_inputs(config.replace(model=config.model.replace(vocab_size=10)))
    short = config.model.replace(max_position_embeddings=16)
    with pytest.raises(ValueError, match="inputs pad to 48 tokens"):
        tasks.check_inputs(config.replace(model=short))
