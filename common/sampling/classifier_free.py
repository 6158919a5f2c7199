"""Sampling from noise with classifier-free guidance on a MONAI scheduler (DDPM or DDIM).

At every reverse step the network runs on the conditional and the null context (one batched call) and the two outputs
are mixed (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022; GAUDA eq. for eps')::

    out' = (1 + w) * out(x_t, t, c) - w * out(x_t, t, null)  =  out_null + (1 + w) * (out_c - out_null)

``w = 0`` is the plain conditional model; MONAI's ``DiffusionInferer.sample`` has the same mix with ``cfg = 1 + w``.
The mix is linear, so it applies to whatever the network predicts (noise or velocity); the scheduler's ``step``
reads the mixed output with its ``prediction_type``. Unlike ``DiffusionInferer.sample``, every sample has its own
``torch.Generator`` for its starting noise and for DDPM's per-step noise, so a sample depends only on its seed, not
on the batch it is drawn in. The scheduler owns the maths; this module owns the loop; no tensor leaves the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.utils import optional_import

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["ClassifierFreeGuidanceSampler", "guided_output"]


def guided_output(conditional: torch.Tensor, unconditional: torch.Tensor, guidance: float) -> torch.Tensor:
    """``(1 + guidance) * conditional - guidance * unconditional``."""
    return unconditional + (1.0 + guidance) * (conditional - unconditional)


class ClassifierFreeGuidanceSampler:
    """Batched sampler from Gaussian noise with classifier-free guidance (see the module docstring).

    Args:
        scheduler: MONAI ``DDPMScheduler`` (stochastic; the paper's 1000 steps) or ``DDIMScheduler`` (eta 0,
            deterministic given the starting noise; ``clip_sample=False`` for scaled latents), with the training
            noise schedule and prediction type.
        num_inference_steps: reverse steps (DDPM: 1000 as in training; DDIM: e.g. 50).
        guidance: guidance strength ``w`` (GAUDA: 3.0).
        null_value: fill value of the null context, the one used when the condition was dropped in training.
        progress: tqdm bar over the steps.
    """

    def __init__(
        self,
        scheduler: DDPMScheduler | DDIMScheduler,
        num_inference_steps: int = 50,
        guidance: float = 3.0,
        null_value: float = -1.0,
        progress: bool = False,
    ) -> None:
        if not isinstance(scheduler, (DDPMScheduler, DDIMScheduler)):
            raise TypeError(f"need a DDPMScheduler or DDIMScheduler, got {type(scheduler).__name__}")
        if not 1 <= num_inference_steps <= scheduler.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in 1..{scheduler.num_train_timesteps}, got {num_inference_steps}"
            )
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.guidance = float(guidance)
        self.null_value = float(null_value)
        self.progress = progress

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """One reverse step; DDPM draws each sample's noise from its own generator."""
        if isinstance(self.scheduler, DDIMScheduler):
            return self.scheduler.step(model_output, timestep, sample)[0]
        return torch.cat(
            [
                self.scheduler.step(model_output[i : i + 1], timestep, sample[i : i + 1], generator=g)[0]
                for i, g in enumerate(generators)
            ]
        )

    @torch.no_grad()
    def __call__(
        self,
        network: torch.nn.Module,
        shape: Sequence[int],
        context: torch.Tensor,
        generators: Sequence[torch.Generator],
    ) -> torch.Tensor:
        """Sample latents of ``shape`` (B, C, h, w) given cross-attention ``context`` (B, 1, K).

        ``network(x, timesteps=t, context=c)`` is a MONAI ``DiffusionModelUNet`` with ``with_conditioning``;
        ``generators`` holds one generator per sample, on ``context``'s device.
        """
        batch = shape[0]
        if context.shape[0] != batch or len(generators) != batch:
            raise ValueError(
                f"need one context and one generator per sample: {batch} samples, context {tuple(context.shape)}, "
                f"{len(generators)} generators"
            )
        device, dtype = context.device, context.dtype
        sample = torch.stack(
            [torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generators]
        )
        both_contexts = torch.cat([context, torch.full_like(context, self.null_value)])
        self.scheduler.set_timesteps(self.num_inference_steps)
        timesteps = self.scheduler.timesteps.tolist()  # python ints for scheduler.step, read once before the loop
        network_timesteps = self.scheduler.timesteps.to(device).unsqueeze(1).expand(-1, 2 * batch)
        steps = enumerate(timesteps)
        if self.progress and has_tqdm:
            steps = tqdm(steps, total=len(timesteps), desc="guided sampling", leave=False)
        for index, timestep in steps:
            output = network(torch.cat([sample, sample]), timesteps=network_timesteps[index], context=both_contexts)
            conditional, unconditional = output.chunk(2)
            sample = self.step(guided_output(conditional, unconditional, self.guidance), timestep, sample, generators)
        return sample
