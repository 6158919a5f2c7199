"""Atomic, resumable writing of synthetic (image, mask) data sets and their Decathlon-style datalist.

Layout of a generation run (DESIGN "Outputs of a generation run")::

    <output_dir>/images/<name>.png     8-bit grey image (or .nii.gz, float32)
    <output_dir>/masks/<name>.png      8-bit palette PNG, pixel value = class index (or .nii.gz, uint8)
    <output_dir>/contact_sheet.png     pairs with coloured mask overlays
    <output_dir>/datalist.json         {"method", "created", "config", "training": [...], "dropped"}

Nothing is ever half-written: every file is written under a hidden temporary name in its final folder and renamed
(``os.replace``) once complete. Until :meth:`SyntheticDatasetWriter.finalize` writes the datalist, every change is
appended to a journal (``.datalist.journal.jsonl``, flushed and fsynced per line), so an interrupted generation
resumes where it stopped: :meth:`SyntheticDatasetWriter.done` tells which pairs exist and a re-run skips them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from monai.visualize import blend_images
from PIL import Image

from common.data.readers import image_file_stem
from common.files import atomic_files, json_ready, remove_stale_temporaries, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_FORMATS",
    "STATUSES",
    "SyntheticDatasetWriter",
    "check_output_dir",
    "class_palette",
    "comparison_sheet",
    "contact_sheet",
    "write_contact_sheet",
]

IMAGE_FORMATS = {"png": ".png", "nii.gz": ".nii.gz"}
STATUSES = ("kept", "relabelled")
DATALIST_NAME = "datalist.json"
JOURNAL_NAME = ".datalist.journal.jsonl"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# distinct, bright colours (background black) so small structures stay visible in overlays and palette masks
_COLOURS = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
]


def class_palette(num_classes: int = 256) -> np.ndarray:
    """RGB colour of every class index, ``(num_classes, 3)`` uint8: black background, then distinct colours (cycled)."""
    colours = [_COLOURS[0]] + [_COLOURS[1 + (i - 1) % (len(_COLOURS) - 1)] for i in range(1, num_classes)]
    return np.asarray(colours[:num_classes], dtype=np.uint8)


def check_output_dir(output_dir: str, method: str) -> None:
    """Refuse, before anything is trained, an output folder that holds a datalist (finished or journalled) that is
    not a synthetic set of ``method``: the writer would refuse it only after training, and must never take it over."""
    for name in (DATALIST_NAME, JOURNAL_NAME):
        path = os.path.join(output_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                record = json.loads(f.readline() if name == JOURNAL_NAME else f.read())
        except ValueError:
            record = None
        found = record.get("method") if isinstance(record, dict) else None
        if found != method:
            what = f"a set of {found!r}" if found else "not a synthetic data set"
            raise ValueError(f"{path} is not a synthetic set of {method!r} ({what}); choose another output folder")


class SyntheticDatasetWriter:
    """Writes the pairs of one generation run to ``output_dir`` and, at the end, its ``datalist.json``.

    Opening a directory that holds an unfinished run (a journal) or a finished one (a datalist) resumes it: the pairs
    already written are known (:meth:`done`), new ones are added, scores and statuses can still change, and
    :meth:`finalize` writes the complete datalist again. The run must be the same (``method`` and ``config``), else a
    ValueError names the directory: a data set never mixes pairs of different settings. One writer (one process)
    per directory.

    Args:
        output_dir: directory of the data set (created).
        method: name of the method that makes the pairs (e.g. "augpaint"), recorded in the datalist.
        config: the sampling knobs, recorded in the datalist (JSON; other values are written with ``str``).
        image_format: "png" (8-bit) or "nii.gz" (float32 images, uint8 masks; needs nibabel).

    Example::

        writer = SyntheticDatasetWriter(out, "augpaint", {"num_samples": 5})
        for name, seed in todo:
            if not writer.done(name):
                writer.write_pair(image, label, seed, source_image=..., source_label=..., name=name)
        for name, score in zip(writer.names, scores):
            writer.set_score(name, score)
        for name in low_scoring:
            writer.remove(name)
        writer.write_contact_sheet(num_classes=5)
        writer.finalize()
    """

    def __init__(
        self, output_dir: str, method: str, config: Mapping[str, Any] | None = None, image_format: str = "png"
    ) -> None:
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got '{image_format}'")
        self.output_dir = os.path.abspath(output_dir)
        self.method = method
        self.config = json_ready(dict(config or {}))
        self.image_format = image_format
        self.datalist_path = os.path.join(self.output_dir, DATALIST_NAME)
        self.journal_path = os.path.join(self.output_dir, JOURNAL_NAME)
        self._entries: dict[str, dict[str, Any]] = {}
        self._dropped = 0
        self._created: str | None = None
        for folder in ("images", "masks"):
            os.makedirs(os.path.join(self.output_dir, folder), exist_ok=True)
            remove_stale_temporaries(os.path.join(self.output_dir, folder))
        self._load_datalist()
        self._replay_journal()
        if self._entries or self._dropped:
            logger.info(
                f"resuming {self.output_dir}: {len(self._entries)} pairs written, {self._dropped} dropped so far"
            )

    # --- state -----------------------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Names of the pairs written (and not removed), in writing order."""
        return list(self._entries)

    @property
    def dropped(self) -> int:
        """Number of pairs dropped so far (:meth:`drop` and :meth:`remove`)."""
        return self._dropped

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def done(self, name: str) -> bool:
        """Whether the pair ``name`` was written (both files exist); a resumed run skips it."""
        if name not in self._entries:
            return False
        image, label = self._paths(self._entries[name])
        return os.path.isfile(image) and os.path.isfile(label)

    def entry(self, name: str) -> dict[str, Any]:
        """A copy of the datalist entry of ``name`` (paths relative to the datalist)."""
        return dict(self._entry(name))

    def pairs(self) -> list[dict[str, str]]:
        """``{"name", "image", "label"}`` with absolute paths for every written pair, e.g. to score them."""
        pairs = []
        for name, entry in self._entries.items():
            image, label = self._paths(entry)
            pairs.append({"name": name, "image": image, "label": label})
        return pairs

    # --- changes ---------------------------------------------------------------------------------------------------

    def write_pair(
        self,
        image: torch.Tensor | np.ndarray,
        label: torch.Tensor | np.ndarray,
        seed: int,
        source_image: str | None = None,
        source_label: str | None = None,
        condition: Sequence[int] | torch.Tensor | None = None,
        score: float | None = None,
        status: str = "kept",
        name: str | None = None,
    ) -> str:
        """Write one pair atomically and record it; returns its name.

        Args:
            image: ``(1, H, W)`` or ``(H, W)`` float in [0, 1] (clipped); rows are image rows, as PIL shows them.
            label: ``(1, H, W)`` or ``(H, W)`` class indices (0..255).
            seed: the seed the pair was sampled with.
            source_image, source_label: the real pair it came from (path as given), or None when sampled from noise.
            condition: class indices the sample was conditioned on, or None.
            score: filter score, or None (a non-finite score is recorded as None).
            status: "kept" or "relabelled".
            name: file stem; default ``f"{seed:06d}"``, which must then be new. Writing an existing name on purpose
                replaces that pair.
        """
        if name is None:
            name = f"{int(seed):06d}"
            if name in self._entries:
                raise ValueError(f"pair '{name}' (named after its seed) exists in {self.output_dir}; pass a name")
        _check_name(name)
        _check_status(status)
        image_array, label_array = _image_array(image, name), _label_array(label, name)
        if image_array.shape != label_array.shape:
            raise ValueError(f"pair '{name}': image {image_array.shape} and label {label_array.shape} differ in size")
        extension = IMAGE_FORMATS[self.image_format]
        entry = {
            "image": f"images/{name}{extension}",
            "label": f"masks/{name}{extension}",
            "seed": int(seed),
            "source_image": None if source_image is None else os.fspath(source_image),
            "source_label": None if source_label is None else os.fspath(source_label),
            "condition": _condition_list(condition),
            "score": _score_value(score),
            "status": status,
        }
        image_path, label_path = self._paths(entry)
        with atomic_files(image_path, label_path) as (image_temp, label_temp):
            self._save_image(image_array, image_temp)
            self._save_label(label_array, label_temp)
        self._record({"op": "write", "name": name, "entry": entry})
        return name

    def relabel(self, name: str, label: torch.Tensor | np.ndarray) -> None:
        """Replace the mask of ``name`` (e.g. by a segmenter's prediction) and mark the pair "relabelled"."""
        entry = dict(self._entry(name))
        label_array = _label_array(label, name)
        _, label_path = self._paths(entry)
        with atomic_files(label_path) as (label_temp,):
            self._save_label(label_array, label_temp)
        entry["status"] = "relabelled"
        self._record({"op": "write", "name": name, "entry": entry})

    def set_score(self, name: str, score: float | None) -> None:
        """Record the filter score of ``name`` (non-finite -> None)."""
        self._entry(name)
        self._record({"op": "update", "name": name, "fields": {"score": _score_value(score)}})

    def set_status(self, name: str, status: str) -> None:
        """Set the status of ``name``: "kept", "relabelled" (label unchanged; see :meth:`relabel`) or "dropped"
        (same as :meth:`remove`)."""
        if status == "dropped":
            self.remove(name)
            return
        self._entry(name)
        _check_status(status)
        self._record({"op": "update", "name": name, "fields": {"status": status}})

    def remove(self, name: str) -> None:
        """Delete the files of ``name`` and count it as dropped."""
        paths = self._paths(self._entry(name))
        # journal first: a crash in between leaves stray files, never a listed pair without files
        self._record({"op": "remove", "name": name, "dropped": self._dropped + 1})
        for path in paths:
            if os.path.exists(path):
                os.remove(path)

    def drop(self, count: int = 1) -> None:
        """Count ``count`` pairs that were rejected before being written."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._record({"op": "dropped", "dropped": self._dropped + count})

    def write_contact_sheet(
        self, num_classes: int, path: str | None = None, max_pairs: int = 32, columns: int = 8
    ) -> str:
        """Contact sheet of the first ``max_pairs`` written pairs (default ``<output_dir>/contact_sheet.png``)."""
        path = path or os.path.join(self.output_dir, "contact_sheet.png")
        pairs = [(_load_image(p["image"]), _load_label(p["label"])) for p in self.pairs()[:max_pairs]]
        if not pairs:
            raise ValueError(f"no pairs written in {self.output_dir} to show in a contact sheet")
        return write_contact_sheet(pairs, path, num_classes, columns)

    def finalize(self) -> str:
        """Write ``datalist.json`` atomically, remove the journal, and return the datalist's path."""
        datalist = {
            "method": self.method,
            "created": self._created or _now(),
            "config": self.config,
            "training": list(self._entries.values()),
            "dropped": self._dropped,
        }
        write_json(self.datalist_path, datalist)
        if os.path.exists(self.journal_path):
            os.remove(self.journal_path)
        logger.info(f"{self.datalist_path}: {len(self._entries)} pairs, {self._dropped} dropped")
        return self.datalist_path

    # --- journal ---------------------------------------------------------------------------------------------------

    def _record(self, record: dict[str, Any]) -> None:
        """Apply a change and append it to the journal (started with a header naming the run)."""
        records = [record]
        if not os.path.exists(self.journal_path):
            self._created = self._created or _now()
            header = {"op": "start", "method": self.method, "config": self.config, "created": self._created}
            records.insert(0, header)
        with open(self.journal_path, "a") as f:
            for line in records:
                f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._apply(record)

    def _apply(self, record: Mapping[str, Any]) -> None:
        """Replaying a record twice gives the same state (drop counts are totals), so the journal may overlap a
        datalist written just before a crash."""
        op = record["op"]
        if op == "start":
            self._check_same_run(record, self.journal_path)
            self._created = self._created or record.get("created")
        elif op == "write":
            self._entries[record["name"]] = dict(record["entry"])
        elif op == "update":
            if record["name"] in self._entries:
                self._entries[record["name"]].update(record["fields"])
        elif op == "remove":
            self._entries.pop(record["name"], None)
            self._dropped = int(record["dropped"])
        elif op == "dropped":
            self._dropped = int(record["dropped"])
        else:
            raise ValueError(f"{self.journal_path}: unknown journal record {dict(record)}")

    def _replay_journal(self) -> None:
        if not os.path.exists(self.journal_path):
            return
        with open(self.journal_path, "rb") as f:
            content = f.read()
        # every complete record ends with a newline; anything after the last one is a write cut short by a crash
        *lines, torn = content.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{self.journal_path}: corrupt journal line {line[:200]!r}") from error
            self._apply(record)
        if torn:
            logger.warning(f"{self.journal_path}: dropping a record cut short by an interrupted write")
            with open(self.journal_path, "r+b") as f:
                f.truncate(len(content) - len(torn))

    def _load_datalist(self) -> None:
        if not os.path.exists(self.datalist_path):
            return
        try:
            with open(self.datalist_path) as f:
                datalist = json.load(f)
            entries = datalist["training"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.datalist_path} is not a synthetic data set datalist: {error}") from error
        self._check_same_run(datalist, self.datalist_path)
        self._created = datalist.get("created")
        self._dropped = int(datalist.get("dropped", 0))
        for entry in entries:
            self._entries[image_file_stem(entry["image"])] = dict(entry)

    def _check_same_run(self, record: Mapping[str, Any], source: str) -> None:
        same_config = json.dumps(record.get("config"), sort_keys=True) == json.dumps(self.config, sort_keys=True)
        if record.get("method") != self.method or not same_config:
            raise ValueError(
                f"{source} belongs to another run (method {record.get('method')!r}, config {record.get('config')}) "
                f"than this one (method {self.method!r}, config {self.config}); use another output_dir"
            )

    # --- files -----------------------------------------------------------------------------------------------------

    def _entry(self, name: str) -> dict[str, Any]:
        if name not in self._entries:
            raise KeyError(f"no pair '{name}' in {self.output_dir}")
        return self._entries[name]

    def _paths(self, entry: Mapping[str, Any]) -> tuple[str, str]:
        return os.path.join(self.output_dir, entry["image"]), os.path.join(self.output_dir, entry["label"])

    def _save_image(self, array: np.ndarray, path: str) -> None:
        if self.image_format == "png":
            Image.fromarray(np.round(array * 255.0).astype(np.uint8)).save(path, format="PNG")
        else:
            _save_nifti(array.astype(np.float32), path)

    def _save_label(self, array: np.ndarray, path: str) -> None:
        if self.image_format == "png":
            mask = Image.fromarray(array.astype(np.uint8))
            mask.putpalette(class_palette().flatten().tolist())
            mask.save(path, format="PNG")
        else:
            _save_nifti(array.astype(np.uint8), path)


