"""What a data set's orientation allows: which flips are valid and which class pairs swap under a left-right flip.

Declared in ``classes.json`` next to the class names (keys that are not digits are not class names)::

    {"0": "background", "1": "right_lung", "2": "left_lung", "3": "heart",
     "lateral_pairs": [[1, 2]], "flips": ["left_right"]}

Without a declaration the safe defaults hold: class names with a left/right marker (``left_``, ``_left``, ``right_``,
``l_``/``r_``, ``_l``/``_r``, any case) are paired when the rest of the name matches, left-right flips are valid (they
swap each pair's labels), and up-down flips are not (most images have a fixed up and down).

Every flip of the project goes through this module: :func:`flip_transforms` gives the random flips a set of keys may
take (:class:`RandLateralFlipd` flips an image/mask pair left-right and swaps the paired labels, so the left class stays
on the left of the anatomy); something that cannot swap labels (an image alone, a latent) is flipped left-right only on
data without pairs (:meth:`Orientation.allows_plain_flip`); :func:`seeded_flips` flips batches of pairs from their
seeds (AugPaint's flips before inpainting and their controls).
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from monai.config import KeysCollection
from monai.transforms import Flip, MapTransform, RandFlipd, RandomizableTransform, Transform

from common.data.pairs import class_declaration

__all__ = [
    "FLIPS",
    "Orientation",
    "RandLateralFlipd",
    "detect_lateral_pairs",
    "flip_transforms",
    "orientation_from_classes",
    "read_orientation",
    "seeded_flips",
    "swap_lateral_labels",
]

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
        object.__setattr__(self, "flips", tuple(self.flips))
        object.__setattr__(self, "lateral_pairs", tuple((int(a), int(b)) for a, b in self.lateral_pairs))
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

    def check_classes(self, num_classes: int) -> None:
        """Raise if a lateral pair names a class outside ``0..num_classes - 1``."""
        outside = [pair for pair in self.lateral_pairs if max(pair) >= num_classes]
        if outside:
            raise ValueError(f"lateral pair(s) {outside} are outside the classes 0..{num_classes - 1}")

    def to_dict(self) -> dict:
        """JSON-ready form, as ``classes.json`` declares it (recorded in synthetic sets' configs)."""
        return {"flips": list(self.flips), "lateral_pairs": [list(pair) for pair in self.lateral_pairs]}


def orientation_from_classes(content: Mapping, class_names: Sequence[str]) -> Orientation:
    """The orientation a ``classes.json`` content declares (``lateral_pairs``, ``flips``), or the defaults (see the
    module docstring) for what it leaves out."""
    pairs = content.get("lateral_pairs")
    lateral = detect_lateral_pairs(class_names) if pairs is None else [tuple(int(c) for c in pair) for pair in pairs]
    if any(len(pair) != 2 for pair in lateral):
        raise ValueError(f"lateral_pairs must be pairs of class indices, got {pairs}")
    flips = content.get("flips", ["left_right"])
    if isinstance(flips, str):
        raise ValueError(f'flips must be a list such as ["left_right"], got {flips!r}')
    orientation = Orientation(flips=tuple(flips), lateral_pairs=tuple((a, b) for a, b in lateral))
    orientation.check_classes(len(class_names))
    return orientation


def read_orientation(dataset_dir: str | os.PathLike | None) -> Orientation:
    """The orientation of a data set (``None`` or ``"phantoms"`` for the embedded ones): what its ``classes.json``
    (or its datalist, beside ``"labels"``) declares, the defaults for the rest."""
    names, content = class_declaration(dataset_dir)
    try:
        return orientation_from_classes(content, names)
    except ValueError as error:
        raise ValueError(f"{dataset_dir}: {error}") from error


def swap_lateral_labels(label: torch.Tensor, orientation: Orientation) -> torch.Tensor:
    """``label`` (class indices, any shape) with the classes of each lateral pair exchanged."""
    swapped = label.clone()
    for left, right in orientation.lateral_pairs:
        swapped[label == left] = right
        swapped[label == right] = left
    return swapped


class RandLateralFlipd(RandomizableTransform, MapTransform):
    """With probability ``prob``, flip ``keys`` left-right and swap the lateral pairs' classes in ``label_keys``, so a
    class of a pair stays on its side of the anatomy (MONAI dictionary transform; a plain flip without pairs)."""

    def __init__(
        self,
        keys: KeysCollection,
        orientation: Orientation,
        label_keys: KeysCollection = ("label",),
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if "left_right" not in orientation.flips:
            raise ValueError("this data set's orientation does not allow left-right flips")
        self.orientation = orientation
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        if orientation.lateral_pairs and not self.label_keys & set(self.keys):
            raise ValueError("a left-right flip of data with lateral pairs must swap labels: give the label keys")
        self.flip = Flip(spatial_axis=FLIPS["left_right"])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            flipped = self.flip(d[key])
            d[key] = swap_lateral_labels(flipped, self.orientation) if key in self.label_keys else flipped
        return d


def flip_transforms(
    keys: KeysCollection, orientation: Orientation, label_keys: KeysCollection = ("label",), prob: float = 0.5
) -> list[Transform]:
    """The random flips ``keys`` may take under ``orientation``, each with probability ``prob``: up-down when declared;
    left-right swapping the pairs' labels when ``keys`` hold labels, plain when they do not and the data has no pairs
    (a latent or an image alone cannot swap), none otherwise."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
    flips: list[Transform] = []
    if "up_down" in orientation.flips:
        flips.append(RandFlipd(keys, prob=prob, spatial_axis=FLIPS["up_down"]))
    if set(label_keys) & set(keys) and "left_right" in orientation.flips:
        flips.append(RandLateralFlipd(keys, orientation, label_keys, prob=prob))
    elif orientation.allows_plain_flip("left_right"):
        flips.append(RandFlipd(keys, prob=prob, spatial_axis=FLIPS["left_right"]))
    return flips


def seeded_flips(
    images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int], orientation: Orientation
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``images`` (B, C, H, W) and ``labels`` (B, 1, H, W) with pair ``i`` flipped as its seed draws: two
    draws (up-down, left-right), each 1/2, from a CPU generator seeded with the seed, so a pair and its seed give the
    same flips on every device; a drawn flip the orientation does not allow is skipped, a left-right flip swaps the
    lateral pairs' labels."""
    if images.shape[0] != labels.shape[0] or images.shape[0] != len(seeds) or images.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)}, labels {tuple(labels.shape)} and {len(seeds)} seeds differ")
    flipped_images, flipped_labels = images.clone(), labels.clone()
    for index, seed in enumerate(seeds):
        draws = torch.rand(2, generator=torch.Generator().manual_seed(int(seed))) < 0.5
        names = [name for name, drawn in zip(("up_down", "left_right"), draws.tolist(), strict=True) if drawn]
        dims = [FLIPS[name] - 2 for name in names if name in orientation.flips]
        if dims:
            flipped_images[index] = torch.flip(images[index], dims)
            flipped_labels[index] = torch.flip(labels[index], dims)
        if "left_right" in names and "left_right" in orientation.flips:
            flipped_labels[index] = swap_lateral_labels(flipped_labels[index], orientation)
    return flipped_images, flipped_labels
