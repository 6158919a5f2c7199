"""``python tests/standalone_bundle.py ARGS`` from a bundle folder = ``python -m monai.bundle ARGS`` there, on a
machine where this project is not installed: ``common`` (and any other first-party package) may only come from the
bundle folder itself, whatever is installed in the environment."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import runpy
import sys

BUNDLE = os.getcwd()
FIRST_PARTY = {"common", "scripts"}


class OnlyFromBundle(importlib.abc.MetaPathFinder):
    """Finds first-party modules in the bundle folder only; elsewhere they do not exist."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in FIRST_PARTY:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [BUNDLE] if path is None else path)
        if spec is None or not os.path.abspath(spec.origin or "").startswith(BUNDLE + os.sep):
            raise ModuleNotFoundError(f"No module named {name!r} in the bundle folder {BUNDLE}", name=name)
        return spec


if __name__ == "__main__":
    sys.path[0] = BUNDLE  # as `python -m` puts the working directory first
    sys.meta_path.insert(0, OnlyFromBundle())
    sys.argv = ["monai.bundle", *sys.argv[1:]]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
