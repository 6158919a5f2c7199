"""Classic (non-generative) augmentation: the baseline every generative method must beat."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandRotated,
    RandZoomd,
)

__all__ = ["classic_augmentation"]


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
