"""The effjax command's surface: --version, and help text that reads as plain text."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

import effjax
from effjax import cli


def _parsers():
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"effjax": parser, **{f"effjax {n}": p for n, p in subparsers.choices.items()}}


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"effjax {effjax.__version__}"


@pytest.mark.parametrize("name", ["effjax", "effjax bench", "effjax train"])
def test_help_is_plain_text_and_shows_every_default(name):
    parser = _parsers()[name]
    text = parser.format_help()
    assert parser.description and parser.description.strip()
    assert not re.search(r"``|:(func|class|mod):", text), text  # no reStructuredText
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        assert action.help, f"{name} {action.dest} has no help"
        shown = parser._get_formatter()._expand_help(action)
        if action.default not in (None, False):
            assert f"(default: {action.default})" in shown, f"{name} {action.dest}"


def test_train_lists_packaged_configs(capsys):
    assert cli.main(["train", "--list-configs"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["listops", "smoke"]


def test_train_without_config_or_workdir_is_a_usage_error(capsys):
    for argv in (["train"], ["train", "smoke"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert "CONFIG and --workdir are required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("backend", "last_len", "capped"), [("gpu", 65536, False), ("tpu", 65536, False),
                                        ("cpu", 16384, True)]
)  # fmt: skip
def test_make_bench_runs_the_accelerator_sweep_on_gpu_and_tpu(backend, last_len, capped):
    # `make bench`'s own command line, as the Makefile spells it, planned for each backend.
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    recipe = re.search(r"^bench: .*\n\t(.*)$", makefile, re.M).group(1)
    argv = shlex.split(recipe.replace("$(BENCH_OUT)", "out"))
    assert argv[0].endswith("/bin/effjax")
    config = cli.bench_config(cli.build_parser().parse_args(argv[1:]), backend)
    assert config.seq_lens[-1] == last_len and config.max_run_seq_len is None
    assert (config.memory_limit_bytes is not None) == capped  # OOM lengths are recorded
    assert config.modes == ("fwd", "fwd_bwd") and len(config.variants) > 10
