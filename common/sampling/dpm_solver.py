"""DPM-Solver++ (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models")
behind MONAI's scheduler API, so the shared loop (:class:`common.sampling.DenoisingLoop`) runs it like DDIM.

The solver is ``diffusers``' ``DPMSolverMultistepScheduler`` (multistep, ``algorithm_type="dpmsolver++"``: the data
prediction form, orders 1-3), built on the betas of the MONAI noise schedule so both use the same ``abar_t``; MONAI's
``Scheduler`` base gives ``add_noise`` and ``alphas_cumprod`` as for every other scheduler of the project. A
multistep solver keeps the model outputs of its last steps, so it walks the noise levels once from the top down
(``set_timesteps`` starts afresh): a walk with jumps back up (RePaint) needs DDIM or DDPM.

``stochastic=True`` gives SDE-DPM-Solver++ (``algorithm_type="sde-dpmsolver++"``, Lu et al., section 5 and appendix
of the same paper): the same data-prediction updates for the reverse SDE, which add fresh noise at every step like
DDPM's ancestral sampling. It forgets part of the errors of an imperfect model that the deterministic ODE carries to
the end, at the same number of network evaluations. The step takes that noise from the caller (``noise``), so the
loop can draw each sample's from its own generator.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import Scheduler
from monai.utils import optional_import

DiffusersDPMSolver, has_diffusers = optional_import("diffusers", name="DPMSolverMultistepScheduler")

__all__ = ["DPMSolverMultistepScheduler"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++ of order ``solver_order`` on a MONAI noise schedule (see the module docstring).

    Args:
        num_train_timesteps: training steps of the noise schedule.
        schedule: MONAI schedule name (``"linear_beta"``, ``"scaled_linear_beta"``, ``"cosine"`` ...).
        solver_order: 1 (DDIM), 2 or 3; the last steps of a short chain use lower orders, as diffusers does.
        prediction_type: what the network predicts: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        clip_sample: clip the predicted ``x_0`` to [-1, 1] at every step (diffusers' thresholding with a maximum of
            1), as DDIM's ``clip_sample``: for pixel-space data in [-1, 1], where a few large steps can otherwise
            leave the data range; off for latents.
        stochastic: SDE-DPM-Solver++ (fresh noise at every step) instead of the ODE solver.
        schedule_args: the schedule's arguments (``beta_start``, ``beta_end``).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        stochastic: bool = False,
        **schedule_args,
    ) -> None:
        super().__init__(num_train_timesteps, schedule, **schedule_args)
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if not has_diffusers:
            raise ImportError("DPM-Solver++ needs the diffusers package: pip install diffusers")
        self.prediction_type = prediction_type
        self.solver_order = solver_order
        self.clip_sample = clip_sample
        self.stochastic = stochastic
        self.solver = DiffusersDPMSolver(
            num_train_timesteps=num_train_timesteps,
            trained_betas=self.betas.double().numpy(),
            solver_order=solver_order,
            prediction_type=prediction_type,
            algorithm_type="sde-dpmsolver++" if stochastic else "dpmsolver++",
            thresholding=clip_sample,
            sample_max_value=1.0,
            lower_order_final=True,
            timestep_spacing="linspace",
        )
        self.num_inference_steps: int | None = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The ``num_inference_steps`` timesteps from ``T - 1`` down (evenly spaced); resets the solver's history."""
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in 1..{self.num_train_timesteps}, got {num_inference_steps}")
        self.solver.set_timesteps(num_inference_steps, device=device)
        self.timesteps = self.solver.timesteps.long()
        self.num_inference_steps = num_inference_steps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """One solver step from ``timestep`` to the next scheduled one (the clean sample after the last); returns
        ``(previous sample, None)`` as MONAI's schedulers return ``(previous sample, predicted original)``. A
        stochastic solver adds ``noise`` (standard normal, the sample's shape), or draws it from ``generator``."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps before step")
        previous = self.solver.step(
            model_output, int(timestep), sample, generator=generator, variance_noise=noise, return_dict=False
        )[0]
        return previous.to(sample.dtype), None
