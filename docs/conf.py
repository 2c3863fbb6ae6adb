"""Sphinx configuration: guides in Markdown (MyST), API reference from the docstrings.

The API pages are generated at build time from each package's ``__all__``
(docs/_api.py), so every public name is documented and a new one needs no edit here.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(DOCS.parent))

import _api  # noqa: E402
import _tables  # noqa: E402

import effjax  # noqa: E402

project = "effjax"
author = "effjax contributors"
copyright = "effjax contributors, Apache-2.0"
release = version = effjax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of each member

html_theme = "furo"
html_title = f"effjax {release}"

_api.write_pages(DOCS / "api")
_tables.write(DOCS / "guides")
