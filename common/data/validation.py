"""Check a whole data set before training and report every bad file at once.

Files are read with the same readers training uses (:mod:`common.data.readers`), so what passes here loads there.
:func:`validate_pairs` checks a list of pairs; :func:`validate_dataset` checks a data set as a run will use it (class
names, split files or datalist, the labelled subset and validation pairs the run asks for, and every file of the
training, validation, test and unlabelled splits), so a bad file or setting stops the run before its first stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from common.data.laterality import orientation_from_classes
from common.data.pairs import class_declaration, load_splits, resolve_dataset
from common.data.readers import load_image
from common.data.transforms import normalise_class_map

__all__ = ["DataValidationError", "validate_dataset", "validate_pairs"]

GREY_OR_COLOUR = {1: None, 3: "RGB", 4: "RGBA"}  # accepted image channel counts and the PIL mode a 4-channel needs


class DataValidationError(ValueError):
    """Every problem found in a data set; ``problems`` holds ``(path, problem)`` tuples."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        files = len({path for path, _ in self.problems})
        lines = "\n".join(f"  {path}: {problem}" for path, problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {files} file(s); fix them before training:\n{lines}")


def _read(path: str, is_label: bool) -> tuple[np.ndarray | None, str | None, str | None]:
    """``(array, PIL mode, problem)``: the array as training would load it, or why it cannot be read."""
    try:
        img = load_image(path, is_label=is_label)
    except FileNotFoundError:
        return None, None, "file not found"
    except Exception as error:  # any reader failure means the file is unusable; say why
        if not os.path.isfile(path):
            return None, None, "file not found"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, None, f"unreadable ({type(error).__name__}: {reason})"
    return np.asarray(img), getattr(img, "meta", {}).get("mode"), None


def _channel_problem(array: np.ndarray, mode: str | None, is_label: bool) -> str | None:
    channels = 1 if array.ndim == 2 else int(array.shape[-1])
    mode_text = f" (mode {mode})" if mode else ""
    if is_label:
        if array.ndim != 2:
            return f"mask has {channels} channels{mode_text}; expected a single-channel class-index map (palette/grey)"
        return None
    if array.ndim not in (2, 3) or channels not in GREY_OR_COLOUR:
        return f"image has {channels} channels{mode_text}; expected grey (1), RGB (3) or RGBA (4)"
    if channels == 4 and mode not in (None, "RGBA"):
        return f"image has 4 channels{mode_text} that are not RGBA; expected grey, RGB or RGBA"
    return None


def _nonfinite_problem(array: np.ndarray, what: str) -> str | None:
    if not np.issubdtype(array.dtype, np.floating):
        return None
    bad = int(np.count_nonzero(~np.isfinite(array)))
    return f"{what} has {bad} NaN/inf value(s)" if bad else None


def _value_problems(
    values: np.ndarray, num_classes: int, class_map: Mapping[float, int] | None, require_foreground: bool
) -> list[str]:
    problems = []
    if class_map is not None:
        unknown = [v for v in values.tolist() if float(v) not in class_map]
        if unknown:
            problems.append(
                f"mask values {_short(unknown)} are not in the class map (keys {_short(sorted(class_map))})"
            )
        classes = {class_map[float(v)] for v in values.tolist() if float(v) in class_map}
    else:
        fractional = [v for v in values.tolist() if float(v) != int(v)]
        if fractional:
            problems.append(f"mask values {_short(fractional)} are not integer class indices")
        outside = [v for v in values.tolist() if float(v) == int(v) and not 0 <= v < num_classes]
        if outside:
            problems.append(
                f"mask values {_short(outside)} are outside 0..{num_classes - 1} (num_classes={num_classes})"
            )
        classes = {int(v) for v in values.tolist() if float(v) == int(v)}
    if require_foreground and not problems and not any(c > 0 for c in classes):
        problems.append("empty mask: no foreground class, but one is required")
    return problems


def _values(label: np.ndarray) -> np.ndarray:
    """Distinct values of a mask (bincount for 8/16-bit masks: several times faster than np.unique)."""
    if label.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(label.ravel()))
    return np.unique(label)


