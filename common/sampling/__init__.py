"""Samplers on MONAI schedulers: the scheduler owns the maths, a sampler owns the loop (batched, no device hops)."""

from __future__ import annotations

from .latent_inpainting import LatentInpaintingSampler

__all__ = ["LatentInpaintingSampler"]
