"""The arms of the evaluation: what each trained segmenter sees, and which arms it is compared with.

Every data arm trains a segmenter on the same training pairs, the whole labelled subset (the pairs the synthetic sets'
generators learnt from: an arm that trained on fewer would see less labelled data than the generator gave the others),
for the same number of iterations, with the same seeds, and keeps its final network (no arm selects a network by
validation: with a few validation pairs that choice is noise, and it would differ between arms). The arms:

- ``real``: the labelled training pairs with the segmentation bundle's default (light) augmentation;
- ``real + classic aug``: the same with classic augmentation (rotation, zoom, contrast, noise);
- for each synthetic set: ``real + <set>`` and ``real + classic aug + <set>`` (what a user runs), the set's controls
  declared by its method (``real + classic aug + control: ...``, :mod:`common.evaluation.controls`) and, on request,
  ``synthetic only: <set>`` (the Synthetic-Only score);
- for each method scheme asked for (e.g. GAUDA's online loop): the scheme's own configs from the method's bundle,
  trained on the labelled subset minus the validation pairs its online decisions need (the schemes compare with each
  other, all on the same pairs).

Each arm is compared by a paired difference over seeds with its ``references``: ``real`` and ``real + classic aug``
for the data arms; the schemes the method declares as its ``real`` and ``classic`` references for scheme arms.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.bundles import Bundle

from .controls import CONTROLS
from .provenance import load_synthetic_pairs, synthetic_method

__all__ = [
    "CLASSIC",
    "REAL",
    "SEGMENTATION_CONFIG",
    "Arm",
    "scheme_arms",
    "standard_arms",
    "synthetic_arms",
    "synthetic_set_name",
]

SEGMENTATION_CONFIG = str(Path(__file__).resolve().parents[2] / "bundles" / "segmentation" / "configs" / "train.json")
REAL, CLASSIC = "real", "real + classic aug"


@dataclass
class Arm:
    """One arm: its training entries (``{"image", "label"}``), whether classic augmentation is on, the config files
    of the segmenter it trains and their overrides, its validation pairs and the arms it is compared with."""

    name: str
    train: list[dict]
    classic: bool = False
    config_files: list[str] = field(default_factory=lambda: [SEGMENTATION_CONFIG])
    overrides: dict[str, Any] = field(default_factory=dict)
    validation: list[dict] = field(default_factory=list)
    references: dict[str, str] = field(default_factory=lambda: {"real": REAL, "classic": CLASSIC})


def _image_label(entries: Sequence[Mapping]) -> list[dict]:
    """Training entries without the provenance keys (a batch needs the same keys in every item)."""
    return [{"image": e["image"], "label": e["label"]} for e in entries]


def synthetic_set_name(datalist_path: str) -> str:
    """``<method> (<folder>)``: the run folder of a set written by ``scripts.augment`` (``<out>/synthetic``), else
    the set's own folder (sets side by side, e.g. ``sets/tau_1`` and ``sets/tau_0.5``, keep their names apart)."""
    folder = os.path.dirname(os.path.abspath(datalist_path))
    if os.path.basename(folder) == "synthetic":
        folder = os.path.dirname(folder)
    return f"{synthetic_method(datalist_path)} ({os.path.basename(folder)})"


def standard_arms(train: Sequence[dict]) -> list[Arm]:
    """``real`` and ``real + classic aug``."""
    return [Arm(REAL, _image_label(train)), Arm(CLASSIC, _image_label(train), classic=True)]


def real_repeats(num_real: int, num_synthetic: int, synthetic_share: float | None) -> int:
    """How often the real pairs are listed beside ``num_synthetic`` pairs so that these make up about
    ``synthetic_share`` of the list (at least once; once when the share is None)."""
    if synthetic_share is None:
        return 1
    if not 0.0 < synthetic_share < 1.0:
        raise ValueError(f"synthetic_share must be in (0, 1), got {synthetic_share}")
    return max(1, round(num_synthetic * (1.0 - synthetic_share) / (synthetic_share * num_real)))


def synthetic_arms(
    datalist_path: str,
    method: Bundle | None,
    train: Sequence[dict],
    out: str,
    image_size: int,
    seed: int,
    controls: bool = True,
    synthetic_only: bool = False,
    plain_synthetic: bool = True,
    synthetic_share: float | None = None,
) -> list[Arm]:
    """The arms of one synthetic set: with classic augmentation (the setting that matters) and, with
    ``plain_synthetic``, without; the method's controls (with classic augmentation) and, when asked, the set alone.
    ``synthetic_share``: repeat the real pairs so that the set makes up about this share of the training list (and
    of the batches drawn from it); None concatenates them once (a few real pairs beside many synthetic ones)."""
    name = synthetic_set_name(datalist_path)
    pairs = _image_label(load_synthetic_pairs(datalist_path))
    real = _image_label(train) * real_repeats(len(train), len(pairs), synthetic_share)
    arms = [Arm(f"real + {name}", real + pairs)] if plain_synthetic else []
    arms.append(Arm(f"{CLASSIC} + {name}", real + pairs, classic=True))
    for control in method.evaluation.get("controls", []) if method is not None and controls else []:
        if control not in CONTROLS:
            raise ValueError(
                f"bundle '{method.name}' declares an unknown control '{control}'; known: {sorted(CONTROLS)}"
            )
        folder = os.path.join(out, "controls", f"{name.replace(' ', '_').replace('(', '').replace(')', '')}_{control}")
        extra = CONTROLS[control](datalist_path, folder, train, image_size, seed)
        arms.append(Arm(f"{CLASSIC} + {name} control: {control.replace('_', ' ')}", real + extra, classic=True))
    if synthetic_only:
        arms.append(Arm(f"synthetic only: {name}", pairs))
    return arms


def scheme_arms(
    method: Bundle,
    schemes: Sequence[str],
    train: Sequence[dict],
    validation: Sequence[dict],
    generator: str | None,
    knobs: Mapping[str, Any],
) -> list[Arm]:
    """One arm per scheme of ``method`` (``evaluate.json`` ``"schemes"``), on the same training and validation
    pairs; a scheme that ``needs_generator`` reads the trained generator's folder through the bundle's
    ``generator_id``."""
    declared = method.evaluation.get("schemes", {})
    unknown = [s for s in schemes if s not in declared]
    if unknown:
        raise ValueError(f"method '{method.name}' has no scheme(s) {unknown}; it declares {sorted(declared)}")
    if not validation:
        raise ValueError("the schemes need validation pairs for their online decisions: set val_fraction > 0")
    by_role = {spec.get("reference"): name for name, spec in declared.items() if spec.get("reference")}
    references = {role: f"{method.name}: {by_role[role]}" for role in ("real", "classic") if role in by_role}
    arms = []
    for scheme in schemes:
        spec = declared[scheme]
        overrides = {"bundle_root": str(method.root), **dict(knobs)}
        if spec.get("needs_generator"):
            if generator is None:
                raise ValueError(
                    f"scheme '{scheme}' of '{method.name}' needs --generator: the trained generator's folder"
                )
            overrides[method.evaluation["generator_id"]] = os.path.abspath(generator)
        arms.append(
            Arm(
                f"{method.name}: {scheme}",
                _image_label(train),
                config_files=[method.config(f) for f in spec["config_files"]],
                overrides=overrides,
                validation=_image_label(validation),
                references=references,
            )
        )
    return arms