def contact_sheet(
    pairs: Sequence[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]], num_classes: int, columns: int = 8
) -> np.ndarray:
    """An RGB grid (H, W, 3) uint8 of pairs, each shown as the image alone and the image with its coloured mask.

    Args:
        pairs: ``(image, label)`` with images ``(1, H, W)``/``(H, W)`` in [0, 1] and class-index labels, all one size.
        num_classes: number of classes; each foreground class gets its colour of :func:`class_palette`.
        columns: pairs per row.
    """
    if not pairs:
        raise ValueError("no pairs to show in a contact sheet")
    # MONAI's blend_images over the class colours: class c at c / (K - 1) of a K-colour map, background transparent
    colours = ListedColormap(class_palette(num_classes).astype(np.float32) / 255.0)
    size = _image_array(pairs[0][0], "pair 0").shape
    cells = []
    for index, (image, label) in enumerate(pairs):
        grey, classes = _image_array(image, f"pair {index}"), _label_array(label, f"pair {index}")
        if grey.shape != size or classes.shape != size:
            raise ValueError(f"pair {index}: image {grey.shape} and label {classes.shape} differ from pair 0's {size}")
        if classes.max() >= num_classes:
            raise ValueError(f"pair {index}: label value {classes.max()} is not below num_classes={num_classes}")
        label = classes[None] / max(num_classes - 1, 1)
        blended = blend_images(grey[None], label, alpha=0.5, cmap=colours, rescale_arrays=False)
        cells.append(_side_by_side(_rgb(grey), 255.0 * np.moveaxis(np.asarray(blended), 0, -1)))
    return _tile(cells, columns)


