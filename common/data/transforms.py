"""The dict transforms that turn an (image, mask) file pair into training tensors.

Load (row-major, see :mod:`common.data.readers`) -> channel first -> intensities to [0, 1] -> grey -> mask values to
class indices -> resize -> optional flips (those the data set's orientation allows, :mod:`common.data.laterality`) and
light affine (one random draw for image and label) -> float32.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    MapLabelValued,
    MapTransform,
    RandAffined,
    Resized,
)

from common.data.laterality import Orientation, flip_transforms
from common.data.readers import make_loader

__all__ = ["RGB_TO_GREY", "ScaleToUnitd", "ToGreyd", "chain_transforms", "normalise_class_map", "pair_transforms"]

RGB_TO_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, the weights of PIL's convert("L")


def _source(img) -> str:
    meta = getattr(img, "meta", {})
    return str(meta.get("filename_or_obj", "<array>"))


def normalise_class_map(class_map: Mapping | None) -> dict[float, int] | None:
    """``{raw_value: class_index}`` with numeric keys (JSON configs give string keys such as ``"255"``)."""
    if class_map is None:
        return None
    return {float(raw): int(index) for raw, index in class_map.items()}


def _full_scale(img: torch.Tensor) -> float | None:
    """Largest value of the file's integer type: 8-bit 255, 16-bit 65535 (MONAI stores 16-bit as int32, so the
    PIL mode tells), ``None`` for other types."""
    if img.dtype == torch.bool:
        return 1.0
    if img.dtype == torch.uint8:
        return 255.0
    if img.dtype == torch.uint16 or str(getattr(img, "meta", {}).get("mode", "")).startswith("I;16"):
        return 65535.0
    return None


class ScaleToUnitd(MapTransform):
    """Scale intensities to [0, 1].

    ``intensity="dtype"``: 8-bit by 255, 16-bit by 65535 (the file's own range, so brightness is comparable between
    images), anything else (float NIfTI/TIFF, 32-bit) per image min-max. ``"minmax"``: per image min-max always.
    ``(low, high)``: fixed window, clipped (e.g. CT Hounsfield units).
    """

    def __init__(self, keys: KeysCollection, intensity: str | Sequence[float] = "dtype", allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        if isinstance(intensity, str) and intensity not in ("dtype", "minmax"):
            raise ValueError(f"intensity must be 'dtype', 'minmax' or (low, high), got {intensity!r}")
        if not isinstance(intensity, str) and (len(intensity) != 2 or float(intensity[1]) <= float(intensity[0])):
            raise ValueError(f"intensity window must be (low, high) with low < high, got {intensity!r}")
        self.intensity = intensity

    def scale(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.intensity, str):
            low, high = (float(v) for v in self.intensity)
            return ((img.float() - low) / (high - low)).clamp(0.0, 1.0)
        if self.intensity == "dtype":
            full_scale = _full_scale(img)
            if full_scale is not None:
                return img.float() / full_scale
        img = img.float()
        low, high = img.min(), img.max()
        return (img - low) / (high - low) if high > low else torch.zeros_like(img)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scale(d[key])
        return d


class ToGreyd(MapTransform):
    """Channel-first image -> 1 channel: grey stays, RGB(A) becomes luma (alpha dropped); any other channel count is
    a clear error naming the file. Class-index maps (``is_label=True``) must already have a single channel."""

    def __init__(self, keys: KeysCollection, is_label: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.is_label = is_label

    def grey(self, img: torch.Tensor) -> torch.Tensor:
        channels = img.shape[0]
        if channels == 1:
            return img
        what = "mask" if self.is_label else "image"
        expected = "a single-channel class-index map" if self.is_label else "grey (1), RGB (3) or RGBA (4)"
        mode = getattr(img, "meta", {}).get("mode")
        if self.is_label or channels not in (3, 4) or (channels == 4 and mode not in (None, "RGBA")):
            raise ValueError(
                f"{_source(img)}: {what} has {channels} channels"
                + (f" (mode {mode})" if mode else "")
                + f"; expected {expected}"
            )
        weights = torch.tensor(RGB_TO_GREY, dtype=torch.float32).view(3, 1, 1)
        return (img[:3].float() * weights).sum(dim=0, keepdim=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.grey(d[key])
        return d


def pair_transforms(
    image_size: int | Sequence[int] | None = 64,
    keys: Sequence[str] = ("image", "label"),
    augment: bool = False,
    class_map: Mapping | None = None,
    *,
    label_keys: Sequence[str] = ("label",),
    intensity: str | Sequence[float] = "dtype",
    orientation: Orientation | None = None,
    rotate_degrees: float = 15.0,
    scale_range: float = 0.1,
    translate_fraction: float = 0.05,
) -> Compose:
    """Dict transforms from file paths to tensors: image (1, H, W) float32 in [0, 1]; label (1, H, W) float32 holding
    class indices (``class_map`` maps raw mask values first, e.g. ``{0: 0, 255: 1}``).

    Args:
        image_size: output (H, W) or one int for square; ``None`` keeps each file's size.
        keys: the keys to load; those in ``label_keys`` are class-index maps (nearest resampling), the rest images.
            ``keys=("image",)`` for image-only data, ``keys=("label",)`` for masks only.
        augment: the random flips ``orientation`` allows (each with probability 0.5; a left-right flip swaps lateral
            pairs' labels, and is left out for images alone when the data has pairs) and, with probability 0.5, an
            affine (rotation up to ``rotate_degrees``, scaling by up to ``scale_range``, shift by up to
            ``translate_fraction`` of the size); one random draw per sample applied to image and label alike.
        orientation: the data set's (:func:`common.data.laterality.read_orientation`); ``None``: left-right flips
            only, no lateral pairs.
        intensity: see :class:`ScaleToUnitd`.
    """
    keys = list(keys)
    image_keys = [k for k in keys if k not in label_keys]
    mask_keys = [k for k in keys if k in label_keys]
    xforms: list = []
    if image_keys:
        xforms.append(make_loader(image_keys, is_label=False))
    if mask_keys:
        xforms.append(make_loader(mask_keys, is_label=True))
    xforms.append(EnsureChannelFirstd(keys))
    if image_keys:
        xforms += [ScaleToUnitd(image_keys, intensity), ToGreyd(image_keys)]
    if mask_keys:
        xforms.append(ToGreyd(mask_keys, is_label=True))
        mapping = normalise_class_map(class_map)
        if mapping:
            raw = sorted(mapping)
            xforms.append(MapLabelValued(mask_keys, raw, [mapping[v] for v in raw], dtype=np.float32))
    is_mask = [k in mask_keys for k in keys]
    size = None if image_size is None else _height_width(image_size)
    if size is not None:
        xforms.append(
            Resized(
                keys,
                spatial_size=size,
                mode=["nearest-exact" if m else "bilinear" for m in is_mask],
                anti_aliasing=[not m for m in is_mask],
            )
        )
    if augment:
        xforms += flip_transforms(keys, orientation or Orientation(), label_keys=mask_keys, prob=0.5)
        xforms.append(
            RandAffined(
                keys,
                prob=0.5,
                rotate_range=(np.deg2rad(rotate_degrees),),
                scale_range=(scale_range, scale_range),
                translate_range=None if size is None else tuple(translate_fraction * s for s in size),
                mode=["nearest" if m else "bilinear" for m in is_mask],
                padding_mode="zeros",
            )
        )
    xforms.append(EnsureTyped(keys, dtype=torch.float32))
    return Compose(xforms)


def chain_transforms(transforms: Sequence[Callable]) -> Compose:
    """``transforms`` in order as one flat ``Compose`` (nested ``Compose`` inlined).

    ``CacheDataset`` caches the output of every transform before the first random one, and a nested ``Compose``
    counts as random: chaining the pair loader and an augmentation as ``Compose([pair_transforms(...), aug])`` would
    cache nothing and read and resize every file at every iteration.
    """
    return Compose(list(transforms)).flatten()


def _height_width(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    return size
