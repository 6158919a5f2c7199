"""The ``prepare_batch`` of diffusion training, chosen by the noise scheduler's prediction type.

MONAI's ``DiffusionPrepareBatch`` makes the noise the training target (epsilon prediction) and
``VPredictionPrepareBatch`` the velocity ``sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0`` (v prediction, Salimans &
Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", 2022). The scheduler's ``prediction_type`` also
tells its ``step`` how to read the network output at sampling time, so deriving the training target from the same
scheduler keeps training and sampling consistent.
"""

from __future__ import annotations

from monai.engines.utils import DiffusionPrepareBatch, VPredictionPrepareBatch
from monai.networks.schedulers import Scheduler

__all__ = ["diffusion_prepare_batch"]


def diffusion_prepare_batch(scheduler: Scheduler, condition_name: str | None = None) -> DiffusionPrepareBatch:
    """``DiffusionPrepareBatch`` for an epsilon-predicting ``scheduler``, ``VPredictionPrepareBatch`` for a
    v-predicting one; ``condition_name`` is the batch key of the concat/cross-attention condition, if any."""
    prediction_type = getattr(scheduler, "prediction_type", "epsilon")
    if prediction_type == "epsilon":
        return DiffusionPrepareBatch(scheduler.num_train_timesteps, condition_name=condition_name)
    if prediction_type == "v_prediction":
        return VPredictionPrepareBatch(scheduler, scheduler.num_train_timesteps, condition_name=condition_name)
    raise ValueError(f"scheduler prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
