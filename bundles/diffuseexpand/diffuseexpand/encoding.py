"""How DiffuseExpand's one pixel-space DDPM sees images and masks: the same tensor shape for both modes.

A sample has ``C = max(1, K - 1)`` channels for ``K`` classes (background included):

- a mask (mode 0) is its foreground one-hot in [-1, 1]: channel ``c - 1`` is +1 where the class is ``c``, -1
  elsewhere; the background is -1 in every channel. Decoding takes the largest channel where it is above 0 and the
  background elsewhere, so a binary mask (K = 2) is one grey channel, +1 on the structure, as the paper's masks are;
- an image (mode 1) is grey in [-1, 1] in channel 0 and 0 in the other channels (for K > 2).

The mask condition of image mode (``y2``) is the mask's encoding, concatenated to the network input; the null
condition (dropped in training for classifier-free guidance, and in mask mode) is :data:`NULL_CONDITION` everywhere,
a value no encoded mask has.
"""

from __future__ import annotations

import torch

__all__ = ["MASK_MODE", "IMAGE_MODE", "NULL_CONDITION", "PairEncoding"]

MASK_MODE, IMAGE_MODE = 0, 1
NULL_CONDITION = 0.0


class PairEncoding:
    """Images and class-index masks of ``num_classes`` classes as ``channels``-channel samples in [-1, 1]."""

    null_value = NULL_CONDITION

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(
                f"a segmentation needs at least 2 classes (background and one structure), got {num_classes}"
            )
        self.num_classes = int(num_classes)
        self.channels = max(1, self.num_classes - 1)

    def encode_mask(self, label: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) class indices -> (B, C, H, W) foreground one-hot in {-1, +1}."""
        classes = torch.arange(1, self.num_classes, device=label.device).view(1, -1, 1, 1)
        return torch.where(label.long() == classes, 1.0, -1.0).to(torch.float32)

    def decode_mask(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) class indices: the largest channel where it is above 0, else background."""
        value, index = sample.max(dim=1, keepdim=True)
        return torch.where(value > 0, index + 1, 0).to(torch.long)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) grey in [0, 1] -> (B, C, H, W): [-1, 1] in channel 0, 0 in the others."""
        encoded = torch.zeros((image.shape[0], self.channels, *image.shape[2:]), device=image.device)
        encoded[:, :1] = image.float() * 2 - 1
        return encoded

    def decode_image(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) grey in [0, 1] (channel 0, clipped)."""
        return ((sample[:, :1] + 1) / 2).clamp(0.0, 1.0)

    def null_condition(self, like: torch.Tensor) -> torch.Tensor:
        """The dropped mask condition for samples shaped as ``like`` (B, C, H, W)."""
        return torch.full_like(like, NULL_CONDITION)
