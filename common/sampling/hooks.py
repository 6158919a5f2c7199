"""Hooks on the sample of the denoising loop: what inpainting-style methods do to ``x_t`` around each step.

A hook sees the sample when the chain starts and after every denoising step, and returns the sample the chain goes
on with. :class:`KnownRegionMerge` keeps a known region (AugPaint in latent space, RePaint in pixel space):

    x_{t'} = m * q(x0_known, t') + (1 - m) * x_{t'}^{generated}

where ``q(x0, t') = sqrt(abar_t') x0 + sqrt(1 - abar_t') eps`` re-noises the known content to the level the step
arrived at, with fresh Gaussian noise at every step, and ``x0_known`` itself at the clean end (``t'`` None). At the
start the known region is noised with the chain's own starting noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.schedulers import Scheduler

__all__ = ["KnownRegionMerge", "SamplingHook"]


class SamplingHook:
    """No-op base: subclasses override what they need."""

    def start(self, sample: torch.Tensor, timestep: int, noise: torch.Tensor) -> torch.Tensor:
        """The sample the chain starts from; ``sample`` was made from ``noise`` at ``timestep``."""
        return sample

    def after_step(
        self, sample: torch.Tensor, timestep: int | None, draw_noise: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """The sample after a denoising step that arrived at ``timestep`` (None: the clean end of the chain);
        ``draw_noise()`` gives standard normal noise of the sample's shape from each sample's own generator."""
        return sample


class KnownRegionMerge(SamplingHook):
    """Keep ``known`` where ``keep`` is 1 (see the module docstring).

    Args:
        scheduler: the sampling scheduler (its ``add_noise`` re-noises the known content).
        known: (B, C, *spatial) clean content of the known region (only the kept part matters).
        keep: (B, 1, *spatial) binary mask, 1 = known.
    """

    def __init__(self, scheduler: Scheduler, known: torch.Tensor, keep: torch.Tensor) -> None:
        if keep.shape != (known.shape[0], 1, *known.shape[2:]):
            raise ValueError(f"keep must have shape {(known.shape[0], 1, *known.shape[2:])}, got {tuple(keep.shape)}")
        self.scheduler = scheduler
        self.known = known
        self.keep = keep.to(known.dtype)

    def noised(self, noise: torch.Tensor, timestep: int | None) -> torch.Tensor:
        if timestep is None:
            return self.known
        timesteps = torch.full((self.known.shape[0],), timestep, dtype=torch.long, device=self.known.device)
        return self.scheduler.add_noise(self.known, noise, timesteps)

    def merge(self, sample: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        return self.keep * known + (1 - self.keep) * sample

    def start(self, sample: torch.Tensor, timestep: int, noise: torch.Tensor) -> torch.Tensor:
        return self.merge(sample, self.noised(noise, timestep))

    def after_step(
        self, sample: torch.Tensor, timestep: int | None, draw_noise: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        return self.merge(sample, self.noised(draw_noise() if timestep is not None else None, timestep))
