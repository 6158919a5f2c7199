"""Generation jobs: one synthetic pair to make, named, seeded and with what it is made from.

A method's generation run is a list of jobs, made by one of the planners here:

- :func:`jobs_from_pairs`: ``num_samples`` pairs from every labelled pair (inpainting methods: AugPaint, RePaint),
  named ``<source id>_s<k>``, seed ``seed + pair_index * num_samples + k``;
- :func:`jobs_from_class_sets`: ``num_samples`` pairs per set of foreground classes (class-conditional methods:
  GAUDA), named ``c<classes>_s<k>`` (``c0_s<k>`` for the empty set), seed ``seed + set_index * num_samples + k``;
- :func:`jobs_from_noise`: ``num_samples`` pairs from noise alone (DiffuseExpand), named ``n<k>``, seed ``seed + k``;
- :func:`jobs_from_label_maps`: ``num_samples`` images for every label map of another domain (the uncertainty-aware
  ControlNet keeps the label map), named ``<label id>_s<k>``.

Names are stable, so an interrupted run resumes by skipping the jobs whose pair is on disk; a sample depends only on
its job's seed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from common.data.readers import image_file_stem

__all__ = [
    "GenerationJob",
    "JobBatch",
    "jobs_from_class_sets",
    "jobs_from_label_maps",
    "jobs_from_noise",
    "jobs_from_pairs",
    "pair_name",
]


@dataclass(frozen=True)
class GenerationJob:
    """One synthetic pair to make.

    Attributes:
        name: file stem of the pair (stable across runs).
        seed: the only source of its randomness.
        source: the real files it is made from (``{"image": path, "label": path}``, or only ``"label"``), or None.
        condition: the foreground classes it is conditioned on, or None.
    """

    name: str
    seed: int
    source: Mapping[str, str] | None = None
    condition: tuple[int, ...] | None = None


@dataclass
class JobBatch:
    """What a generator receives for a batch of jobs: their seeds and, when the jobs have them, the loaded source
    images (B, 1, H, W) in [0, 1] and class-index labels (B, 1, H, W) on the sampling device, and the conditions."""

    seeds: list[int]
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    conditions: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.seeds)


def pair_name(path: str) -> str:
    """A pair name from a file: its stem with other characters than letters, digits, ``.``, ``_``, ``-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_file_stem(path)).lstrip(".-") or "pair"


def _check_count(num_samples: int) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")


def _unique_ids(paths: Sequence[str]) -> list[str]:
    ids = [pair_name(path) for path in paths]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"source files share the name(s) {duplicates}: synthetic pair names would collide")
    return ids


def jobs_from_pairs(pairs: Sequence[Mapping[str, Any]], num_samples: int, seed: int) -> list[GenerationJob]:
    """``num_samples`` jobs per labelled pair, in a stable order (see the module docstring)."""
    _check_count(num_samples)
    missing = [pair["image"] for pair in pairs if "label" not in pair]
    if missing:
        raise ValueError(f"generation needs labelled pairs; these have no label: {missing}")
    ids = _unique_ids([pair["image"] for pair in pairs])
    return [
        GenerationJob(
            f"{ids[index]}_s{k}", seed + index * num_samples + k, {"image": pair["image"], "label": pair["label"]}
        )
        for index, pair in enumerate(pairs)
        for k in range(num_samples)
    ]


def jobs_from_label_maps(labels: Sequence[str], num_samples: int, seed: int) -> list[GenerationJob]:
    """``num_samples`` jobs per label map file (the image is generated, the label map kept)."""
    _check_count(num_samples)
    ids = _unique_ids(labels)
    return [
        GenerationJob(f"{ids[index]}_s{k}", seed + index * num_samples + k, {"label": label})
        for index, label in enumerate(labels)
        for k in range(num_samples)
    ]


def jobs_from_class_sets(class_sets: Sequence[Sequence[int]], num_samples: int, seed: int) -> list[GenerationJob]:
    """``num_samples`` jobs per class set (each a list of foreground class indices)."""
    _check_count(num_samples)
    if not class_sets:
        raise ValueError("no class sets to condition on")
    sets = [tuple(sorted({int(c) for c in classes})) for classes in class_sets]
    return [
        GenerationJob(f"c{'-'.join(map(str, classes)) or '0'}_s{k}", seed + index * num_samples + k, None, classes)
        for index, classes in enumerate(sets)
        for k in range(num_samples)
    ]


def jobs_from_noise(num_samples: int, seed: int) -> list[GenerationJob]:
    """``num_samples`` jobs that start from noise alone."""
    _check_count(num_samples)
    return [GenerationJob(f"n{k:05d}", seed + k) for k in range(num_samples)]
