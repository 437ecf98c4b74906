"""Run from a source checkout, whatever the install.

Installed, `caffelike.proto`, `caffelike.layers` and `caffelike.zoo` are the checkout's top-level `proto/`,
`layers/` and `zoo/` folders, mapped in by setuptools (`package-dir` in pyproject.toml).  When Python finds this
`caffelike/` folder in a checkout instead (the working directory is the repository root, or the root is on
`sys.path`), nothing maps them: a regular `pip install .` leaves its copies in site-packages, where a package
imported from the checkout never looks.  This finder maps them the same way, from the folders beside this one.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import pathlib
import sys

SERVED = ("proto", "layers", "zoo")  # top-level folders of the checkout that install as caffelike.<name>


class SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds `caffelike.<name>` in `<root>/<name>/` for the SERVED names, and nothing else."""

    def __init__(self, root: pathlib.Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != "caffelike" or name not in SERVED:
            return None
        init = self.root / name / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def install(package_dir: pathlib.Path) -> None:
    """Add the finder when `package_dir` (this package's folder) sits in a checkout whose served folders are not
    inside it; an install that copied them in (a regular or editable install's own path) needs nothing."""
    root = package_dir.parent
    if (package_dir / "proto").is_dir() or not (root / "proto" / "caffe.proto").is_file():
        return
    if not any(isinstance(f, SourceTreeFinder) for f in sys.meta_path):
        sys.meta_path.append(SourceTreeFinder(root))
