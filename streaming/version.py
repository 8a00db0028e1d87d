"""The installed glimpse version, stamped into every file glimpse writes."""

from __future__ import annotations

from importlib import metadata


def glimpse_version() -> str:
    """The installed glimpse version (``"unknown"`` when run from an uninstalled tree)."""
    try:
        return metadata.version("glimpse")
    except metadata.PackageNotFoundError:
        return "unknown"
