"""What a data set's orientation allows: which flips are valid and which class pairs swap under a left-right flip.

Declared in ``classes.json`` next to the class names (keys that are not digits are not class names)::

    {"0": "background", "1": "right_lung", "2": "left_lung", "3": "heart",
     "lateral_pairs": [[1, 2]], "flips": ["left_right"]}

Without a declaration the safe defaults hold: class names with a left/right marker (``left_``, ``_left``, ``right_``,
``l_``/``r_``, ``_l``/``_r``, any case) are paired when the rest of the name matches, left-right flips are valid (they
swap each pair's labels), and up-down flips are not (most images have a fixed up and down).
:class:`RandLateralFlipd` flips an image/mask pair left-right and swaps the paired labels, so the left class stays on
the left of the anatomy; a flip that cannot swap (an image alone, a latent of an image) must not be used on data with
pairs, which :meth:`Orientation.allows_plain_flip` tells.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Flip, MapTransform, RandomizableTransform

__all__ = ["FLIPS", "Orientation", "RandLateralFlipd", "detect_lateral_pairs", "orientation_from_classes"]

FLIPS = {"up_down": 0, "left_right": 1}  # name -> spatial axis of a (C, H, W) item
_SIDES = {"left": "left", "l": "left", "right": "right", "r": "right"}
_PREFIX = re.compile(r"^(left|right|l|r)[_\- ]+(.+)$", re.IGNORECASE)
_SUFFIX = re.compile(r"^(.+?)[_\- ]+(left|right|l|r)$", re.IGNORECASE)


def _side_and_stem(name: str) -> tuple[str, str] | None:
    """``("left", "lung")`` for ``left_lung``, ``Lung_L``, ``r-kidney`` ...; None without a marker."""
    for pattern, side_group, stem_group in ((_PREFIX, 1, 2), (_SUFFIX, 2, 1)):
        match = pattern.match(name.strip())
        if match:
            return _SIDES[match.group(side_group).lower()], match.group(stem_group).lower()
    return None


def detect_lateral_pairs(class_names: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs ``(left index, right index)`` of the classes whose names differ only by a left/right marker."""
    sides: dict[str, dict[str, int]] = {}
    for index, name in enumerate(class_names):
        if index == 0:
            continue
        found = _side_and_stem(str(name))
        if found is not None:
            side, stem = found
            sides.setdefault(stem, {})[side] = index
    return sorted((found["left"], found["right"]) for found in sides.values() if {"left", "right"} <= set(found))


@dataclass(frozen=True)
class Orientation:
    """Valid flips (names of :data:`FLIPS`) and the class pairs a left-right flip swaps."""

    flips: tuple[str, ...] = ("left_right",)
    lateral_pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.flips) - set(FLIPS))
        if unknown:
            raise ValueError(f"unknown flip(s) {unknown}; the flips are {sorted(FLIPS)}")
        seen = [c for pair in self.lateral_pairs for c in pair]
        if len(seen) != len(set(seen)) or any(c <= 0 for c in seen):
            raise ValueError(f"lateral pairs {list(self.lateral_pairs)} must be disjoint foreground classes")

    @property
    def flip_axes(self) -> tuple[int, ...]:
        """The spatial axes (0 up-down, 1 left-right) of the valid flips."""
        return tuple(sorted(FLIPS[name] for name in self.flips))

    def allows_plain_flip(self, name: str) -> bool:
        """Whether flip ``name`` is valid for something that cannot swap labels (an image alone, a latent)."""
        return name in self.flips and not (name == "left_right" and self.lateral_pairs)

    def swap_table(self, num_classes: int) -> np.ndarray:
        """``table[c]`` is the class ``c`` becomes under a left-right flip."""
        table = np.arange(num_classes)
        for left, right in self.lateral_pairs:
            if max(left, right) >= num_classes:
                raise ValueError(f"lateral pair {(left, right)} is outside classes 0..{num_classes - 1}")
            table[left], table[right] = right, left
        return table


def orientation_from_classes(content: Mapping, class_names: Sequence[str]) -> Orientation:
    """The orientation a ``classes.json`` content declares (``lateral_pairs``, ``flips``), or the defaults (see the
    module docstring) for what it leaves out."""
    pairs = content.get("lateral_pairs")
    lateral = detect_lateral_pairs(class_names) if pairs is None else [tuple(int(c) for c in pair) for pair in pairs]
    if any(len(pair) != 2 for pair in lateral):
        raise ValueError(f"lateral_pairs must be pairs of class indices, got {pairs}")
    flips = content.get("flips", ["left_right"])
    return Orientation(flips=tuple(flips), lateral_pairs=tuple((a, b) for a, b in lateral))


class RandLateralFlipd(RandomizableTransform, MapTransform):
    """With probability ``prob``, flip ``keys`` left-right and map ``label_keys`` through the orientation's swap
    table, so a class of a lateral pair stays on its side of the anatomy (MONAI dictionary transform)."""

    def __init__(
        self,
        keys: KeysCollection,
        orientation: Orientation,
        num_classes: int,
        label_keys: KeysCollection = ("label",),
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if "left_right" not in orientation.flips:
            raise ValueError("this data set's orientation does not allow left-right flips")
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.table = torch.as_tensor(orientation.swap_table(num_classes))
        self.flip = Flip(spatial_axis=FLIPS["left_right"])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            flipped = self.flip(d[key])
            if key in self.label_keys:
                flipped = flipped.clone()
                flipped[...] = self.table.to(flipped.device)[torch.as_tensor(flipped).round().long()].to(flipped.dtype)
            d[key] = flipped
        return d
