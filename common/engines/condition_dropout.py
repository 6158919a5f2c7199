"""Diffusion ``prepare_batch`` for classifier-free guidance: the condition is dropped at random during training.

Classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022) trains one network both
conditionally and unconditionally: with probability ``drop_prob`` a sample's condition is replaced by the null
condition, a tensor filled with ``null_value``. Sampling then mixes the two predictions (see
:mod:`common.sampling.classifier_free`); the null condition used there must be the one used here, which is why both
take ``null_value`` (MONAI's ``DiffusionInferer.sample`` calls it ``cfg_fill_value``).

With ``class_name``, the batch's class labels (B,) go to the network's class embedding as ``class_labels`` (MONAI
``DiffusionModelUNet(num_class_embeds=...)``), through :class:`ClassLabelDiffusionInferer`; they are never dropped.

The training target follows the scheduler's prediction type, as :func:`common.engines.diffusion_prepare_batch`: the
noise (epsilon) or the velocity ``scheduler.get_velocity(x0, noise, t)`` (v prediction).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler
from torch import nn

__all__ = ["ClassLabelDiffusionInferer", "ConditionDropoutPrepareBatch"]


class ConditionDropoutPrepareBatch(DiffusionPrepareBatch):
    """MONAI's ``DiffusionPrepareBatch`` that replaces ``batch[condition_name]`` by the null condition with
    probability ``drop_prob`` per sample.

    Args:
        scheduler: the training noise scheduler (its ``num_train_timesteps`` and ``prediction_type``).
        condition_name: batch key of the condition (e.g. a multi-hot class vector (B, 1, K) for cross-attention).
        drop_prob: probability of dropping a sample's condition (GAUDA: 0.2).
        null_value: value of every entry of the null condition (must differ from real conditions).
        seed: seed of the dropout draws (None: torch's global generator).
        class_name: batch key of per-sample class labels for the network's class embedding, if any.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        condition_name: str = "condition",
        drop_prob: float = 0.2,
        null_value: float = -1.0,
        seed: int | None = None,
        class_name: str | None = None,
    ) -> None:
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        prediction_type = getattr(scheduler, "prediction_type", "epsilon")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"scheduler prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        super().__init__(scheduler.num_train_timesteps, condition_name=condition_name)
        self.scheduler = scheduler
        self.prediction_type = prediction_type
        self.drop_prob = float(drop_prob)
        self.null_value = float(null_value)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.class_name = class_name

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return noise

    def drop(self, condition: torch.Tensor) -> torch.Tensor:
        """``condition`` with each sample's entries replaced by ``null_value`` with probability ``drop_prob``."""
        dropped = torch.rand(condition.shape[0], generator=self.generator) < self.drop_prob
        dropped = dropped.to(condition.device).view(-1, *([1] * (condition.dim() - 1)))
        return torch.where(dropped, torch.full_like(condition, self.null_value), condition)

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, target, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        infer_kwargs["condition"] = self.drop(infer_kwargs["condition"])
        if self.class_name is not None:
            labels = torch.as_tensor(batchdata[self.class_name]).long().view(-1)
            infer_kwargs["class_labels"] = labels.to(device, non_blocking=non_blocking)
        return images, target, args, infer_kwargs


class ClassLabelDiffusionInferer(DiffusionInferer):
    """MONAI's ``DiffusionInferer`` whose training forward also hands ``class_labels`` to the network's class
    embedding: MONAI's forward (noise, concat or cross-attention condition) on the network with the labels bound."""

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
        mode: str = "crossattn",
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if class_labels is not None:
            diffusion_model = functools.partial(diffusion_model, class_labels=class_labels)
        return super().__call__(inputs, diffusion_model, noise, timesteps, condition=condition, mode=mode)
