"""Sphinx configuration for glimpse's documentation (``make docs``).

Built the way mne, mne-lsl and braindecode build theirs: the PyData theme,
numpydoc docstrings, an API reference generated from the installed code, and a
sphinx-gallery of example scripts that run at build time on a small simulated
session. Nothing is downloaded while building (no intersphinx inventories).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from glimpse.streaming.version import glimpse_version

DOCS = Path(__file__).resolve().parent

project = "glimpse"
author = "the glimpse developers"
copyright = "the glimpse developers"  # noqa: A001 (Sphinx's name)
release = glimpse_version()
version = release

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "examples", "sg_execution_times.rst"]
templates_path: list[str] = []
html_static_path = ["_static"]
default_role = "py:obj"  # `name` in a docstring links to it

# --------------------------------------------------------------------------- theme

html_theme = "pydata_sphinx_theme"
html_title = f"glimpse {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": []}
html_show_sourcelink = False

# --------------------------------------------------------------------------- API reference

autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "none"  # numpydoc docstrings carry the types; signatures stay readable
numpydoc_show_class_members = False  # autodoc lists members; numpydoc's tables would repeat them
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

PACKAGES = ("glimpse.streaming", "glimpse.models", "glimpse.service")


def _cannot_import(name: str) -> None:
    # walk_packages skips a sub-package it cannot import; a reference must not.
    raise ImportError(f"{name} cannot be imported, so its API reference cannot be built")


def public_modules() -> list[str]:
    """Every public module of the packages, found by walking the installed code.

    Modules split or added by a change appear in the reference without editing the
    documentation; names that start with ``_`` are private and left out.
    """
    names = []
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}.",
                                          onerror=_cannot_import):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return sorted(names)


def write_api_stubs(out: Path) -> None:
    """One page per module (``automodule`` with its members) under ``api/generated/``."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for name in public_modules():
        title = f"``{name}``"
        wanted[f"{name}.rst"] = f"{title}\n{'=' * len(title)}\n\n.. automodule:: {name}\n"
    for stale in out.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    for filename, text in wanted.items():
        path = out / filename
        if not path.exists() or path.read_text() != text:  # unchanged stubs keep Sphinx's cache
            path.write_text(text)


write_api_stubs(DOCS / "api" / "generated")

# --------------------------------------------------------------------------- gallery

sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",  # every plot_*.py runs at build time
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "matplotlib_animations": False,
    "reference_url": {},  # no intersphinx: nothing is fetched while building
    "backreferences_dir": None,
    "abort_on_example_error": True,
    "write_computation_times": False,
}
