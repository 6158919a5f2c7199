"""Synthetic data sets as the evaluation reads them, and the check that none of them leaks held-out data.

A synthetic set may only be built from the labelled subset the evaluation trains on: a pair whose own files or whose
sources (``source_image`` / ``source_label``) are test-split files, or whose masks are real masks outside the
labelled subset, would let the judged segmenter see what it is scored on or more labels than the other arms; so would
a set whose generator (or filter segmenter) was trained on masks outside the subset, which the generation run records
in its datalist (``config["generator_labels"]``, from the checkpoints' cards).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

from common.files import file_digest

logger = logging.getLogger(__name__)

__all__ = ["LeakageError", "check_provenance", "load_synthetic_pairs", "synthetic_datalist", "synthetic_method"]


class LeakageError(ValueError):
    """A synthetic set uses test-split files or masks outside the labelled subset."""


def synthetic_datalist(path: str) -> str:
    """The datalist of a synthetic set given as its folder or as the datalist itself."""
    datalist = os.path.join(path, "datalist.json") if os.path.isdir(path) else path
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"no synthetic datalist at {datalist}")
    return datalist


def synthetic_method(datalist_path: str) -> str:
    """The method that wrote a synthetic set (its datalist's ``method``)."""
    with open(datalist_path) as f:
        return json.load(f).get("method", "synthetic")


def load_synthetic_pairs(datalist_path: str) -> list[dict]:
    """The kept pairs of a synthetic datalist, with every path made absolute."""
    with open(datalist_path) as f:
        entries = json.load(f)["training"]
    root = os.path.dirname(os.path.abspath(datalist_path))
    keys = ("image", "label", "source_image", "source_label")
    return [
        {**e, **{k: os.path.normpath(os.path.join(root, e[k])) for k in keys if e.get(k) is not None}} for e in entries
    ]


class _HeldOut(NamedTuple):
    """What a synthetic set may not use, computed once per check: real paths of the labelled masks, of the test
    files, the test images by digest, and the real masks outside the labelled subset."""

    allowed_labels: set[str]
    test_files: set[str]
    test_images: dict[str, str]
    outside: set[str]


def _synthetic_set_writing(mask: str, listed: dict[str, set[str]]) -> str | None:
    """The datalist of the synthetic set whose pairs list ``mask`` (``<set>/masks/<name>.png`` beside
    ``<set>/datalist.json``), or None; ``listed`` caches each datalist's masks, so a set is read once."""
    datalist = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(mask))), "datalist.json")
    if datalist not in listed:
        try:
            listed[datalist] = {os.path.realpath(entry["label"]) for entry in load_synthetic_pairs(datalist)}
        except (OSError, KeyError, TypeError, ValueError):
            listed[datalist] = set()
    return datalist if os.path.realpath(mask) in listed[datalist] else None


def check_provenance(
    datalist_path: str, labelled: Sequence[dict], test: Sequence[dict], real_masks: Sequence[str] = ()
) -> None:
    """Refuse a synthetic set whose pairs use a test-split file (as their own file, a byte-for-byte copy of a test
    image, or as a source) or a real mask outside ``labelled`` (``real_masks``: every real mask of the data set),
    naming every offending pair. (Masks are compared by path only: an empty synthetic mask may equal an empty test
    mask byte for byte without any leak.) A source mask written by another synthetic set (images made for generated
    masks, e.g. DiffuseExpand's ``label_maps``) is allowed when that set passes this check itself."""
    allowed_labels = {os.path.realpath(p["label"]) for p in labelled}
    held_out = _HeldOut(
        allowed_labels,
        {os.path.realpath(p[k]) for p in test for k in ("image", "label") if k in p},
        {file_digest(p["image"]): p["image"] for p in test if os.path.isfile(p["image"])},
        {os.path.realpath(m) for m in real_masks} - allowed_labels,
    )
    _check_set(datalist_path, held_out, (os.path.realpath(datalist_path),), {})


def _check_set(datalist_path: str, held_out: _HeldOut, chain: tuple[str, ...], listed: dict[str, set[str]]) -> None:
    """:func:`check_provenance` of one set of a chain of sets made from each other's masks (``chain``: their real
    paths, this one last; ``listed``: the masks of the datalists read so far)."""
    allowed_labels, test_files, test_images, outside = held_out
    problems = []
    upstream_sets: set[str] = set()
    for entry in load_synthetic_pairs(datalist_path):
        own = {k: os.path.realpath(entry[k]) for k in ("image", "label")}
        if own["image"] in test_files or own["label"] in test_files:
            problems.append(f"{entry['image']}: its own files are test-split files")
        elif os.path.isfile(own["image"]) and (copied := test_images.get(file_digest(own["image"]))) is not None:
            problems.append(f"{entry['image']}: its image is a byte-for-byte copy of the test-split image {copied}")
        if own["label"] in outside:
            problems.append(
                f"{entry['image']}: its mask is the real mask {entry['label']}, outside the labelled subset"
            )
        source_label, source_image = entry.get("source_label"), entry.get("source_image")
        if source_label is not None and os.path.realpath(source_label) not in allowed_labels:
            upstream = _synthetic_set_writing(source_label, listed)
            if upstream is None or os.path.realpath(upstream) in chain:
                problems.append(f"{entry['image']}: its mask {source_label} is not in the labelled subset")
            else:
                upstream_sets.add(upstream)
        if source_image is not None and os.path.realpath(source_image) in test_files:
            problems.append(f"{entry['image']}: its source image {source_image} is in the test split")
    with open(datalist_path) as f:
        trained_on = json.load(f).get("config", {}).get("generator_labels")
    if trained_on is None:
        logger.warning(f"{datalist_path} does not record the masks its generator was trained on; it cannot be checked")
    outside_subset = sorted(p for p in trained_on or [] if os.path.realpath(p) not in allowed_labels)
    if outside_subset:
        problems.append(
            f"its generator or filter was trained on {len(outside_subset)} mask(s) outside the labelled subset, e.g. "
            f"{outside_subset[:3]}: train it on the evaluation's subset (the same --labelled and --seed)"
        )
    for upstream in sorted(upstream_sets):
        try:
            _check_set(upstream, held_out, (*chain, os.path.realpath(upstream)), listed)
        except LeakageError as error:
            problems.append(f"its source masks come from the synthetic set {upstream}, which leaks: {error}")
    if problems:
        raise LeakageError(
            f"{datalist_path}: {len(problems)} problem(s): the synthetic set leaks data outside the labelled "
            "training subset:\n  " + "\n  ".join(problems)
        )
