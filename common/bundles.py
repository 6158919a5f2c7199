"""The bundles of this repository, and the methods among them, found from their folders (never listed by hand).

A bundle is a folder of ``bundles/`` with ``configs/metadata.json``. A *method* is a bundle that also has
``configs/evaluate.json``, its declaration to the shared evaluation (:mod:`common.evaluation`)::

    {"method": "gauda",                                  # the name its synthetic datalists carry
     "controls": ["extra_real_copies"],                  # control arms (common.evaluation.controls)
     "schemes": {"baseline": {"config_files": ["train_downstream.json"], "reference": "real"}, ...},
     "generator_id": "generator_ckpt_dir",              # config id a scheme reads the trained generator from
     "smoke_knobs": {"train": {...}, "inference": {...}},  # the tiniest budgets (benchmarks, tests)
     "benchmark": [{"name": "DDIM 50", "knobs": {"num_inference_steps": 50}}, ...]}

``scripts.augment``, ``scripts.evaluate`` and ``scripts.benchmark`` take their methods from :func:`find_methods`, so a
new method is a new bundle folder with these files, and no script changes.

A bundle's own Python package (``bundles/augpaint/augpaint/``) is named in its configs (``"_target_":
"augpaint.inpainter.LatentInpainter"``); :func:`add_to_path`, the first step of every ``initialize`` of those configs,
puts the bundle folder on ``sys.path`` so that works from the repository root, from the bundle's own folder (as model
zoo bundles run) and under ``torchrun`` alike.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = ["BUNDLES_DIR", "Bundle", "add_to_path", "find_bundles", "find_methods", "method_bundle"]

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


def add_to_path(bundle_root: str | os.PathLike) -> str:
    """Put the bundle folder ``bundle_root`` first on ``sys.path`` (once); returns its absolute path."""
    root = os.path.abspath(bundle_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


@dataclass(frozen=True)
class Bundle:
    """A bundle folder: its name, root and config files."""

    name: str
    root: Path

    def config(self, name: str) -> str:
        """Path of ``configs/<name>`` (``.json`` added when missing); an error names the bundle's configs."""
        file_name = name if name.endswith(".json") else f"{name}.json"
        path = self.root / "configs" / file_name
        if not path.is_file():
            available = sorted(p.name for p in (self.root / "configs").glob("*.json"))
            raise FileNotFoundError(f"bundle '{self.name}' has no configs/{file_name}; it has {available}")
        return str(path)

    @property
    def is_method(self) -> bool:
        return (self.root / "configs" / "evaluate.json").is_file()

    @cached_property
    def evaluation(self) -> dict[str, Any]:
        """The content of ``configs/evaluate.json`` (empty for a bundle that is not a method)."""
        if not self.is_method:
            return {}
        with open(self.config("evaluate")) as f:
            return json.load(f)


def find_bundles(bundles_dir: str | os.PathLike | None = None) -> dict[str, Bundle]:
    """Every bundle under ``bundles_dir`` (default the repository's ``bundles/``), by name."""
    root = Path(bundles_dir) if bundles_dir is not None else BUNDLES_DIR
    return {
        path.name: Bundle(path.name, path)
        for path in sorted(root.iterdir())
        if (path / "configs" / "metadata.json").is_file()
    }


def find_methods(bundles_dir: str | os.PathLike | None = None) -> dict[str, Bundle]:
    """The method bundles (those with ``configs/evaluate.json``), by the method name they declare."""
    methods = {}
    for bundle in find_bundles(bundles_dir).values():
        if bundle.is_method:
            methods[bundle.evaluation.get("method", bundle.name)] = bundle
    return methods


def method_bundle(name: str, bundles_dir: str | os.PathLike | None = None) -> Bundle:
    """The bundle of method ``name``; an error lists the methods there are."""
    methods = find_methods(bundles_dir)
    if name not in methods:
        raise ValueError(f"unknown method '{name}'; the bundles define {sorted(methods)}")
    return methods[name]
