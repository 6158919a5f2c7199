"""Denoisers: the network call of one reverse step, ``denoiser(x_t, timesteps) -> model output``.

The loop (:class:`common.sampling.DenoisingLoop`) only calls ``denoiser(sample, timesteps)`` with a ``(B,)`` long
tensor of timesteps; how the network is called is the denoiser's business:

- :class:`UNetDenoiser`: a MONAI ``DiffusionModelUNet``, unconditional or with a condition given as cross-attention
  context (``mode="crossattn"``) or concatenated to the input channels (``mode="concat"``), as
  ``DiffusionInferer.sample`` calls it; ``class_labels`` go to the UNet's class embedding (``num_class_embeds``).
- :class:`ClassifierFreeDenoiser`: classifier-free guidance (Ho & Salimans, 2022): one batched call on the condition
  and on the null condition (every entry ``null_value``, the condition dropped in training), mixed as
  ``out' = out_null + (1 + w) (out_c - out_null)`` (MONAI's ``cfg`` is ``1 + w``). The mix is linear, so it holds for
  noise and velocity predictions alike.
- :class:`ClassifierGuidedDenoiser`: classifier guidance (Dhariwal & Nichol, 2021) around any denoiser of an
  epsilon-predicting network: ``eps' = eps - scale * sqrt(1 - abar_t) * grad_x log p(y | x_t, t)``, the gradient of
  a noise-aware classifier's log-likelihood taken with autograd.
- :class:`ControlNetDenoiser`: one or more MONAI ``ControlNet``s whose down and mid residuals, each scaled by its
  weight, are summed and fed to the UNet (``ControlNetDiffusionInferer.sample`` with one ControlNet and weight 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "ClassifierFreeDenoiser",
    "ClassifierGuidedDenoiser",
    "ControlNetDenoiser",
    "Denoiser",
    "UNetDenoiser",
    "guided_output",
]

CONDITION_MODES = ("crossattn", "concat")


class Denoiser:
    """Base of the denoisers: ``denoiser(sample, timesteps)`` gives the network's output for ``sample``."""

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def guided_output(conditional: torch.Tensor, unconditional: torch.Tensor, guidance: float) -> torch.Tensor:
    """``(1 + guidance) * conditional - guidance * unconditional``."""
    return unconditional + (1.0 + guidance) * (conditional - unconditional)


def _check_mode(mode: str) -> str:
    if mode not in CONDITION_MODES:
        raise ValueError(f"condition mode must be one of {CONDITION_MODES}, got {mode!r}")
    return mode


