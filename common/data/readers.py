"""MONAI image readers that give 2D arrays row-major, as PIL shows them, for every supported file format.

MONAI's :class:`~monai.data.PILReader` swaps rows and columns by default (``reverse_indexing=True``) and does not list
TIFF; :class:`~monai.data.NibabelReader` keeps the singleton axes of a 2D slice stored as a 3D volume. The readers here
fix both so that validation and training see exactly the same arrays:
``np.array(PIL.Image.open(path))`` for PNG/JPG/BMP/TIFF and the nibabel array (singleton axes dropped) for NIfTI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.data import NibabelReader, PILReader
from monai.data.utils import is_supported_format
from monai.transforms import LoadImage, LoadImaged
from monai.utils import MetaKeys
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "Nifti2DReader",
    "RowMajorPILReader",
    "image_file_stem",
    "is_image_file",
    "load_image",
    "make_loader",
]

PIL_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")
NIFTI_SUFFIXES = ("nii", "nii.gz")
IMAGE_SUFFIXES = PIL_SUFFIXES + NIFTI_SUFFIXES


def is_image_file(path: str) -> bool:
    """Whether ``path`` has one of the supported image suffixes (case-insensitive)."""
    return any(path.lower().endswith("." + suffix) for suffix in IMAGE_SUFFIXES)


def image_file_stem(path: str) -> str:
    """File name without its image suffix (``case_1.nii.gz`` -> ``case_1``), used to match images and masks."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith("." + suffix):
            return name[: -len(suffix) - 1]
    return name


def palette_to_rgb(image: Image.Image) -> Image.Image:
    """Give palette *images* their colours; masks keep palette indices because they are read without this."""
    return image.convert("RGBA" if image.mode == "PA" else "RGB") if image.mode in ("P", "PA") else image


class RowMajorPILReader(PILReader):
    """:class:`~monai.data.PILReader` that keeps PIL's row-major layout (dim 0 = rows) and also reads TIFF files."""

    def __init__(self, converter=None, reverse_indexing: bool = False, **kwargs):
        super().__init__(converter=converter, reverse_indexing=reverse_indexing, **kwargs)

    def verify_suffix(self, filename) -> bool:
        return is_supported_format(filename, PIL_SUFFIXES)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        data, meta = super().get_data(img)
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(data.shape[:2])  # (rows, columns), matching the array
        return (data if data.flags.writeable else data.copy()), meta


class Nifti2DReader(NibabelReader):
    """:class:`~monai.data.NibabelReader` for 2D slices: singleton axes are dropped, anything else that is not 2D
    is a clear error naming the file (a 3D volume is not a 2D training pair)."""

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        data, meta = super().get_data(img)
        shape = data.shape
        kept = [axis for axis, size in enumerate(shape) if size != 1]
        if len(kept) < 2 and len(shape) >= 2:  # an image one pixel wide or tall: its first two axes
            kept = [0, 1]
        if len(kept) != 2:
            source = ", ".join(str(f) for f in getattr(self, "filenames", ())) or "NIfTI file"
            raise ValueError(
                f"{source}: shape {tuple(shape)} is not a 2D slice; "
                "only 2D images (singleton axes allowed) are supported"
            )
        data = data.reshape([shape[axis] for axis in kept])
        affine_axes = [axis for axis in kept if axis < 3] + [3]
        for key in (MetaKeys.AFFINE, MetaKeys.ORIGINAL_AFFINE):
            if key in meta and len(affine_axes) == 3:
                meta[key] = np.asarray(meta[key])[np.ix_(affine_axes, affine_axes)]
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(data.shape)
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
        return data, meta


def _readers(is_label: bool) -> list:
    return [Nifti2DReader(), RowMajorPILReader(converter=None if is_label else palette_to_rgb)]


def make_loader(keys: Sequence[str], is_label: bool = False) -> LoadImaged:
    """``LoadImaged`` with the row-major readers, keeping the file's dtype (intensity scaling needs it).

    Readers are chosen by suffix; the ones registered last are tried first, so ours win over MONAI's defaults.
    Label loaders keep palette indices; image loaders turn palette images into their colours.
    """
    loader = LoadImaged(keys=keys, dtype=None, image_only=True)
    for reader in _readers(is_label):
        loader.register(reader)
    return loader


_LOADERS: dict[bool, LoadImage] = {}


def load_image(path: str, is_label: bool = False):
    """Read one file exactly as :func:`make_loader` would (no channel-first, no scaling): a MetaTensor of shape
    (H, W) or (H, W, C) whose ``meta["mode"]`` holds the PIL mode for PIL-readable files."""
    if is_label not in _LOADERS:
        loader = LoadImage(dtype=None, image_only=True)
        for reader in _readers(is_label):
            loader.register(reader)
        _LOADERS[is_label] = loader
    return _LOADERS[is_label](path)
