"""Find the (image, mask) pairs of a data set and split them reproducibly.

A data set is one of:

- a folder with ``images/`` and ``masks/`` (or ``labels/``) whose files are matched by stem (PNG, JPG, BMP, TIFF,
  NIfTI); images without a mask are unlabelled; ``split_train.txt`` / ``split_test.txt`` (one id per line) are honoured;
- a Decathlon-style datalist JSON (``{"training": [...], "validation": [...], "test": [...]}``, paths relative to the
  JSON's folder), or a folder holding ``datalist.json`` (which then takes precedence over the folder layout).

Every entry without a label, wherever it is listed, goes to ``"unlabelled"``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist

from common.data.phantom import phantom_dataset
from common.data.readers import image_file_stem, is_image_file

__all__ = [
    "class_declaration",
    "find_pairs",
    "load_splits",
    "read_class_names",
    "read_datalist",
    "resolve_dataset",
    "seeded_subset",
]

logger = logging.getLogger(__name__)

PHANTOM_NAMES = {  # name -> (domain, layout) of common.data.phantom
    "phantoms": ("source", "standard"),
    "phantoms_shifted": ("shifted", "standard"),
    "phantoms_lateral": ("source", "lateral"),
    "phantoms_thorax": ("source", "thorax"),
}
IMAGE_DIRS = ("images",)
MASK_DIRS = ("masks", "labels")
DATALIST_NAME = "datalist.json"


def resolve_dataset(dataset_dir: str | os.PathLike | None) -> str:
    """``None`` or ``"phantoms"`` -> the embedded phantom set (generated on first use), ``"phantoms_shifted"`` -> its
    shifted-look twin; anything else must be an existing folder or datalist JSON (returned as an absolute path)."""
    if dataset_dir is None or str(dataset_dir) in PHANTOM_NAMES:
        domain, layout = PHANTOM_NAMES[str(dataset_dir or "phantoms")]
        return phantom_dataset(domain=domain, layout=layout)
    path = Path(dataset_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data set not found: {dataset_dir} (a folder with images/ and masks/, or a datalist)")
    return str(path.resolve())


def _datalist_path(dataset: str) -> Path | None:
    path = Path(dataset)
    if path.is_file():
        return path
    candidate = path / DATALIST_NAME
    return candidate if candidate.is_file() else None


def class_declaration(dataset_dir: str | os.PathLike | None) -> tuple[list[str], dict]:
    """``(class names by index, the whole declaration)`` from ``classes.json`` (next to the images or the datalist) or
    the datalist (names under ``"labels"``); non-digit keys of the names (e.g. ``"encoding"``) are not classes, and
    the declaration's other keys (``lateral_pairs``, ``flips``: :mod:`common.data.laterality`) describe them."""
    dataset = resolve_dataset(dataset_dir)
    folder = Path(dataset) if Path(dataset).is_dir() else Path(dataset).parent
    sources = [folder / "classes.json"]
    datalist = _datalist_path(dataset)
    if datalist is not None:
        sources.append(datalist)
    for source in sources:
        if not source.is_file():
            continue
        try:
            content = json.loads(source.read_text())
        except ValueError as error:
            raise ValueError(f"{source} is not valid JSON: {error}") from error
        names = content.get("labels") if source.name != "classes.json" and isinstance(content, dict) else content
        if not isinstance(names, dict):
            continue
        indexed = {int(key): str(name) for key, name in names.items() if str(key).isdigit()}
        if sorted(indexed) != list(range(len(indexed))) or not indexed:
            raise ValueError(f"{source}: class indices must be 0..K-1 with 0 = background, got {sorted(indexed)}")
        return [indexed[i] for i in range(len(indexed))], content
    raise FileNotFoundError(
        f"no class names for {dataset}: write {folder / 'classes.json'} like "
        '{"0": "background", "1": "structure"} (or a "labels" dict in the datalist)'
    )


def read_class_names(dataset_dir: str | os.PathLike | None) -> list[str]:
    """Class names by index (:func:`class_declaration`); ``len()`` is the number of classes, background included."""
    return class_declaration(dataset_dir)[0]


