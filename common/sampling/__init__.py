"""Sampling: one denoising loop on MONAI schedulers, with pluggable denoisers, hooks and walks.

The scheduler owns the maths, :class:`DenoisingLoop` owns the loop (batched, one generator per sample, no device hops),
and what differs between methods is a denoiser (:mod:`.denoisers`), a hook on the sample (:mod:`.hooks`) or a walk
over the noise levels (:mod:`.walks`).
"""

from __future__ import annotations

from .denoisers import ClassifierFreeDenoiser, ControlNetDenoiser, Denoiser, UNetDenoiser, guided_output
from .hooks import KnownRegionMerge, SamplingHook
from .loop import DenoisingLoop, per_sample_noise
from .schedulers import default_inference_steps, sampling_scheduler
from .walks import RePaintWalk, Walk, monotone_walk

__all__ = [
    "ClassifierFreeDenoiser",
    "ControlNetDenoiser",
    "DenoisingLoop",
    "Denoiser",
    "KnownRegionMerge",
    "RePaintWalk",
    "SamplingHook",
    "UNetDenoiser",
    "Walk",
    "default_inference_steps",
    "guided_output",
    "monotone_walk",
    "per_sample_noise",
    "sampling_scheduler",
]
