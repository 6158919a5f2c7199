"""DPM-Solver++ behind MONAI's scheduler API: the same steps as diffusers' solver on the same betas, and, on Gaussian
data whose exact noise prediction is known, the exact solution of the probability-flow ODE; its SDE variant takes the
same steps as diffusers' given the same noise and draws from the data's distribution."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler as DiffusersDPMSolver
from monai.networks.schedulers import DDIMScheduler

from common.sampling import DenoisingLoop
from common.sampling.dpm_solver import DPMSolverMultistepScheduler
from common.sampling.schedulers import default_inference_steps, sampling_scheduler

SCHEDULE = {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}
MEAN, STD = 0.4, 0.5  # the data: x0 ~ N(MEAN, STD^2) per pixel


class GaussianDataEpsilon:
    """The exact noise prediction E[eps | x_t] of data x0 ~ N(MEAN, STD^2): a denoiser of the shared loop."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> None:
        self.alphas_cumprod = alphas_cumprod.double()
        self.prediction_type = prediction_type

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod[timesteps].view(-1, *[1] * (sample.dim() - 1)).to(sample.dtype)
        x0 = MEAN + STD**2 * abar.sqrt() / (abar * STD**2 + 1 - abar) * (sample - abar.sqrt() * MEAN)
        eps = (sample - abar.sqrt() * x0) / (1 - abar).sqrt()
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * eps - (1 - abar).sqrt() * x0
        return eps


def exact_solution(x_first: torch.Tensor, abar_first: torch.Tensor, abar_last: torch.Tensor) -> torch.Tensor:
    """What a sampler with an exact solver returns: the probability-flow ODE, which keeps
    ``(x_t - sqrt(abar) MEAN) / sqrt(abar STD^2 + 1 - abar)``, from the first scheduled timestep to the last, then the
    final step's denoising to the posterior mean ``E[x0 | x_last]``."""
    standardised = (x_first - abar_first.sqrt() * MEAN) / (abar_first * STD**2 + 1 - abar_first).sqrt()
    x_last = abar_last.sqrt() * MEAN + (abar_last * STD**2 + 1 - abar_last).sqrt() * standardised
    return MEAN + STD**2 * abar_last.sqrt() / (abar_last * STD**2 + 1 - abar_last) * (x_last - abar_last.sqrt() * MEAN)


