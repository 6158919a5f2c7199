"""Inpainting on the shared loop: the known region is kept exactly, the rest follows DDIM (checked in closed form)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler
from tiny_networks import tiny_diffusion_unet

from common.sampling import DenoisingLoop, KnownRegionMerge, UNetDenoiser


def ddim() -> DDIMScheduler:
    return DDIMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False)


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


class ExactNoise(torch.nn.Module):
    """Predicts the exact noise of x_t when the clean signal is the tensor ``target`` (or the concat condition)."""

    def __init__(self, scheduler: DDIMScheduler, target: torch.Tensor | None = None) -> None:
        super().__init__()
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.target = target
        self.calls = 0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        assert timesteps.shape == (x.shape[0],)
        if self.target is None:  # concat-conditioned: x = cat(x_t, condition) with condition the clean target
            x, target = x.chunk(2, dim=1)
        else:
            target = self.target
        abar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * target) / (1 - abar).sqrt()


class Wobble(torch.nn.Module):
    """An arbitrary but deterministic noise prediction."""

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sin(3 * x) + timesteps.view(-1, 1, 1, 1) / 1000


def inpaint(network, known, keep, seeds, steps=10, condition=None, scheduler=None, **loop_options) -> torch.Tensor:
    """Sample latents that keep ``known`` where ``keep`` is 1 with the loop and the known-region hook."""
    loop = DenoisingLoop(scheduler or ddim(), steps, **loop_options)
    hook = KnownRegionMerge(loop.scheduler, known, keep)
    denoiser = UNetDenoiser(network, condition, mode="concat")
    return loop(denoiser, generators(seeds), known.shape[1:], hooks=[hook])


def half_mask(batch: int = 2) -> torch.Tensor:
    mask = torch.zeros(batch, 1, 4, 4)
    mask[..., :2, :] = 1
    return mask


def test_everything_known_returns_the_known_latents_exactly():
    z0 = torch.randn(2, 3, 4, 4)
    out = inpaint(Wobble(), z0, torch.ones(2, 1, 4, 4), [0, 1])
    assert torch.equal(out, z0)


def test_nothing_known_ddim_with_the_exact_noise_returns_the_clean_signal():
    scheduler = ddim()
    target = torch.full((2, 3, 4, 4), 0.7)
    target[1] = -1.8  # outside [-1, 1]: scaled latents are not clipped
    model = ExactNoise(scheduler, target)
    out = inpaint(model, torch.zeros_like(target), torch.zeros(2, 1, 4, 4), [3, 4], steps=25, scheduler=scheduler)
    assert model.calls == 25
    assert torch.allclose(out, target, atol=1e-5)


def test_known_region_is_kept_and_unknown_region_changes_with_the_seed():
    z0 = torch.randn(2, 3, 4, 4)
    mask = half_mask()
    first = inpaint(Wobble(), z0, mask, [0, 1])
    second = inpaint(Wobble(), z0, mask, [7, 8])
    known = mask.expand_as(z0).bool()
    assert torch.equal(first[known], z0[known]) and torch.equal(second[known], z0[known])
    assert (first[~known] - second[~known]).abs().min() > 1e-4
    assert torch.equal(first, inpaint(Wobble(), z0, mask, [0, 1]))  # same seeds, same samples


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_sample_depends_on_its_seed_not_on_its_batch(eta):
    z0 = torch.randn(3, 3, 4, 4)
    batch = inpaint(Wobble(), z0, half_mask(3), [10, 11, 12], steps=5, eta=eta)
    alone = inpaint(Wobble(), z0[1:2], half_mask(1), [11], steps=5, eta=eta)
    assert torch.allclose(batch[1:2], alone, atol=1e-6)


def test_eta_adds_step_noise_in_the_regenerated_region_only():
    z0, mask = torch.randn(2, 3, 4, 4), half_mask()
    deterministic = inpaint(Wobble(), z0, mask, [0, 1])
    stochastic = inpaint(Wobble(), z0, mask, [0, 1], eta=1.0)
    known = mask.expand_as(z0).bool()
    assert torch.equal(stochastic[known], z0[known])
    assert (stochastic[~known] - deterministic[~known]).abs().mean() > 1e-2


def test_one_merge_step_matches_the_ddim_update_by_hand():
    scheduler = ddim()
    scheduler.set_timesteps(50)
    t = 500
    x_t, eps_model, z0, noise = (torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(4))
    mask = half_mask(1)
    hook = KnownRegionMerge(scheduler, z0, mask)
    t_prev = t - 1000 // 50  # DDIM with 50 of 1000 steps moves 20 timesteps
    out = hook.after_step(scheduler.step(eps_model, t, x_t)[0], t_prev, lambda: noise)

    abar = scheduler.alphas_cumprod
    x0_hat = (x_t - (1 - abar[t]).sqrt() * eps_model) / abar[t].sqrt()  # DDIM eq. 12, predicted x_0
    generated = abar[t_prev].sqrt() * x0_hat + (1 - abar[t_prev]).sqrt() * eps_model  # eta = 0
    known = abar[t_prev].sqrt() * z0 + (1 - abar[t_prev]).sqrt() * noise  # q(z0, t_prev)
    assert torch.allclose(out, mask * known + (1 - mask) * generated, atol=1e-6)

    last = hook.after_step(x_t, None, lambda: noise)  # the clean end: the known part is z0 itself
    assert torch.equal(last[..., :2, :], z0[..., :2, :])


def test_concat_condition_is_fed_to_the_network():
    scheduler = ddim()
    condition = torch.randn(2, 3, 4, 4)
    model = ExactNoise(scheduler, target=None)  # denoises towards the condition it receives
    out = inpaint(model, torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), [0, 1], condition=condition)
    assert torch.allclose(out, condition, atol=1e-5)


def test_runs_a_monai_diffusion_unet_with_progress_bar():
    unet = tiny_diffusion_unet().eval()
    z0 = torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    out = inpaint(unet, z0, mask, [0, 1], steps=3, progress=True)
    assert out.shape == z0.shape and torch.isfinite(out).all()
    assert torch.equal(out[..., 2:5, 2:5], z0[..., 2:5, 2:5])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="keep must have shape"):
        KnownRegionMerge(ddim(), torch.zeros(2, 3, 4, 4), torch.ones(2, 1, 2, 2))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        DenoisingLoop(ddim(), 2, eta=-1.0)
