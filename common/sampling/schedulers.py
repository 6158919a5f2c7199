"""MONAI schedulers built from a noise schedule, so training and sampling share one definition of it.

A training config defines ``noise_schedule`` once (``num_train_timesteps``, ``schedule``, ``beta_start``,
``beta_end``) and records it with ``prediction_type`` in the card of the network it trains
(:mod:`common.checkpoints`); sampling builds its scheduler (DDIM or DDPM) from the card, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from common.sampling.dpm_solver import DPMSolverMultistepScheduler

__all__ = ["SCHEDULERS", "sampling_scheduler"]

SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm_solver": DPMSolverMultistepScheduler}


def sampling_scheduler(
    kind: str,
    noise_schedule: Mapping[str, Any],
    prediction_type: str = "epsilon",
    clip_sample: bool = False,
    **options: Any,
) -> Scheduler:
    """A ``kind`` ("ddim", "ddpm" or "dpm_solver", DPM-Solver++) scheduler on ``noise_schedule`` reading
    ``prediction_type`` outputs; ``clip_sample`` clips the predicted ``x_0`` to [-1, 1] (pixel-space data; off for
    latents, whose values are not bounded); ``options`` go to the scheduler (e.g. ``solver_order``)."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler kind must be one of {sorted(SCHEDULERS)}, got {kind!r}")
    return SCHEDULERS[kind](**dict(noise_schedule), prediction_type=prediction_type, clip_sample=clip_sample, **options)
