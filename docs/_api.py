"""Writes docs/api/<package>.rst from each public package's ``__all__``.

Every public name gets an autodoc entry under the package users import it from. A name
re-exported by several packages (``QuantizedDense`` in both effjax.layers and
effjax.compress) is indexed once, under the first; later pages show it with
``:no-index:`` so cross-references stay unambiguous.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

PACKAGES = {
    "effjax.attention": "Attention functions",
    "effjax.layers": "Flax layers",
    "effjax.models": "Models",
    "effjax.compress": "Compression",
    "effjax.train": "Training",
    "effjax.data": "Data",
    "effjax.bench": "Benchmarks",
    "effjax.testing": "Testing helpers",
    "effjax.configs": "Packaged configs",
}


def public_names(module) -> list[str]:
    """``__all__``, or the functions and classes a module without one defines."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def _directive(path: str, obj, seen: dict[int, str]) -> list[str]:
    if inspect.ismodule(obj):
        head = [f".. automodule:: {obj.__name__}", "   :members:"]
    elif inspect.isclass(obj):
        head = [f".. autoclass:: {path}", "   :members:"]
    elif callable(obj):
        head = [f".. autofunction:: {path}"]
    else:
        head = [f".. autodata:: {path}", "   :no-value:"]
    if id(obj) in seen:
        head.append("   :no-index:")
        head += ["", f"   The same object as :obj:`{seen[id(obj)]}`."]
    else:
        seen[id(obj)] = path
    return [*head, ""]


def page(package: str, title: str, seen: dict[int, str]) -> str:
    module = importlib.import_module(package)
    lines = [f"{package}: {title}", "=" * (len(package) + len(title) + 2), ""]
    lines += [f".. automodule:: {package}", "   :no-members:", ""]
    for name in public_names(module):
        lines += _directive(f"{package}.{name}", getattr(module, name), seen)
    return "\n".join(lines)


def write_pages(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    seen: dict[int, str] = {}
    names = []
    for package, title in PACKAGES.items():
        text = page(package, title, seen)
        path = folder / f"{package.removeprefix('effjax.')}.rst"
        if not path.exists() or path.read_text() != text:  # unchanged pages stay unrebuilt
            path.write_text(text)
        names.append(path.stem)
    index = ["API reference", "=============", "", ".. toctree::", "   :maxdepth: 1", ""]
    index += [f"   {n}" for n in names]
    (folder / "index.rst").write_text("\n".join(index) + "\n")
