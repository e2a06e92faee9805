"""Installed package versions, as recorded in run conditions, cache keys and engine info."""

import importlib.metadata as md


def package_version(dist: str) -> str:
    """The installed version of distribution `dist`, or "not installed"."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"