def comparison_sheet(
    first: Sequence[torch.Tensor | np.ndarray], second: Sequence[torch.Tensor | np.ndarray], columns: int = 8
) -> np.ndarray:
    """An RGB grid (H, W, 3) uint8 of grey images in [0, 1] shown side by side, e.g. inputs and reconstructions."""
    if len(first) != len(second) or not first:
        raise ValueError(f"need as many images on each side, at least one; got {len(first)} and {len(second)}")
    cells = []
    for index, (left, right) in enumerate(zip(first, second, strict=True)):
        left, right = _image_array(left, f"image {index}"), _image_array(right, f"image {index}")
        if left.shape != right.shape:
            raise ValueError(f"image {index}: {left.shape} beside {right.shape}; both sides must have one size")
        cells.append(_side_by_side(_rgb(left), _rgb(right)))
    return _tile(cells, columns)


def write_contact_sheet(
    pairs: Sequence[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
    path: str,
    num_classes: int,
    columns: int = 8,
) -> str:
    """Write :func:`contact_sheet` of ``pairs`` to the PNG ``path`` (atomically); returns ``path``."""
    sheet = contact_sheet(pairs, num_classes, columns)
    with atomic_files(path) as (temp,):
        Image.fromarray(sheet).save(temp, format="PNG")
    return path


# --- helpers -------------------------------------------------------------------------------------------------------


def _rgb(grey: np.ndarray) -> np.ndarray:
    """A grey image in [0, 1] (H, W) as RGB (H, W, 3) in [0, 255]."""
    return np.repeat(grey[..., None] * 255.0, 3, axis=-1)


def _side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two RGB cells with a one-pixel white line between them."""
    return np.concatenate([left, np.full((left.shape[0], 1, 3), 255.0), right], axis=1)


def _tile(cells: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Equal-sized RGB cells in rows of ``columns`` on a dark grey ground, as uint8."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    gap = 2
    height, width = cells[0].shape[:2]
    rows = math.ceil(len(cells) / columns)
    sheet_columns = min(columns, len(cells))
    sheet = np.full((rows * (height + gap) + gap, sheet_columns * (width + gap) + gap, 3), 64.0)
    for index, cell in enumerate(cells):
        top, left = gap + (index // columns) * (height + gap), gap + (index % columns) * (width + gap)
        sheet[top : top + height, left : left + width] = cell
    return np.round(sheet).clip(0, 255).astype(np.uint8)


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _plane(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what} must be (1, H, W) or (H, W), got shape {array.shape}")
    return array


def _image_array(image: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = _plane(_as_numpy(image).astype(np.float64), f"image of '{name}'")
    if not np.isfinite(array).all():
        raise ValueError(f"image of '{name}' contains NaN or inf")
    return array.clip(0.0, 1.0)


def _label_array(label: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = _plane(_as_numpy(label), f"label of '{name}'")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError(f"label of '{name}' must hold class indices, found non-integer values")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"label of '{name}' has values {array.min()}..{array.max()}, outside 0..255")
    return array


def _check_name(name: str) -> None:
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"pair name '{name}' must be letters, digits, '.', '_' or '-', not starting with '.'/'-'")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES} (dropped pairs are removed), got '{status}'")


def _condition_list(condition: Sequence[int] | torch.Tensor | None) -> list[int] | None:
    return None if condition is None else [int(c) for c in _as_numpy(condition).reshape(-1)]


def _score_value(score: float | None) -> float | None:
    if score is None:
        return None
    value = float(score)
    return value if math.isfinite(value) else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _save_nifti(array: np.ndarray, path: str) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine=np.eye(4)), path)


def _load_nifti(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


def _load_image(path: str) -> np.ndarray:
    if path.endswith(IMAGE_FORMATS["nii.gz"]):
        return _load_nifti(path).astype(np.float64)
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def _load_label(path: str) -> np.ndarray:
    if path.endswith(IMAGE_FORMATS["nii.gz"]):
        return _load_nifti(path).astype(np.int64)
    with Image.open(path) as mask:
        return np.asarray(mask, dtype=np.int64)
