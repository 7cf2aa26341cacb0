"""Sphinx configuration for the mmarray documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``.  The build is
offline: no intersphinx inventories are fetched, and the example notebook is
rendered with the outputs stored in it (``tests/test_docs.py`` executes it).
"""

from __future__ import annotations

import pathlib
import re

import mmarray

project = "mmarray"
author = "the mmarray developers"
copyright = "the mmarray developers"
release = mmarray.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_copybutton",
    "myst_nb",  # Markdown pages (it includes myst-parser) and the notebook
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# -- API reference ---------------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"  # numpydoc sections carry the types
autodoc_preserve_defaults = True  # show `np.uint8`, not "<class 'numpy.uint8'>"
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True}
numpydoc_show_class_members = False  # the class template lists members itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- Markdown and notebooks --------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # never run code at build time: tests/test_docs.py does
nb_merge_streams = True

# -- HTML ------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"mmarray {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
# Pages without sub-pages get no (empty) section navigation on the left.
_NO_SUBPAGES = ["index", "getting-started", "examples/quickstart", "migrating", "scaling"]
if not (pathlib.Path(__file__).parent / "benchmarks.md").exists():
    _NO_SUBPAGES.append("performance")
html_sidebars = {page: [] for page in _NO_SUBPAGES}
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 8,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}

copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# -- Optional content ----------------------------------------------------------------
# Pages and images that teammates add (the benchmark write-up and its chart)
# are wrapped in <!-- if-exists: PATH --> ... <!-- end-if -->; the block is
# dropped while PATH (relative to docs/) is missing, so the build passes with
# -W either way.
_DOCS = pathlib.Path(__file__).resolve().parent
_IF_EXISTS = re.compile(r"<!-- if-exists: (\S+) -->\n(.*?)<!-- end-if -->\n?", re.S)


def _drop_missing(app, docname, source):
    source[0] = _IF_EXISTS.sub(
        lambda m: m.group(2) if (_DOCS / m.group(1)).exists() else "", source[0]
    )


def setup(app):
    app.connect("source-read", _drop_missing)
