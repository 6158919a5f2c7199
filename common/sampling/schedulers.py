"""MONAI schedulers built from a noise schedule, so training and sampling share one definition of it.

A training config defines ``noise_schedule`` once (``num_train_timesteps``, ``schedule``, ``beta_start``,
``beta_end``) and records it with ``prediction_type`` in the card of the network it trains
(:mod:`common.checkpoints`); sampling builds its scheduler (DDIM or DDPM) from the card, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from common.sampling.dpm_solver import DPMSolverMultistepScheduler

__all__ = ["SCHEDULERS", "default_inference_steps", "sampling_scheduler"]

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
    "sde_dpm_solver": partial(DPMSolverMultistepScheduler, stochastic=True),
}
DPM_SOLVERS = ("dpm_solver", "sde_dpm_solver")
# DDPM: every training step; the SDE solver needs more steps than the ODE one (DiffuseExpand on usgra: FID 54 at 20
# steps for masks and images, 15 at 30, DDPM-1000 13)
DEFAULT_STEPS = {"ddim": 50, "dpm_solver": 20, "sde_dpm_solver": 30}


def sampling_scheduler(
    kind: str,
    noise_schedule: Mapping[str, Any],
    prediction_type: str = "epsilon",
    clip_sample: bool = False,
    solver_order: int | None = None,
    **options: Any,
) -> Scheduler:
    """A ``kind`` scheduler on ``noise_schedule`` reading ``prediction_type`` outputs: "ddim", "ddpm", "dpm_solver"
    (DPM-Solver++) or "sde_dpm_solver" (SDE-DPM-Solver++). ``clip_sample`` clips the predicted ``x_0`` to [-1, 1]
    (pixel-space data; off for latents, whose values are not bounded); ``solver_order`` is the DPM solvers' order
    (the other kinds have none); ``options`` go to the scheduler."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler kind must be one of {sorted(SCHEDULERS)}, got {kind!r}")
    if solver_order is not None and kind in DPM_SOLVERS:
        options["solver_order"] = solver_order
    return SCHEDULERS[kind](**dict(noise_schedule), prediction_type=prediction_type, clip_sample=clip_sample, **options)


def default_inference_steps(kind: str, noise_schedule: Mapping[str, Any]) -> int:
    """The steps a ``kind`` chain takes unless told: 50 for DDIM, 20 for DPM-Solver++, 30 for its SDE form, every
    training step for DDPM (MONAI's DDPM steps from ``t`` to ``t - 1``)."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler kind must be one of {sorted(SCHEDULERS)}, got {kind!r}")
    return DEFAULT_STEPS.get(kind, int(noise_schedule["num_train_timesteps"]))
