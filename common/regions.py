"""Keep masks for inpainting-based augmentation: which part of a labelled image is kept, and at which resolution.

AugPaint keeps the labelled structures of a real pair and regenerates everything else. The kept region is either

- ``"box"``: the union of one bounding box per labelled class present in the image (all pixels of a class share one
  box, whatever the number of connected components), optionally grown by ``margin`` pixels on every side, or
- ``"shape"``: the labelled pixels themselves (``label > 0``), optionally dilated by ``dilation`` pixels.

Masks are float tensors with values in {0, 1}, shape (B, 1, H, W), 1 = kept ("known"), 0 = regenerated.
Boxes are half-open ``(row_start, row_stop, col_start, col_stop)`` tuples, so ``mask[..., r0:r1, c0:c1]`` is the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Box",
    "class_boxes",
    "boxes_to_mask",
    "shape_mask",
    "keep_mask",
    "regenerated_fraction",
    "to_latent_grid",
    "MASK_MODES",
]

Box = tuple[int, int, int, int]
MASK_MODES = ("box", "shape")


def _check_labels(labels: torch.Tensor) -> None:
    if labels.ndim != 4 or labels.shape[1] != 1:
        raise ValueError(f"labels must be a (B, 1, H, W) class-index batch, got shape {tuple(labels.shape)}")


def class_boxes(labels: torch.Tensor, margin: int = 0) -> list[list[Box]]:
    """Bounding box of every labelled class present, per image: one box per class (not per connected component).

    Args:
        labels: (B, 1, H, W) class-index maps, 0 = background.
        margin: pixels added on every side of each box, clipped to the image.

    Returns:
        for each image, the boxes of its foreground classes in increasing class order (empty when unlabelled).
    """
    _check_labels(labels)
    if margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    height, width = labels.shape[-2:]
    boxes: list[list[Box]] = []
    for label in labels[:, 0]:
        image_boxes = []
        for cls in torch.unique(label).tolist():
            if cls == 0:
                continue
            rows = torch.nonzero((label == cls).any(dim=1)).flatten()
            cols = torch.nonzero((label == cls).any(dim=0)).flatten()
            r0, r1 = int(rows[0]) - margin, int(rows[-1]) + 1 + margin
            c0, c1 = int(cols[0]) - margin, int(cols[-1]) + 1 + margin
            image_boxes.append((max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)))
        boxes.append(image_boxes)
    return boxes


def boxes_to_mask(boxes: Sequence[Sequence[Box]], spatial_size: Sequence[int], device=None) -> torch.Tensor:
    """The union of each image's boxes as a (B, 1, H, W) float mask."""
    mask = torch.zeros(len(boxes), 1, *spatial_size, device=device)
    for index, image_boxes in enumerate(boxes):
        for r0, r1, c0, c1 in image_boxes:
            mask[index, :, r0:r1, c0:c1] = 1.0
    return mask


def shape_mask(labels: torch.Tensor, dilation: int = 0) -> torch.Tensor:
    """The labelled pixels (label > 0) as a (B, 1, H, W) float mask, dilated by a square of radius ``dilation``."""
    _check_labels(labels)
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0 pixels, got {dilation}")
    mask = (labels > 0).float()
    if dilation > 0:
        mask = F.max_pool2d(mask, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return mask


def keep_mask(labels: torch.Tensor, mode: str = "box", margin: int = 0) -> torch.Tensor:
    """Keep mask (B, 1, H, W) of a label batch: ``mode`` "box" (class boxes grown by ``margin`` pixels) or "shape"
    (the labelled pixels dilated by ``margin`` pixels)."""
    if mode == "box":
        return boxes_to_mask(class_boxes(labels, margin), labels.shape[-2:], device=labels.device)
    if mode == "shape":
        return shape_mask(labels, dilation=margin)
    raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")


def to_latent_grid(mask: torch.Tensor, latent_size: Sequence[int], rule: str = "any") -> torch.Tensor:
    """Resize a pixel keep mask (B, 1, H, W) to the latent grid (B, 1, h, w).

    Each latent cell covers a patch of pixels (4x4 for an f=4 autoencoder; adaptive pooling handles sizes that do not
    divide). With ``rule="any"`` (default) a cell is known when any pixel of its patch is kept (max pooling): the
    known latent region contains the whole pixel mask, so the labelled structures are never regenerated, at the cost
    of keeping up to f-1 pixels of context around them. With ``rule="all"`` a cell is known only when its whole patch
    is kept (min pooling): nothing outside the pixel mask is kept, but its border may be regenerated.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (B, 1, H, W), got {tuple(mask.shape)}")
    if rule == "any":
        return F.adaptive_max_pool2d(mask, tuple(latent_size))
    if rule == "all":
        return -F.adaptive_max_pool2d(-mask, tuple(latent_size))
    raise ValueError(f"latent grid rule must be 'any' or 'all', got {rule!r}")


def regenerated_fraction(
    labels: torch.Tensor, mode: str = "box", margin: int = 0, latent_size: Sequence[int] | None = None
) -> torch.Tensor:
    """Per image (B,), the fraction an inpainting method regenerates: everything outside the keep mask of
    :func:`keep_mask`, counted on the latent grid when ``latent_size`` is given (a cell is kept when any of its pixels
    is, :func:`to_latent_grid`'s default). Near 0, the synthetic pairs are near-copies of their sources: class boxes
    that cover the whole image (large structures) leave nothing to regenerate."""
    keep = keep_mask(labels, mode, margin)
    if latent_size is not None:
        keep = to_latent_grid(keep, latent_size)
    return 1.0 - keep.mean(dim=(1, 2, 3))
