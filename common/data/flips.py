"""Seeded flips of (image, mask) pairs: a pair and its seed always give the same flips, on every device.

AugPaint flips a pair before inpainting (Hu & Shi, sec. 4.4) so that its labelled structures appear at new, mirrored
positions; its inpainting controls flip the source pair of each synthetic pair the same way, from the pair's seed.
The draws come from a CPU generator seeded with the pair's seed: left-right and up-down, each with probability 1/2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["random_flips"]


def random_flips(images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``images`` (B, C, H, W) and ``labels`` (B, 1, H, W) with pair ``i`` flipped along the axes its
    seed draws (rows, columns: each with probability 1/2)."""
    if images.shape[0] != labels.shape[0] or images.shape[0] != len(seeds) or images.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)}, labels {tuple(labels.shape)} and {len(seeds)} seeds differ")
    flipped_images, flipped_labels = images.clone(), labels.clone()
    for index, seed in enumerate(seeds):
        draws = torch.rand(2, generator=torch.Generator().manual_seed(int(seed))) < 0.5
        dims = [dim for dim, flip in zip((-2, -1), draws.tolist(), strict=True) if flip]
        if dims:
            flipped_images[index] = torch.flip(images[index], dims)
            flipped_labels[index] = torch.flip(labels[index], dims)
    return flipped_images, flipped_labels
