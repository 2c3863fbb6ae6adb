"""Every example in effjax's docstrings runs and prints what it says (doctest).

One test per module that has examples, so the suite's workers share them out. Examples
use tiny shapes; one that cannot run here (it needs a download, or writes a dataset)
says so with ``# doctest: +SKIP``.
"""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import effjax

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PACKAGES = ("attention", "layers", "models", "compress", "train", "data", "bench")


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(effjax.__path__, "effjax.")]
    return sorted(["effjax", *names])


def _tests(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    return [t for t in doctest.DocTestFinder().find(module, module_name) if t.examples]


WITH_EXAMPLES = [name for name in _modules() if _tests(name)]


def test_examples_are_found():
    # A broken finder would make every doctest below vanish and pass.
    assert {"effjax.attention.local", "effjax.testing", "effjax.train.config"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("module_name", WITH_EXAMPLES)
def test_docstring_examples_run(module_name):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failures = []
    for test in _tests(module_name):
        runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_has_a_docstring(package):
    module = importlib.import_module(f"effjax.{package}")
    missing = [
        name
        for name in module.__all__
        if (inspect.isfunction(obj := getattr(module, name)) or inspect.isclass(obj))
        and not inspect.getdoc(obj)
    ]
    assert not missing, f"effjax.{package}: no docstring for {missing}"