def _short(values: Sequence, limit: int = 8) -> str:
    shown = [int(v) if float(v) == int(v) else float(v) for v in list(values)[:limit]]
    return f"{shown}" if len(values) <= limit else f"{shown[:-1] + ['...']} ({len(values)} values)"


def validate_pairs(
    pairs: Sequence[Mapping],
    num_classes: int,
    class_map: Mapping | None = None,
    require_foreground: bool = False,
    *,
    image_key: str = "image",
    label_key: str = "label",
) -> None:
    """Read every image (and mask, where the entry has one) and raise one :class:`DataValidationError` listing all
    problems: missing or unreadable file, wrong channel count, NaN/inf, image/mask size mismatch, mask values that
    are not class indices below ``num_classes`` (after ``class_map`` when given), empty mask if
    ``require_foreground``. Entries without a label (unlabelled images) get the image checks only."""
    mapping = normalise_class_map(class_map)
    if mapping is not None:
        bad_targets = sorted({v for v in mapping.values() if not 0 <= v < num_classes})
        if bad_targets:
            raise ValueError(f"class_map targets {bad_targets} are outside 0..{num_classes - 1} (num_classes)")
    problems: list[tuple[str, str]] = []
    for entry in pairs:
        image_path = entry.get(image_key)
        if not image_path:
            problems.append((repr(dict(entry)), f"entry has no {image_key!r} path"))
            continue
        image, mode, problem = _read(str(image_path), is_label=False)
        if problem is None:
            problem = _channel_problem(image, mode, is_label=False) or _nonfinite_problem(image, "image")
        if problem:
            problems.append((str(image_path), problem))
        label_path = entry.get(label_key)
        if not label_path:
            continue
        label, mode, problem = _read(str(label_path), is_label=True)
        if problem is None:
            problem = _channel_problem(label, mode, is_label=True) or _nonfinite_problem(label, "mask")
        if problem is None and image is not None and image.shape[:2] != label.shape[:2]:
            mask_size, image_size = "x".join(map(str, label.shape[:2])), "x".join(map(str, image.shape[:2]))
            problem = f"mask size {mask_size} != image size {image_size} ({image_path})"
        if problem:
            problems.append((str(label_path), problem))
            continue
        for value_problem in _value_problems(_values(label), num_classes, mapping, require_foreground):
            problems.append((str(label_path), value_problem))
    if problems:
        raise DataValidationError(problems)


def validate_dataset(
    dataset_dir: str | os.PathLike | None,
    num_labelled: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    class_map: Mapping | None = None,
    allow_outside_paths: bool = False,
) -> dict[str, list[dict]]:
    """Check the data set ``dataset_dir`` as a run with these settings will use it and return its splits, or raise
    one :class:`DataValidationError` naming every problem: the class names and orientation (``classes.json``), the
    splits (split files, datalist, a labelled subset or validation carve-out the data set cannot give) and every file
    of every split."""
    dataset = resolve_dataset(dataset_dir)
    problems: list[tuple[str, str]] = []
    try:
        names, declaration = class_declaration(dataset)
        num_classes = len(names)
    except (OSError, ValueError) as error:
        problems.append((dataset, str(error)))
        num_classes = 256  # the files are still checked, against the widest class range
    else:
        try:
            orientation_from_classes(declaration, names)
        except (TypeError, ValueError) as error:
            problems.append((dataset, f"orientation (lateral_pairs, flips): {error}"))
    options = {"allow_outside_paths": allow_outside_paths}
    try:
        splits = load_splits(dataset, seed=seed, num_labelled=num_labelled, val_fraction=val_fraction, **options)
    except (OSError, ValueError) as error:
        problems.append((dataset, str(error)))
        try:
            splits = load_splits(dataset, **options)  # the files of every split are still checked
        except (OSError, ValueError):
            raise DataValidationError(problems) from error
    entries = [entry for name in ("train", "val", "test", "unlabelled") for entry in splits[name]]
    try:
        validate_pairs(entries, num_classes, class_map=class_map)
    except DataValidationError as error:
        problems.extend(error.problems)
    if problems:
        raise DataValidationError(problems)
    return splits
