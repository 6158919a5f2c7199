"""Classic (non-generative) augmentation: the baseline every generative method must beat."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    Compose,
    Identityd,
    OneOf,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandRotated,
    RandScaleCropd,
    RandZoomd,
    Resized,
)

from common.data.laterality import Orientation, RandLateralFlipd

__all__ = ["classic_augmentation", "crop_flip_rotate_augmentation"]


def classic_augmentation(
    keys: Sequence[str] = ("image", "label"),
    prob: float = 0.5,
    max_rotation_degrees: float = 45.0,
    zoom: tuple[float, float] = (0.9, 1.1),
    gamma: tuple[float, float] = (0.7, 1.5),
    noise_std: float = 0.03,
) -> Compose:
    """Rotation, zoom, contrast (gamma) and Gaussian noise, applied to an already loaded and resized pair.

    Geometric transforms move image and label together (label with nearest-neighbour interpolation); intensity
    transforms touch only ``keys[0]``, the image.
    """
    image_key = keys[0]
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    angle = math.radians(max_rotation_degrees)
    return Compose(
        [
            RandRotated(keys, range_x=angle, prob=prob, mode=modes, padding_mode="zeros"),
            RandZoomd(keys, min_zoom=zoom[0], max_zoom=zoom[1], prob=prob, mode=["area"] + modes[1:], keep_size=True),
            RandAdjustContrastd(image_key, gamma=gamma, prob=prob),
            RandGaussianNoised(image_key, std=noise_std, prob=prob),
        ]
    )


def crop_flip_rotate_augmentation(
    image_size: int | Sequence[int],
    keys: Sequence[str] = ("image", "label"),
    prob: float = 0.2,
    crop_fraction: float = 0.1,
    max_rotation_degrees: float = 45.0,
    orientation: Orientation | None = None,
) -> Compose:
    """GAUDA's classic augmentation (Frisch et al., sec. 4): a random crop removing ``crop_fraction`` of each side's
    length, resized back to ``image_size``; a horizontal (left-right) flip; a rotation up to ``max_rotation_degrees``;
    each applied with probability ``prob`` to image and label alike (label with nearest-neighbour interpolation).

    The flip follows the data set's ``orientation`` (:func:`common.data.read_orientation`; ``None``: no lateral
    pairs): it swaps the labels of lateral pairs, and is left out where left-right flips are not valid."""
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    crop = Compose(
        [
            RandScaleCropd(keys, roi_scale=1.0 - crop_fraction, random_size=False),
            Resized(keys, spatial_size=size, mode=["area"] + modes[1:]),
        ]
    )
    orientation = orientation or Orientation()
    flips = [RandLateralFlipd(keys, orientation, keys[1:], prob=prob)] if "left_right" in orientation.flips else []
    rotate = RandRotated(keys, range_x=math.radians(max_rotation_degrees), prob=prob, mode=modes, padding_mode="zeros")
    return Compose([OneOf([crop, Identityd(keys)], weights=[prob, 1.0 - prob]), *flips, rotate])
