"""Latents of the frozen autoencoder for latent diffusion training: encode once, scale from data, concat condition.

The LDM of a stage is trained on ``scale_factor * z`` with ``z = autoencoder.encode_stage_2_inputs(image)`` (for
MONAI's ``VQVAE`` the quantised latent, what ``decode_stage_2_outputs`` decodes) and ``scale_factor = 1 / std(z)``
over all training latents, so the diffusion model sees latents of unit variance (the rescaling of Rombach et al.,
"High-Resolution Image Synthesis with Latent Diffusion Models", 2022; the MONAI LDM tutorials compute it the same way).
The factor is written to ``latent_scale.json`` (``{"scale_factor": float}``) so generation encodes and decodes with
the same one.

The conditional LDM's concat condition (see :func:`concat_condition`) is ``cat(scale_factor * z(image * keep), keep
on the latent grid)``, C + 1 channels, where ``keep`` is 1 on the pixels the sample must keep. Training builds it once
per image with :func:`encode_dataset` (``keep_mask``): the class boxes of the label for labelled images
(:class:`LabelKeepMask`, :func:`common.regions.keep_mask`) and random boxes for unlabelled ones
(:class:`RandomBoxKeepMask`); generation builds it with :func:`masked_image_condition`. Both downsample ``keep`` with
:func:`common.regions.to_latent_grid` (a latent cell is known when any pixel of its patch is kept).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.utils import convert_to_tensor
from torch import nn

from common import regions

__all__ = [
    "LabelKeepMask",
    "RandomBoxKeepMask",
    "concat_condition",
    "diffusion_training_items",
    "encode_dataset",
    "latent_scale_factor",
    "load_latent_scale",
    "masked_image_condition",
    "save_latent_scale",
]

logger = logging.getLogger(__name__)


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


@torch.no_grad()
def encode_dataset(
    autoencoder: nn.Module,
    data: Sequence[Mapping[str, Any]],
    transform: Callable,
    device: str | torch.device,
    batch_size: int = 32,
    keep_mask: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
    key: str = "image",
) -> list[dict[str, torch.Tensor]]:
    """Encode every item of ``data`` once with the frozen ``autoencoder``; latents are kept in memory on the CPU.

    Args:
        autoencoder: frozen autoencoder with ``encode_stage_2_inputs``
            (see :func:`common.checkpoints.load_frozen_network`).
        data: datalist entries (``{"image": path, ...}``), loaded with ``transform`` (no random augmentation, so the
            latents are reproducible).
        transform: gives ``"image"`` tensors (1, H, W) in [0, 1] (and ``"label"`` when ``keep_mask`` needs it).
        device: where to encode.
        batch_size: images encoded at a time.
        keep_mask: for the conditional LDM, maps a batch to its pixel keep masks (B, 1, H, W).
        key: the batch key to encode (``"label"`` for a mask autoencoder on one-hot labels); the latent is returned
            under the same key.

    Returns:
        one dict per item: ``key``: latent (C, h, w); with ``keep_mask`` also ``"masked_image"``: latent of
        ``image * keep`` and ``"keep"``: the keep mask on the latent grid (1, h, w).
    """
    autoencoder.eval()
    items: list[dict[str, torch.Tensor]] = []
    for batch in DataLoader(Dataset(list(data), transform), batch_size=batch_size, shuffle=False, num_workers=0):
        image = convert_to_tensor(batch[key], track_meta=False).to(device)
        encoded = {key: autoencoder.encode_stage_2_inputs(image)}
        if keep_mask is not None:
            keep = keep_mask(batch).to(device)
            encoded["masked_image"] = autoencoder.encode_stage_2_inputs(image * keep)
            encoded["keep"] = regions.to_latent_grid(keep, encoded[key].shape[-2:])
        encoded = {name: value.float().cpu() for name, value in encoded.items()}
        items.extend({name: value[index] for name, value in encoded.items()} for index in range(image.shape[0]))
    return items


def latent_scale_factor(items: Sequence[Mapping[str, torch.Tensor]], key: str = "image") -> float:
    """``1 / std`` of all the latents ``items[i][key]`` together (torch's unbiased standard deviation)."""
    if not items:
        raise ValueError("no latents to compute the scale factor from: the training data list is empty")
    std = float(torch.stack([item[key] for item in items]).std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"latent standard deviation is {std}: the autoencoder encodes every image alike")
    return 1.0 / std


def concat_condition(masked_latent: torch.Tensor, keep_latent: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """The conditional LDM's concat condition: ``cat(scale_factor * masked_latent, keep_latent)`` on the channel
    axis (channel dim -3, so it works for one item (C, h, w) and for batches (B, C, h, w))."""
    return torch.cat([scale_factor * masked_latent, keep_latent.to(masked_latent.dtype)], dim=-3)


@torch.no_grad()
def masked_image_condition(
    autoencoder: nn.Module, image: torch.Tensor, keep: torch.Tensor, scale_factor: float
) -> torch.Tensor:
    """The concat condition for images (B, 1, H, W) and pixel keep masks (B, 1, H, W), built exactly as in training:
    ``cat(scale_factor * z(image * keep), to_latent_grid(keep))``, (B, C + 1, h, w)."""
    masked_latent = autoencoder.encode_stage_2_inputs(image * keep)
    return concat_condition(masked_latent, regions.to_latent_grid(keep, masked_latent.shape[-2:]), scale_factor)


def diffusion_training_items(
    items: Sequence[Mapping[str, torch.Tensor]], scale_factor: float
) -> list[dict[str, torch.Tensor]]:
    """The LDM's training items: ``{"image": scale_factor * latent}`` and, for items encoded with a keep mask,
    ``"condition"``: :func:`concat_condition` of their masked latent and keep mask."""
    training_items = []
    for item in items:
        entry = {"image": scale_factor * item["image"]}
        if "masked_image" in item:
            entry["condition"] = concat_condition(item["masked_image"], item["keep"], scale_factor)
        training_items.append(entry)
    return training_items


def save_latent_scale(path: str, scale_factor: float) -> str:
    """Write ``{"scale_factor": scale_factor}`` to ``path`` atomically (temporary file, then rename); returns path."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump({"scale_factor": float(scale_factor)}, stream)
    os.chmod(temporary, 0o644)  # mkstemp creates 0600; the scale file is as readable as the checkpoints
    os.replace(temporary, path)
    logger.info(f"latent scale factor {scale_factor:.6g} written to {path}")
    return path


def load_latent_scale(path: str) -> float:
    """Read the scale factor written by :func:`save_latent_scale`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"latent scale file {path} not found: train a diffusion stage first")
    with open(path) as stream:
        content = json.load(stream)
    if not isinstance(content, dict) or "scale_factor" not in content:
        raise ValueError(f"{path} must hold {{'scale_factor': float}}, got {content!r}")
    return float(content["scale_factor"])
