"""Samplers on MONAI schedulers: the scheduler owns the maths, a sampler owns the loop (batched, no device hops)."""

from __future__ import annotations

from .classifier_free import ClassifierFreeGuidanceSampler, guided_output
from .joint_sampler import JointLatentSampler, load_joint_sampler, save_untrained_generator
from .latent_inpainting import LatentInpaintingSampler

__all__ = [
    "ClassifierFreeGuidanceSampler",
    "JointLatentSampler",
    "LatentInpaintingSampler",
    "guided_output",
    "load_joint_sampler",
    "save_untrained_generator",
]
