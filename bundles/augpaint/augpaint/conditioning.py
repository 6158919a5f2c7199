"""The conditional variant of AugPaint: an LDM that sees the masked image and the keep mask as a concat condition.

The condition is ``cat(scale_factor * z(image * keep), keep on the latent grid)``, C + 1 channels, where ``keep`` is 1
on the pixels the sample must keep (:func:`concat_condition`). Training builds it once per image with
:func:`common.latents.encode_dataset` (``keep_mask``): the class boxes of the label for labelled images
(:class:`LabelKeepMask`) and random boxes for unlabelled ones (:class:`RandomBoxKeepMask`), then
:func:`diffusion_training_items`; generation builds it with :func:`masked_image_condition`. Both downsample ``keep``
with :func:`common.regions.to_latent_grid` (a latent cell is known when any pixel of its patch is kept), so the
network sees at generation exactly the condition it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.utils import convert_to_tensor
from torch import nn

from common import regions

__all__ = [
    "LabelKeepMask",
    "RandomBoxKeepMask",
    "concat_condition",
    "diffusion_training_items",
    "masked_image_condition",
]


class LabelKeepMask:
    """Keep mask of a labelled batch: ``common.regions.keep_mask(batch["label"], mode, margin)`` ("box": the
    bounding box of every labelled class, "shape": the labelled pixels)."""

    def __init__(self, mode: str = "box", margin: int = 0) -> None:
        if mode not in regions.MASK_MODES:
            raise ValueError(f"mask mode must be one of {regions.MASK_MODES}, got {mode!r}")
        self.mode = mode
        self.margin = margin

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return regions.keep_mask(convert_to_tensor(batch["label"], track_meta=False), self.mode, self.margin)


class RandomBoxKeepMask:
    """Keep mask of an unlabelled batch: the union of 1 to ``max_boxes`` random axis-aligned boxes per image, each
    side a uniform fraction in ``size_range`` of the image side, placed uniformly inside the image. Seeded: the same
    seed gives the same boxes for the same sequence of batches."""

    def __init__(self, max_boxes: int = 3, size_range: Sequence[float] = (0.1, 0.5), seed: int = 0) -> None:
        low, high = (float(v) for v in size_range)
        if max_boxes < 1 or not 0 < low <= high <= 1:
            raise ValueError(
                f"need max_boxes >= 1 and 0 < size_range[0] <= size_range[1] <= 1, got {max_boxes}, {tuple(size_range)}"
            )
        self.max_boxes = int(max_boxes)
        self.size_range = (low, high)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        image = batch["image"]
        height, width = image.shape[-2:]
        mask = torch.zeros(image.shape[0], 1, height, width)
        low, high = self.size_range
        for index in range(image.shape[0]):
            count = int(torch.randint(1, self.max_boxes + 1, (1,), generator=self.generator))
            for fractions in torch.rand(count, 4, generator=self.generator).tolist():
                box_h = max(1, round((low + (high - low) * fractions[0]) * height))
                box_w = max(1, round((low + (high - low) * fractions[1]) * width))
                top = int(fractions[2] * (height - box_h + 1))
                left = int(fractions[3] * (width - box_w + 1))
                mask[index, :, top : top + box_h, left : left + box_w] = 1.0
        return mask


def concat_condition(masked_latent: torch.Tensor, keep_latent: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """``cat(scale_factor * masked_latent, keep_latent)`` on the channel axis (dim -3: one item or a batch)."""
    return torch.cat([scale_factor * masked_latent, keep_latent.to(masked_latent.dtype)], dim=-3)


@torch.no_grad()
def masked_image_condition(
    autoencoder: nn.Module, image: torch.Tensor, keep: torch.Tensor, scale_factor: float
) -> torch.Tensor:
    """The concat condition of images (B, 1, H, W) and pixel keep masks (B, 1, H, W), built exactly as in training:
    ``cat(scale_factor * z(image * keep), to_latent_grid(keep))``, (B, C + 1, h, w)."""
    masked_latent = autoencoder.encode_stage_2_inputs(image * keep)
    return concat_condition(masked_latent, regions.to_latent_grid(keep, masked_latent.shape[-2:]), scale_factor)


def diffusion_training_items(
    items: Sequence[Mapping[str, torch.Tensor]], scale_factor: float
) -> list[dict[str, torch.Tensor]]:
    """The LDM's training items from :func:`common.latents.encode_dataset`: ``{"image": scale_factor * latent}``
    and, for items encoded with a keep mask, ``"condition"``: the :func:`concat_condition` of their masked latent."""
    training_items = []
    for item in items:
        entry = {"image": scale_factor * item["image"]}
        if "masked_image" in item:
            entry["condition"] = concat_condition(item["masked_image"], item["keep"], scale_factor)
        training_items.append(entry)
    return training_items