def _sample(scheduler, steps: int, prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, exact solution) from the same starting noise."""
    generators = [torch.Generator().manual_seed(s) for s in range(4)]
    loop = DenoisingLoop(scheduler, steps)
    denoiser = GaussianDataEpsilon(scheduler.alphas_cumprod, prediction_type)
    samples = loop(denoiser, generators, (1, 8, 8), dtype=torch.float64)
    start = torch.stack(
        [torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(4)]
    )  # the loop's starting noise
    abar = scheduler.alphas_cumprod.double()
    return samples, exact_solution(start, abar[scheduler.timesteps[0]], abar[scheduler.timesteps[-1]])


@pytest.mark.parametrize("order", [2, 3])
def test_steps_equal_diffusers_on_the_same_betas(order):
    ours = DPMSolverMultistepScheduler(**SCHEDULE, solver_order=order)
    reference = DiffusersDPMSolver(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
        solver_order=order, algorithm_type="dpmsolver++",
    )  # fmt: skip
    torch.testing.assert_close(reference.alphas_cumprod.double(), ours.alphas_cumprod.double(), rtol=1e-5, atol=0)
    ours.set_timesteps(20)
    reference.set_timesteps(20)
    assert ours.timesteps.tolist() == reference.timesteps.tolist()
    denoiser = GaussianDataEpsilon(ours.alphas_cumprod)
    x_ours = x_reference = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps.tolist():
        timesteps = torch.full((2,), t)
        x_ours = ours.step(denoiser(x_ours, timesteps), t, x_ours)[0]
        x_reference = reference.step(denoiser(x_reference, timesteps), t, x_reference).prev_sample
    torch.testing.assert_close(x_ours, x_reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_twenty_steps_reach_the_exact_solution_far_closer_than_ddim(prediction_type):
    errors = {}
    for order in (2, 3):
        scheduler = DPMSolverMultistepScheduler(**SCHEDULE, solver_order=order, prediction_type=prediction_type)
        samples, exact = _sample(scheduler, 20, prediction_type)
        errors[order] = float((samples - exact).abs().max())
    ddim = DDIMScheduler(**SCHEDULE, clip_sample=False, prediction_type=prediction_type)
    ddim_samples, exact = _sample(ddim, 20, prediction_type)
    ddim_error = float((ddim_samples - exact).abs().max())  # ~0.16: DDIM is a first-order solver of the same ODE
    assert max(errors.values()) < 0.01  # within 1 % of the data's scale (std 0.5, samples up to ~2)
    assert max(errors.values()) < ddim_error / 10
    finer = DPMSolverMultistepScheduler(**SCHEDULE, solver_order=3, prediction_type=prediction_type)
    samples, exact = _sample(finer, 100, prediction_type)
    assert float((samples - exact).abs().max()) < 0.002  # and it converges to it


@pytest.mark.parametrize("order", [2, 3])
def test_sde_steps_equal_diffusers_given_the_same_noise(order):
    ours = sampling_scheduler("sde_dpm_solver", SCHEDULE, solver_order=order)
    reference = DiffusersDPMSolver(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
        solver_order=order, algorithm_type="sde-dpmsolver++",
    )  # fmt: skip
    ours.set_timesteps(20)
    reference.set_timesteps(20)
    denoiser = GaussianDataEpsilon(ours.alphas_cumprod)
    generator = torch.Generator().manual_seed(0)
    x_ours = x_reference = torch.randn(2, 1, 8, 8, generator=generator)
    for t in ours.timesteps.tolist():
        timesteps, noise = torch.full((2,), t), torch.randn(2, 1, 8, 8, generator=generator)
        x_ours = ours.step(denoiser(x_ours, timesteps), t, x_ours, noise=noise)[0]
        x_reference = reference.step(denoiser(x_reference, timesteps), t, x_reference, variance_noise=noise).prev_sample
    torch.testing.assert_close(x_ours, x_reference, rtol=1e-4, atol=1e-4)


def test_sde_solver_draws_the_data_distribution_not_the_ode_map():
    """With the exact noise prediction, SDE-DPM-Solver++ returns samples of N(MEAN, STD^2), closer with more steps (at
    20 steps the spread is ~15 % short: the SDE needs finer steps than the ODE); unlike the ODE solver it does not
    map each starting noise to one point."""

    def spread_error(steps: int) -> float:
        scheduler = sampling_scheduler("sde_dpm_solver", SCHEDULE)
        generators = [torch.Generator().manual_seed(s) for s in range(16)]
        samples = DenoisingLoop(scheduler, steps)(
            GaussianDataEpsilon(scheduler.alphas_cumprod), generators, (1, 16, 16), dtype=torch.float64
        )  # 4096 values
        assert abs(float(samples.mean()) - MEAN) < 0.03
        return abs(float(samples.std()) - STD)

    assert spread_error(100) < 0.02 < spread_error(20)
    ode, exact = _sample(DPMSolverMultistepScheduler(**SCHEDULE), 20)
    sde, _ = _sample(sampling_scheduler("sde_dpm_solver", SCHEDULE), 20)
    assert float((sde - exact).abs().mean()) > 0.1 > float((ode - exact).abs().max())


def test_the_card_kind_and_clear_errors():
    scheduler = sampling_scheduler("dpm_solver", SCHEDULE, "v_prediction", solver_order=3)
    assert isinstance(scheduler, DPMSolverMultistepScheduler) and scheduler.solver_order == 3
    assert scheduler.prediction_type == "v_prediction"
    assert isinstance(
        sampling_scheduler("ddim", SCHEDULE, solver_order=3), DDIMScheduler
    )  # only the DPM kinds have one
    assert sampling_scheduler("sde_dpm_solver", SCHEDULE, solver_order=3).stochastic
    kinds = ("ddim", "ddpm", "dpm_solver", "sde_dpm_solver")
    steps = {kind: default_inference_steps(kind, SCHEDULE) for kind in kinds}
    assert steps == {"ddim": 50, "ddpm": 1000, "dpm_solver": 20, "sde_dpm_solver": 30}
    with pytest.raises(ValueError, match="scheduler kind"):
        default_inference_steps("euler", SCHEDULE)
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepScheduler(solver_order=4)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        DPMSolverMultistepScheduler().step(torch.zeros(1), 999, torch.zeros(1))


def test_clip_sample_keeps_a_poor_network_s_samples_in_the_data_range():
    """A pixel-space network far from converged can push DPM-Solver++ out of [-1, 1]; clip_sample clips x_0."""

    def poor(sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return -3 * sample  # an epsilon that points the wrong way, so x_0 estimates overshoot

    generators = [torch.Generator().manual_seed(s) for s in range(2)]
    clipped = DenoisingLoop(DPMSolverMultistepScheduler(**SCHEDULE, clip_sample=True), 20)(poor, generators, (1, 4, 4))
    free = DenoisingLoop(DPMSolverMultistepScheduler(**SCHEDULE), 20)(poor, generators, (1, 4, 4))
    assert clipped.abs().max() <= 1.0 + 1e-6 and free.abs().max() > 1.0