def _network_inputs(
    sample: torch.Tensor, condition: torch.Tensor | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(network input, cross-attention context) for a condition given in ``mode``."""
    if condition is None:
        return sample, None
    if mode == "concat":
        return torch.cat([sample, condition], dim=1), None
    return sample, condition


def _class_kwargs(class_labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {} if class_labels is None else {"class_labels": class_labels}


class UNetDenoiser(Denoiser):
    """``network(x, timesteps=t, context=condition)``, or ``network(cat(x, condition), timesteps=t)`` in concat
    mode; ``condition`` is per sample (B, ...) or None; ``class_labels`` (B,) long, or None."""

    def __init__(
        self,
        network: nn.Module,
        condition: torch.Tensor | None = None,
        mode: str = "crossattn",
        class_labels: torch.Tensor | None = None,
    ) -> None:
        self.network = network
        self.condition = condition
        self.mode = _check_mode(mode)
        self.class_labels = class_labels

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        network_input, context = _network_inputs(sample, self.condition, self.mode)
        return self.network(network_input, timesteps=timesteps, context=context, **_class_kwargs(self.class_labels))


class ClassifierFreeDenoiser(Denoiser):
    """Classifier-free guidance with strength ``guidance`` (w; 0 = the plain conditional model) around ``network``
    (see the module docstring); ``condition`` (B, ...) and its null twin run in one batched call."""

    def __init__(
        self,
        network: nn.Module,
        condition: torch.Tensor,
        guidance: float,
        null_value: float = -1.0,
        mode: str = "crossattn",
        class_labels: torch.Tensor | None = None,
    ) -> None:
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        self.network = network
        self.guidance = float(guidance)
        self.mode = _check_mode(mode)
        self.both_conditions = torch.cat([condition, torch.full_like(condition, float(null_value))])
        self.class_labels = None if class_labels is None else torch.cat([class_labels, class_labels])

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        network_input, context = _network_inputs(torch.cat([sample, sample]), self.both_conditions, self.mode)
        output = self.network(
            network_input,
            timesteps=torch.cat([timesteps, timesteps]),
            context=context,
            **_class_kwargs(self.class_labels),
        )
        conditional, unconditional = output.chunk(2)
        return guided_output(conditional, unconditional, self.guidance)


class ClassifierGuidedDenoiser(Denoiser):
    """Classifier guidance around ``denoiser`` (an epsilon prediction; see the module docstring).

    Args:
        denoiser: the unguided denoiser (plain or classifier-free).
        log_likelihood: ``log_likelihood(x_t, timesteps) -> (B,)`` log p(y | x_t, t) of the wanted ``y`` under a
            noise-aware classifier; differentiable in ``x_t``.
        scale: the gradient scale ``s`` (0 = no guidance).
        alphas_cumprod: the noise schedule's ``abar_t`` (the scheduler's ``alphas_cumprod``).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        scale: float,
        alphas_cumprod: torch.Tensor,
    ) -> None:
        if scale < 0:
            raise ValueError(f"the guidance scale must be >= 0, got {scale}")
        self.denoiser = denoiser
        self.log_likelihood = log_likelihood
        self.scale = float(scale)
        self.alphas_cumprod = alphas_cumprod

    def gradient(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``grad_x sum_i log p(y_i | x_i, t_i)``: each sample's own gradient, in one backward pass."""
        with torch.enable_grad():
            x = sample.detach().requires_grad_(True)
            return torch.autograd.grad(self.log_likelihood(x, timesteps).sum(), x)[0]

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        epsilon = self.denoiser(sample, timesteps)
        if self.scale == 0:
            return epsilon
        abar = self.alphas_cumprod.to(sample.device, sample.dtype)[timesteps].view(-1, *[1] * (sample.dim() - 1))
        return epsilon - self.scale * (1 - abar).sqrt() * self.gradient(sample, timesteps)


class ControlNetDenoiser(Denoiser):
    """A UNet steered by ControlNets: ``controls`` are ``(controlnet, control image (B, C, *spatial), weight)``;
    every ControlNet sees the same input and context, and the UNet receives the weighted sum of their residuals."""

    def __init__(
        self,
        network: nn.Module,
        controls: Sequence[tuple[nn.Module, torch.Tensor, float]],
        condition: torch.Tensor | None = None,
        mode: str = "crossattn",
    ) -> None:
        if not controls:
            raise ValueError("a ControlNet denoiser needs at least one (controlnet, control image, weight)")
        self.network = network
        self.controls = list(controls)
        self.condition = condition
        self.mode = _check_mode(mode)

    def residuals(
        self, network_input: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The weighted sums of the ControlNets' down-block residuals and mid-block residual."""
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for controlnet, control_image, weight in self.controls:
            control_down, control_mid = controlnet(
                x=network_input,
                timesteps=timesteps,
                controlnet_cond=control_image,
                conditioning_scale=float(weight),
                context=context,
            )
            down = list(control_down) if down is None else [a + b for a, b in zip(down, control_down, strict=True)]
            mid = control_mid if mid is None else mid + control_mid
        return down, mid  # type: ignore[return-value]

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        network_input, context = _network_inputs(sample, self.condition, self.mode)
        down, mid = self.residuals(network_input, timesteps, context)
        return self.network(
            network_input,
            timesteps=timesteps,
            context=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )
