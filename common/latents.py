"""Latents of a frozen autoencoder for latent diffusion training: encode once, scale from data.

The LDM of a stage is trained on ``scale_factor * z`` with ``z = autoencoder.encode_stage_2_inputs(image)`` (for
MONAI's ``VQVAE`` the quantised latent, what ``decode_stage_2_outputs`` decodes) and ``scale_factor = 1 / std(z)``
over all training latents, so the diffusion model sees latents of unit variance (the rescaling of Rombach et al.,
"High-Resolution Image Synthesis with Latent Diffusion Models", 2022; the MONAI LDM tutorials compute it the same way).
The factor is recorded in the diffusion checkpoint's card (:mod:`common.checkpoints`), so generation encodes and
decodes with the same one. :func:`encode_dataset` can also encode masked images for a concat-conditioned LDM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.utils import convert_to_tensor
from torch import nn

from common import regions

__all__ = ["encode_dataset", "latent_scale_factor"]


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
            (see :func:`common.checkpoints.load_network`).
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
