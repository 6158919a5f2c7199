"""What a class-index mask shows: its foreground classes, for one mask or a batch, on any device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.utils import convert_to_tensor

from common.data.transforms import pair_transforms

__all__ = ["foreground_class_sets", "foreground_classes", "observed_class_sets"]


def foreground_classes(label: torch.Tensor | np.ndarray) -> list[int]:
    """The sorted foreground classes (index >= 1) of a class-index map of any shape."""
    values = torch.unique(torch.as_tensor(label).detach().long()).tolist()
    return [int(c) for c in values if c > 0]


def foreground_class_sets(labels: torch.Tensor) -> list[list[int]]:
    """:func:`foreground_classes` of every item of a batch ``(B, ...)``."""
    return [foreground_classes(label) for label in torch.as_tensor(labels)]


def observed_class_sets(
    pairs: Sequence[Mapping[str, Any]], image_size: int | Sequence[int] = 64, class_map: Mapping | None = None
) -> list[list[int]]:
    """The distinct foreground class sets of the masks of ``pairs`` (as loaded at ``image_size``), sorted."""
    found: set[tuple[int, ...]] = set()
    transform = pair_transforms(image_size, keys=("label",), class_map=class_map)
    labels = [{"label": pair["label"]} for pair in pairs]
    for batch in DataLoader(Dataset(labels, transform), batch_size=32, shuffle=False, num_workers=0):
        found.update(tuple(classes) for classes in foreground_class_sets(convert_to_tensor(batch["label"])))
    return [list(classes) for classes in sorted(found)]