def _subfolder(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def _files_by_stem(folder: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not is_image_file(path.name):
            continue
        stem = image_file_stem(path.name)
        if stem in found:
            raise ValueError(f"two files with the id {stem!r} in {folder}: {Path(found[stem]).name} and {path.name}")
        found[stem] = str(path.resolve())
    return found


def find_pairs(folder: str | os.PathLike) -> tuple[dict[str, dict], dict[str, dict]]:
    """``(labelled, unlabelled)`` of a folder layout, each ``{id: entry}``; masks matched to images by file stem."""
    folder = Path(folder)
    image_dir = _subfolder(folder, IMAGE_DIRS)
    if image_dir is None:
        raise FileNotFoundError(f"{folder}: expected an images/ folder (with masks/) or a {DATALIST_NAME}")
    images = _files_by_stem(image_dir)
    mask_dir = _subfolder(folder, MASK_DIRS)
    masks = _files_by_stem(mask_dir) if mask_dir is not None else {}
    orphans = sorted(set(masks) - set(images))
    if orphans:
        logger.warning("%s: %d mask(s) without an image are ignored, e.g. %s", folder, len(orphans), orphans[:5])
    if not images:
        raise FileNotFoundError(f"{image_dir}: no image files (png, jpg, bmp, tif, nii, nii.gz)")
    labelled = {i: {"image": images[i], "label": masks[i]} for i in images if i in masks}
    unlabelled = {i: {"image": images[i]} for i in images if i not in masks}
    return labelled, unlabelled


def _read_ids(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [image_file_stem(line) for line in lines if line]


def read_datalist(path: str | os.PathLike, allow_outside_paths: bool = False) -> dict[str, list[dict]]:
    """The ``training`` / ``validation`` / ``test`` lists of a Decathlon datalist, read with MONAI's
    ``load_decathlon_datalist`` (paths made absolute against the JSON's folder, plain test strings as
    ``{"image": ...}``) and reduced to ``image`` and ``label``. Missing keys give empty lists. A path that leaves the
    datalist's folder (``../``, absolute) is an error unless ``allow_outside_paths``: a datalist should not reach files
    its author did not ship with it."""
    path = Path(path).resolve()
    content = json.loads(path.read_text())
    if not isinstance(content, dict) or not any(key in content for key in ("training", "validation", "test")):
        raise ValueError(f"{path}: a datalist needs a 'training', 'validation' or 'test' list")
    lists: dict[str, list[dict]] = {}
    for key in ("training", "validation", "test"):
        entries = (
            load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key) if content.get(key) else []
        )
        bad = [e for e in entries if not isinstance(e, dict) or not e.get("image")]
        if bad:
            raise ValueError(f"{path}: every '{key}' entry needs an 'image' path, got {bad[0]!r}")
        lists[key] = [{k: os.path.normpath(str(e[k])) for k in ("image", "label") if e.get(k)} for e in entries]
    outside = [f for entries in lists.values() for e in entries for f in e.values() if not _inside(f, path.parent)]
    if outside and not allow_outside_paths:
        raise ValueError(
            f"{path}: {len(outside)} path(s) leave the datalist's folder, e.g. {outside[:3]}; move the files next to "
            "it or opt in with allow_outside_paths=True (--allow_outside_paths True)"
        )
    return lists


def _inside(path: str, folder: Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def seeded_subset(items: Sequence, count: int, seed: int, stream: int) -> tuple[list, list]:
    """``(chosen, rest)``: ``count`` items picked by a seeded permutation of the given order; the ``stream`` number
    keeps the draws for different purposes independent. Smaller counts give nested subsets."""
    order = np.random.default_rng([int(seed), stream]).permutation(len(items))
    chosen = sorted(order[:count].tolist())
    rest = sorted(order[count:].tolist())
    return [items[i] for i in chosen], [items[i] for i in rest]


def _folder_splits(folder: Path, test_fraction: float, test_seed: int) -> tuple[list, list, list, list]:
    labelled, unlabelled = find_pairs(folder)
    train_file, test_file = folder / "split_train.txt", folder / "split_test.txt"
    if not test_file.is_file():
        train_ids = sorted(labelled)
        test_count = int(round(test_fraction * len(train_ids)))
        test, train = seeded_subset([labelled[i] for i in train_ids], test_count, test_seed, stream=0)
        return train, [], test, [unlabelled[i] for i in sorted(unlabelled)]
    test_ids = _read_ids(test_file)
    train_ids = _read_ids(train_file) if train_file.is_file() else sorted(set(labelled) - set(test_ids))
    known = set(labelled) | set(unlabelled)
    for split_file, ids in ((test_file, test_ids), (train_file, train_ids)):
        missing = [i for i in ids if i not in known]
        if missing:
            raise FileNotFoundError(f"{split_file}: {len(missing)} id(s) have no image in {folder}: {missing[:10]}")
    both = sorted(set(train_ids) & set(test_ids))
    if both:
        raise ValueError(f"{folder}: id(s) in both split_train.txt and split_test.txt: {both[:10]}")
    for split_file, ids in ((test_file, test_ids), (train_file, train_ids)):
        maskless = sorted(set(ids) & set(unlabelled))
        if maskless and split_file.is_file():
            raise FileNotFoundError(
                f"{split_file}: {len(maskless)} listed id(s) have no mask in {folder}: {maskless[:10]} "
                "(a listed pair needs its mask; unlabelled images are those in no split file)"
            )
    unlisted = sorted(set(labelled) - set(train_ids) - set(test_ids))
    if unlisted:
        logger.warning("%s: %d pair(s) in neither split file are ignored, e.g. %s", folder, len(unlisted), unlisted[:5])
    train = [labelled[i] for i in sorted(set(train_ids)) if i in labelled]
    test = [labelled[i] for i in sorted(set(test_ids)) if i in labelled]
    return train, [], test, [unlabelled[i] for i in sorted(unlabelled)]


def _datalist_splits(
    path: Path, test_fraction: float, test_seed: int, allow_outside_paths: bool
) -> tuple[list, list, list, list]:
    lists = read_datalist(path, allow_outside_paths)
    labelled = {key: [e for e in entries if "label" in e] for key, entries in lists.items()}
    unlabelled = [e for entries in lists.values() for e in entries if "label" not in e]
    train, val, test = labelled["training"], labelled["validation"], labelled["test"]
    if not lists["test"]:
        test, train = seeded_subset(train, int(round(test_fraction * len(train))), test_seed, stream=0)
    return train, val, test, unlabelled


def load_splits(
    dataset_dir: str | os.PathLike | None,
    seed: int = 0,
    num_labelled: int | None = None,
    val_fraction: float = 0.0,
    *,
    test_fraction: float = 0.2,
    test_seed: int = 0,
    allow_outside_paths: bool = False,
) -> dict[str, list[dict]]:
    """``{"train", "val", "test", "unlabelled"}`` lists of ``{"image", "label"}`` dicts (absolute paths; unlabelled
    entries have only ``"image"``). Same arguments -> same lists.

    - test: the split file / datalist ``"test"``; otherwise a ``test_fraction`` of the labelled pairs chosen with
      ``test_seed`` (not ``seed``: the held-out set belongs to the data set, not to a run).
    - ``num_labelled=N``: a seeded subset (nested: the 5 of seed s are among its 10) of N labelled training pairs;
      the other training images join ``"unlabelled"``. N counts every labelled image a low-label run may use, so
      validation pairs are carved out of these N.
    - val: a datalist's ``"validation"`` list when present, else ``round(val_fraction * n)`` pairs (at least one
      when ``val_fraction > 0``) taken, seeded, from the labelled training pairs.
    """
    if num_labelled is not None and (isinstance(num_labelled, bool) or not isinstance(num_labelled, (int, np.integer))):
        raise ValueError(f"num_labelled must be a whole number of pairs (or None for all), got {num_labelled!r}")
    if num_labelled is not None and num_labelled < 1:
        raise ValueError(f"num_labelled must be at least 1 (or None for all), got {num_labelled}")
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1), got {val_fraction}, {test_fraction}")
    dataset = resolve_dataset(dataset_dir)
    datalist = _datalist_path(dataset)
    if datalist is not None:
        train, val, test, unlabelled = _datalist_splits(datalist, test_fraction, test_seed, allow_outside_paths)
    else:
        train, val, test, unlabelled = _folder_splits(Path(dataset), test_fraction, test_seed)
    if num_labelled is not None:
        if num_labelled > len(train):
            raise ValueError(f"num_labelled={num_labelled} but {dataset} has only {len(train)} labelled training pairs")
        train, rest = seeded_subset(train, num_labelled, seed, stream=1)
        unlabelled = sorted(unlabelled + [{"image": e["image"]} for e in rest], key=lambda e: e["image"])
    if not val and val_fraction > 0:
        count = max(1, int(round(val_fraction * len(train))))
        if count >= len(train):
            raise ValueError(f"val_fraction={val_fraction} leaves no training pairs out of {len(train)}")
        val, train = seeded_subset(train, count, seed, stream=2)
    return {"train": train, "val": val, "test": test, "unlabelled": unlabelled}
