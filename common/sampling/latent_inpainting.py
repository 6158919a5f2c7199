"""Latent inpainting with DDIM: regenerate the unknown part of a latent while keeping the known part (AugPaint).

At every reverse step the sample is split by the keep mask ``m`` (1 = known):

    x_{t'} = m * q(z0, t') + (1 - m) * DDIM(x_t, eps_theta(x_t, t), t)          with t' the step's previous timestep

where ``q(z0, t') = sqrt(abar_t') z0 + sqrt(1 - abar_t') eps`` re-noises the known latent ``z0`` to the noise level of
the step's output (fresh Gaussian noise every step) and ``DDIM`` is :meth:`DDIMScheduler.step` (eta = 0). After the
last step (t' < 0, the clean end of the chain) the known region is ``z0`` itself, exactly. The chain starts at the
first timestep ``T`` from ``q(z0, T)`` in the known region and pure noise elsewhere.

The scheduler owns the maths (``set_timesteps``, ``step``, ``add_noise``); this module owns the loop. Every sample has
its own ``torch.Generator``, so a sample depends only on its seed, not on the batch it is drawn in; the generators
live on the latents' device and no tensor leaves it inside the loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDIMScheduler
from monai.utils import optional_import

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["LatentInpaintingSampler"]


class LatentInpaintingSampler:
    """Batched DDIM sampler that keeps a known latent region (see the module docstring for the update).

    Args:
        scheduler: a MONAI :class:`DDIMScheduler` with the training noise schedule (``clip_sample=False`` for
            scaled latents, whose values are not limited to [-1, 1]).
        num_inference_steps: number of DDIM steps.
        progress: show a tqdm bar over the steps.

    Example::

        sampler = LatentInpaintingSampler(DDIMScheduler(1000, "scaled_linear_beta", clip_sample=False), 50)
        latents = sampler(unet, known_latents, latent_keep_mask, [torch.Generator().manual_seed(s) for s in seeds])
    """

    def __init__(self, scheduler: DDIMScheduler, num_inference_steps: int = 50, progress: bool = False) -> None:
        if not isinstance(scheduler, DDIMScheduler):
            raise TypeError(f"LatentInpaintingSampler needs a DDIMScheduler, got {type(scheduler).__name__}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.progress = progress

    def previous_timestep(self, timestep: int) -> int:
        """The timestep :meth:`DDIMScheduler.step` moves to from ``timestep`` (negative after the last step)."""
        return timestep - self.scheduler.num_train_timesteps // self.scheduler.num_inference_steps

    def merge_step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        known_latents: torch.Tensor,
        keep_mask: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """One reverse step: DDIM update of ``sample`` outside the mask, ``known_latents`` re-noised with ``noise``
        to the previous timestep inside it (``known_latents`` exactly once the chain is at its clean end)."""
        generated, _ = self.scheduler.step(model_output, timestep, sample)
        previous = self.previous_timestep(timestep)
        if previous < 0:
            known = known_latents
        else:
            timesteps = torch.full((sample.shape[0],), previous, dtype=torch.long, device=sample.device)
            known = self.scheduler.add_noise(known_latents, noise, timesteps)
        return keep_mask * known + (1 - keep_mask) * generated

    @torch.no_grad()
    def __call__(
        self,
        network: torch.nn.Module,
        known_latents: torch.Tensor,
        keep_mask: torch.Tensor,
        generators: Sequence[torch.Generator],
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample latents that equal ``known_latents`` where ``keep_mask`` is 1.

        Args:
            network: the diffusion UNet, called as ``network(x, timesteps=t)`` and returning the predicted noise.
            known_latents: (B, C, h, w) scaled latents of the real images (only the masked part matters).
            keep_mask: (B, 1, h, w) binary mask on the latent grid, 1 = known.
            generators: one generator per sample, on the latents' device.
            condition: optional (B, C', h, w) tensor concatenated to the sample on the channel axis at every step
                (the concat-conditioned LDM: network input = cat(x_t, condition)).

        Returns:
            (B, C, h, w) latents.
        """
        batch = known_latents.shape[0]
        if keep_mask.shape != (batch, 1, *known_latents.shape[2:]):
            raise ValueError(
                f"keep_mask must have shape {(batch, 1, *known_latents.shape[2:])}, got {tuple(keep_mask.shape)}"
            )
        if len(generators) != batch:
            raise ValueError(f"need one generator per sample: {batch} samples, {len(generators)} generators")
        if condition is not None and (condition.shape[0] != batch or condition.shape[2:] != known_latents.shape[2:]):
            raise ValueError(f"condition {tuple(condition.shape)} does not match latents {tuple(known_latents.shape)}")
        device, dtype = known_latents.device, known_latents.dtype
        keep_mask = keep_mask.to(dtype)

        def gaussian() -> torch.Tensor:
            shape = known_latents.shape[1:]
            return torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators])

        self.scheduler.set_timesteps(self.num_inference_steps)
        timesteps = self.scheduler.timesteps.tolist()  # python ints for scheduler.step, read once before the loop
        network_timesteps = self.scheduler.timesteps.to(device).unsqueeze(1).expand(-1, batch)

        noise = gaussian()
        first = torch.full((batch,), timesteps[0], dtype=torch.long, device=device)
        sample = keep_mask * self.scheduler.add_noise(known_latents, noise, first) + (1 - keep_mask) * noise
        steps = enumerate(timesteps)
        if self.progress and has_tqdm:
            steps = tqdm(steps, total=len(timesteps), desc="DDIM inpainting", leave=False)
        for index, timestep in steps:
            network_input = sample if condition is None else torch.cat([sample, condition], dim=1)
            model_output = network(network_input, timesteps=network_timesteps[index])
            sample = self.merge_step(model_output, timestep, sample, known_latents, keep_mask, gaussian())
        return sample
