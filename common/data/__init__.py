"""Data layer of monai-genaug: embedded phantoms, paired image/mask data sets, splits, validation and transforms.

Images are 1-channel float32 in [0, 1] and row-major as PIL shows them; labels are 1-channel class-index maps.
"""

from __future__ import annotations

from common.data.labels import foreground_class_sets, foreground_classes, observed_class_sets
from common.data.laterality import Orientation, read_orientation
from common.data.pairs import find_pairs, load_splits, read_class_names, read_datalist, resolve_dataset
from common.data.phantom import PHANTOM_CLASSES, phantom_dataset, render_phantom
from common.data.transforms import chain_transforms, pair_transforms
from common.data.validation import DataValidationError, validate_dataset, validate_pairs

__all__ = [
    "PHANTOM_CLASSES",
    "DataValidationError",
    "Orientation",
    "chain_transforms",
    "find_pairs",
    "foreground_class_sets",
    "foreground_classes",
    "load_splits",
    "observed_class_sets",
    "pair_transforms",
    "phantom_dataset",
    "read_class_names",
    "read_datalist",
    "read_orientation",
    "render_phantom",
    "resolve_dataset",
    "validate_dataset",
    "validate_pairs",
]
