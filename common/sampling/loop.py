"""The one reverse-diffusion loop every sampler of monai-genaug runs.

The loop owns what every sampler repeats: ``scheduler.set_timesteps``, the timestep tensors, one
``torch.Generator`` per sample (a sample depends only on its seed, never on the batch it is drawn in: its starting
noise, the noise of stochastic steps and any noise a hook draws come from its own generator), the walk over the noise
levels (monotone, or RePaint's jumps back up), an optional start part-way down the chain from a noised input, and the
progress bar. What differs between methods plugs in:

- the denoiser (:mod:`common.sampling.denoisers`): plain UNet, classifier-free guidance, UNet + ControlNets, ...;
- hooks on the sample (:mod:`common.sampling.hooks`), e.g. the known-region merge of inpainting;
- the walk (:mod:`common.sampling.walks`).

The scheduler owns the maths: any MONAI scheduler with ``set_timesteps``, ``step`` and ``add_noise`` works.
``DDIMScheduler`` takes ``eta`` (0: deterministic DDIM; 1: the DDPM posterior variance on the respaced chain).
A stochastic scheduler whose ``step`` takes ``noise`` (SDE-DPM-Solver++, which keeps a history of the batch's model
outputs and so steps the whole batch at once) gets each sample's noise drawn by the loop from that sample's generator.
MONAI's ``DDPMScheduler.step`` always moves from ``t`` to ``t - 1``, so it needs every training step
(``num_inference_steps = num_train_timesteps``); a shorter DDPM chain would stop far from ``t = 0`` and is refused.

A move down the walk is ``model_output = denoiser(x, t)`` at the level's scheduled timestep, then ``scheduler.step``,
exactly as ``DiffusionInferer.sample`` does. The sample then sits at the noise level the step moved it to, the
scheduler's own previous timestep (MONAI's DDIM: ``t - T // N``; DDPM: ``t - 1``), which for MONAI's DDIM can differ
from the next scheduled timestep (``linspace(T - 1, 0, N)``) by a step or so: hooks re-noise known content to where
the sample is, and a move up is forward diffusion from there to the scheduled timestep of the level above,
``x_b = sqrt(abar_b / abar_a) x_a + sqrt(1 - abar_b / abar_a) eps``. The loop runs without autograd; a denoiser
that needs gradients (classifier guidance) enables them around its own call. No tensor leaves the device inside the
loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from monai.utils import optional_import

from common.sampling.denoisers import Denoiser
from common.sampling.hooks import SamplingHook
from common.sampling.walks import Walk, monotone_walk

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["DenoisingLoop", "per_sample_noise"]


def per_sample_noise(
    generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise (B, *shape), sample ``i`` drawn from ``generators[i]``."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in generators])


class DenoisingLoop:
    """Batched reverse diffusion on a MONAI scheduler (see the module docstring).

    Args:
        scheduler: MONAI scheduler with the training noise schedule and prediction type.
        num_inference_steps: steps of the respaced chain (DDPM: all training steps).
        eta: DDIM's noise weight (0 deterministic, 1 the DDPM variance); only for ``DDIMScheduler``.
        walk: levels visited from the top down (default :func:`monotone_walk`; :class:`RePaintWalk` jumps back up).
        progress: tqdm bar over the moves.
        description: the bar's label.

    Example::

        loop = DenoisingLoop(DDIMScheduler(1000, clip_sample=False), num_inference_steps=50)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        samples = loop(UNetDenoiser(unet), generators, shape=(3, 16, 16))
    """

    def __init__(
        self,
        scheduler: Scheduler,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        walk: Walk | None = None,
        progress: bool = False,
        description: str = "sampling",
    ) -> None:
        if not 1 <= num_inference_steps <= scheduler.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in 1..{scheduler.num_train_timesteps}, got {num_inference_steps}"
            )
        if isinstance(scheduler, DDPMScheduler) and num_inference_steps != scheduler.num_train_timesteps:
            raise ValueError(
                f"DDPMScheduler.step always moves from t to t - 1, so a DDPM chain needs all "
                f"{scheduler.num_train_timesteps} steps (got {num_inference_steps}); use a DDIMScheduler (eta = 1 for "
                "DDPM-like noise) to sample with fewer steps"
            )
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if eta > 0 and not isinstance(scheduler, DDIMScheduler):
            raise ValueError(f"eta is a DDIMScheduler setting; {type(scheduler).__name__} has none")
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.eta = float(eta)
        self.walk = walk or monotone_walk
        self.progress = progress
        self.description = description
        self.stochastic = (
            isinstance(scheduler, DDPMScheduler) or self.eta > 0 or getattr(scheduler, "stochastic", False)
        )
        self._step_takes_eta = "eta" in inspect.signature(scheduler.step).parameters
        self._step_takes_noise = "noise" in inspect.signature(scheduler.step).parameters

    def levels(self, start_level: int | None = None) -> list[int]:
        """The walk from ``start_level`` (default the top, ``num_inference_steps``) down to 0."""
        top = self.num_inference_steps if start_level is None else int(start_level)
        if not 1 <= top <= self.num_inference_steps:
            raise ValueError(f"start_level must be in 1..{self.num_inference_steps}, got {start_level}")
        levels = self.walk(top)
        if levels[0] != top or levels[-1] != 0:
            raise ValueError(f"a walk must go from level {top} to 0, got {levels[:3]}...{levels[-3:]}")
        return levels

    def timestep(self, level: int) -> int | None:
        """Scheduler timestep of ``level`` (None for the clean end, level 0)."""
        return None if level == 0 else int(self.scheduler.timesteps[self.num_inference_steps - level])

    def previous_timestep(self, timestep: int) -> int | None:
        """The timestep ``scheduler.step`` moves a sample at ``timestep`` to (None: the clean end)."""
        if isinstance(self.scheduler, DDIMScheduler):
            previous = timestep - self.scheduler.num_train_timesteps // self.num_inference_steps
        elif isinstance(self.scheduler, DDPMScheduler):
            previous = timestep - 1
        else:
            scheduled = self.scheduler.timesteps.tolist()
            index = scheduled.index(timestep) + 1
            previous = scheduled[index] if index < len(scheduled) else -1
        return previous if previous >= 0 else None

    def alpha_cumprod(self, timestep: int | None) -> torch.Tensor:
        """``abar`` at ``timestep`` (None: the clean end, 1 or the scheduler's final value)."""
        if timestep is None:
            return getattr(self.scheduler, "final_alpha_cumprod", torch.tensor(1.0))
        return self.scheduler.alphas_cumprod[timestep]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generators: Sequence[torch.Generator],
    ) -> torch.Tensor:
        """``scheduler.step``; a stochastic step draws each sample's noise from its own generator."""
        extra = {"eta": self.eta} if self._step_takes_eta else {}
        if not self.stochastic:
            return self.scheduler.step(model_output, timestep, sample, **extra)[0]
        if self._step_takes_noise:  # a multistep solver steps the whole batch: each sample's noise drawn here
            noise = per_sample_noise(generators, sample.shape[1:], sample.device, sample.dtype)
            return self.scheduler.step(model_output, timestep, sample, noise=noise)[0]
        return torch.cat(
            [
                self.scheduler.step(model_output[i : i + 1], timestep, sample[i : i + 1], **extra, generator=g)[0]
                for i, g in enumerate(generators)
            ]
        )

    def jump_up(self, sample: torch.Tensor, level_from: int, level_to: int, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion from ``level_from`` to the noisier ``level_to``: ``q(x_to | x_from)``."""
        ratio = (self.alpha_cumprod(level_to) / self.alpha_cumprod(level_from)).to(sample.device, sample.dtype)
        return ratio.sqrt() * sample + (1 - ratio).sqrt() * noise

    @torch.no_grad()
    def __call__(
        self,
        denoiser: Denoiser,
        generators: Sequence[torch.Generator],
        shape: Sequence[int],
        hooks: Sequence[SamplingHook] = (),
        start: torch.Tensor | None = None,
        start_level: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Run the chain and return the clean samples (B, *shape).

        Args:
            denoiser: ``denoiser(x, timesteps)`` for the batch.
            generators: one per sample, on the device sampling runs on.
            shape: shape of one sample, e.g. (C, h, w).
            hooks: applied in order at the start and after every denoising step.
            start: clean input (B, *shape) to start part-way down the chain from (noised to ``start_level``),
                e.g. SDEdit or a styling pass; None starts from pure noise at the top.
            start_level: level to start at (default the top); needs ``start`` below the top.
            dtype: dtype of the samples.
        """
        if start_level is not None and start_level < self.num_inference_steps and start is None:
            raise ValueError("starting part-way down the chain needs the clean input to noise (start)")
        device = generators[0].device if generators else torch.device("cpu")
        batch = len(generators)
        if start is not None and tuple(start.shape) != (batch, *shape):
            raise ValueError(f"start must have shape {(batch, *tuple(shape))}, got {tuple(start.shape)}")
        self.scheduler.set_timesteps(self.num_inference_steps)
        levels = self.levels(start_level)

        def draw_noise() -> torch.Tensor:
            return per_sample_noise(generators, shape, device, dtype)

        noise = draw_noise()
        first = self.timestep(levels[0])
        if start is None:
            sample = noise
        else:
            first_timesteps = torch.full((batch,), first, dtype=torch.long, device=device)
            sample = self.scheduler.add_noise(start.to(device, dtype), noise, first_timesteps)
        for hook in hooks:
            sample = hook.start(sample, first, noise)

        moves = list(zip(levels[:-1], levels[1:], strict=True))
        if self.progress and has_tqdm:
            moves = tqdm(moves, desc=self.description, leave=False)
        current = first  # the noise level the sample is at
        for level, next_level in moves:
            if next_level > level:
                target = self.timestep(next_level)
                sample, current = self.jump_up(sample, current, target, draw_noise()), target
                continue
            timestep = self.timestep(level)
            timesteps = torch.full((batch,), timestep, dtype=torch.long, device=device)
            sample = self.step(denoiser(sample, timesteps), timestep, sample, generators)
            current = None if next_level == 0 else self.previous_timestep(timestep)
            for hook in hooks:
                sample = hook.after_step(sample, current, draw_noise)
        return sample
