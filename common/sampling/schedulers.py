"""MONAI schedulers built from a noise schedule, so training and sampling share one definition of it.

A training config defines ``noise_schedule`` once (``num_train_timesteps``, ``schedule``, ``beta_start``,
``beta_end``) and records it with ``prediction_type`` in the card of the network it trains
(:mod:`common.checkpoints`); sampling builds its scheduler (DDIM or DDPM) from the card, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

__all__ = ["SCHEDULERS", "sampling_scheduler"]

SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def sampling_scheduler(
    kind: str, noise_schedule: Mapping[str, Any], prediction_type: str = "epsilon", clip_sample: bool = False
) -> Scheduler:
    """A ``kind`` ("ddim" or "ddpm") scheduler on ``noise_schedule`` reading ``prediction_type`` outputs;
    ``clip_sample`` clips the predicted ``x_0`` to [-1, 1] (off for latents, whose values are not bounded)."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler kind must be one of {sorted(SCHEDULERS)}, got {kind!r}")
    return SCHEDULERS[kind](**dict(noise_schedule), prediction_type=prediction_type, clip_sample=clip_sample)
