"""The one denoising loop against MONAI's own samplers and the RePaint paper; hooks, walks, per-sample seeds."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import ControlNetDiffusionInferer, DiffusionInferer
from monai.networks.nets import ControlNet, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from common.sampling import (
    ClassifierFreeDenoiser,
    ControlNetDenoiser,
    DenoisingLoop,
    KnownRegionMerge,
    RePaintWalk,
    UNetDenoiser,
    monotone_walk,
    sampling_scheduler,
)

SHAPE = (2, 8, 8)


def unet(**kwargs) -> DiffusionModelUNet:
    torch.manual_seed(0)
    options = dict(
        spatial_dims=2,
        in_channels=2,
        out_channels=2,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
    )
    return DiffusionModelUNet(**{**options, **kwargs}).eval()


def controlnet(seed: int, **kwargs) -> ControlNet:
    torch.manual_seed(seed)
    options = dict(
        spatial_dims=2,
        in_channels=2,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
        conditioning_embedding_num_channels=(8,),
        conditioning_embedding_in_channels=1,
    )
    net = ControlNet(**{**options, **kwargs}).eval()
    with torch.no_grad():  # ControlNet starts with zero convolutions: give it some effect to compare
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return net


def ddim(eta_steps: int = 10, prediction_type: str = "epsilon") -> DDIMScheduler:
    scheduler = DDIMScheduler(1000, clip_sample=False, prediction_type=prediction_type)
    scheduler.set_timesteps(eta_steps)
    return scheduler


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def noise_of(seeds) -> torch.Tensor:
    return torch.stack([torch.randn(SHAPE, generator=g) for g in generators(seeds)])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_plain_loop_equals_monai_diffusion_inferer(prediction_type):
    network, seeds = unet(), [3, 4, 5]
    reference = DiffusionInferer(ddim(10, prediction_type)).sample(noise_of(seeds), network, verbose=False)
    ours = DenoisingLoop(ddim(10, prediction_type), 10)(UNetDenoiser(network), generators(seeds), SHAPE)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_ddpm_loop_equals_monai_diffusion_inferer_with_the_same_random_stream():
    """DDPM draws noise at every step: one sample, the inferer on the global stream seeded like our generator."""
    network = unet()
    scheduler = DDPMScheduler(50, clip_sample=False)
    scheduler.set_timesteps(50)
    torch.manual_seed(7)
    reference = DiffusionInferer(scheduler).sample(torch.randn(1, *SHAPE), network, verbose=False)
    ours = DenoisingLoop(DDPMScheduler(50, clip_sample=False), 50)(UNetDenoiser(network), generators([7]), SHAPE)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_classifier_free_guidance_equals_monai_cfg_with_scale_one_plus_w():
    network = unet(with_conditioning=True, cross_attention_dim=4, attention_levels=(False, True), num_head_channels=8)
    condition, seeds, w = torch.rand(2, 1, 4), [1, 2], 3.0
    reference = DiffusionInferer(ddim()).sample(
        noise_of(seeds), network, conditioning=condition, cfg=1 + w, cfg_fill_value=-1.0, verbose=False
    )
    denoiser = ClassifierFreeDenoiser(network, condition, guidance=w, null_value=-1.0)
    torch.testing.assert_close(
        DenoisingLoop(ddim(), 10)(denoiser, generators(seeds), SHAPE), reference, atol=1e-5, rtol=1e-5
    )


def test_concat_condition_equals_monai_concat_mode():
    network, condition, seeds = unet(in_channels=3), torch.rand(2, 1, 8, 8), [8, 9]
    reference = DiffusionInferer(ddim()).sample(
        noise_of(seeds), network, conditioning=condition, mode="concat", verbose=False
    )
    ours = DenoisingLoop(ddim(), 10)(UNetDenoiser(network, condition, mode="concat"), generators(seeds), SHAPE)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_controlnet_denoiser_equals_monai_controlnet_inferer():
    network, control, seeds = unet(), controlnet(1), [4, 5]
    control_image = torch.rand(2, 1, 8, 8)
    reference = ControlNetDiffusionInferer(ddim()).sample(
        noise_of(seeds), network, control, control_image, verbose=False
    )
    ours = DenoisingLoop(ddim(), 10)(
        ControlNetDenoiser(network, [(control, control_image, 1.0)]), generators(seeds), SHAPE
    )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_two_controlnets_feed_the_weighted_sum_of_their_residuals():
    network, first, second = unet(), controlnet(1), controlnet(2)
    x, t = torch.randn(2, *SHAPE), torch.tensor([500, 500])
    image_a, image_b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    down_a, mid_a = first(x=x, timesteps=t, controlnet_cond=image_a)
    down_b, mid_b = second(x=x, timesteps=t, controlnet_cond=image_b)
    expected = network(
        x,
        timesteps=t,
        down_block_additional_residuals=[0.7 * a + 0.3 * b for a, b in zip(down_a, down_b, strict=True)],
        mid_block_additional_residual=0.7 * mid_a + 0.3 * mid_b,
    )
    fused = ControlNetDenoiser(network, [(first, image_a, 0.7), (second, image_b, 0.3)])(x, t)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "scheduler, steps, eta",
    [
        (DDPMScheduler(20, clip_sample=False), 20, 0.0),
        (DDIMScheduler(1000, clip_sample=False), 10, 1.0),
        (sampling_scheduler("sde_dpm_solver", {"num_train_timesteps": 1000}), 10, 0.0),  # steps the whole batch
    ],
)
def test_a_sample_depends_only_on_its_seed_with_stochastic_steps(scheduler, steps, eta):
    loop, denoiser = DenoisingLoop(scheduler, steps, eta=eta), UNetDenoiser(unet())
    batch = loop(denoiser, generators([11, 12, 13]), SHAPE)
    alone = loop(denoiser, generators([12]), SHAPE)
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch[0], batch[2])


def test_ddim_eta_one_adds_the_posterior_noise_of_the_scheduler_step():
    """With eta the loop steps each sample with its own generator, exactly as ``DDIMScheduler.step`` does."""
    network, steps = unet(), 5
    scheduler = ddim(steps)
    generator = torch.Generator().manual_seed(21)
    sample = torch.randn(1, *SHAPE, generator=generator)
    for t in scheduler.timesteps.tolist():
        output = network(sample, timesteps=torch.tensor([t]))
        sample = scheduler.step(output, t, sample, eta=1.0, generator=generator)[0]
    ours = DenoisingLoop(ddim(steps), steps, eta=1.0)(UNetDenoiser(network), generators([21]), SHAPE)
    torch.testing.assert_close(ours, sample, rtol=1e-5, atol=1e-5)
    deterministic = DenoisingLoop(ddim(steps), steps)(UNetDenoiser(network), generators([21]), SHAPE)
    assert (ours - deterministic).abs().mean() > 1e-2


def test_a_short_ddpm_chain_and_eta_on_ddpm_are_refused():
    with pytest.raises(ValueError, match="needs all 1000 steps"):
        DenoisingLoop(DDPMScheduler(1000), 50)
    with pytest.raises(ValueError, match="eta is a DDIMScheduler setting"):
        DenoisingLoop(DDPMScheduler(20), 20, eta=1.0)


def test_repaint_walk_is_algorithm_one_for_jump_length_one():
    """RePaint Algorithm 1, T = 4, U = 3: at t = 4, 3, 2 go down and back up U - 1 times, then down; x_1 -> x_0 once."""
    expected = [4, 3, 4, 3, 4, 3, 2, 3, 2, 3, 2, 1, 2, 1, 2, 1, 0]
    assert RePaintWalk(jump_length=1, resamplings=3)(4) == expected


def test_repaint_walk_jumps_back_j_levels_between_the_r_runs_of_a_block():
    """T = 5, j = 2, r = 2: blocks 5 -> 3 and 3 -> 1 run twice with a jump of 2 back up; 1 -> 0 runs once."""
    expected = [5, 4, 3, 5, 4, 3, 2, 1, 3, 2, 1, 0]
    assert RePaintWalk(jump_length=2, resamplings=2)(5) == expected
    assert RePaintWalk(jump_length=3, resamplings=1)(5) == monotone_walk(5)


class Recorder(UNetDenoiser):
    def __init__(self, network) -> None:
        super().__init__(network)
        self.timesteps: list[int] = []

    def __call__(self, sample, timesteps):
        self.timesteps.append(int(timesteps[0]))
        return super().__call__(sample, timesteps)


def test_the_loop_follows_the_repaint_walk_and_jumps_up_by_forward_diffusion():
    steps = 4
    walk = RePaintWalk(jump_length=2, resamplings=2)
    loop = DenoisingLoop(ddim(steps), steps, walk=walk)
    recorder = Recorder(unet())
    loop(recorder, generators([0]), SHAPE)
    timesteps = ddim(steps).timesteps.tolist()  # level l is timesteps[steps - l]
    levels = walk(steps)
    evaluated = [timesteps[steps - a] for a, b in zip(levels[:-1], levels[1:], strict=True) if b < a]
    assert recorder.timesteps == evaluated and len(evaluated) == 6
    # q(x_b | x_a) = sqrt(abar_b / abar_a) x_a + sqrt(1 - abar_b / abar_a) eps, from where the sample is
    x, eps = torch.randn(1, *SHAPE), torch.randn(1, *SHAPE)
    abar = loop.scheduler.alphas_cumprod
    ratio = abar[timesteps[0]] / abar[300]
    torch.testing.assert_close(loop.jump_up(x, 300, timesteps[0], eps), ratio.sqrt() * x + (1 - ratio).sqrt() * eps)
    torch.testing.assert_close(
        loop.jump_up(x, None, timesteps[0], eps), abar[timesteps[0]].sqrt() * x + (1 - abar[timesteps[0]]).sqrt() * eps
    )


def test_known_region_is_kept_exactly_at_the_end_and_noised_to_each_level_on_the_way():
    known, keep = torch.randn(2, *SHAPE), torch.zeros(2, 1, 8, 8)
    keep[..., 2:5, 3:7] = 1.0
    scheduler = ddim(6)
    hook = KnownRegionMerge(scheduler, known, keep)
    seen = []

    class Spy(UNetDenoiser):
        def __call__(self, sample, timesteps):
            seen.append((int(timesteps[0]), sample.clone()))
            return super().__call__(sample, timesteps)

    out = DenoisingLoop(scheduler, 6)(Spy(unet()), generators([1, 2]), SHAPE, hooks=[hook])
    inside = keep.expand_as(known).bool()
    torch.testing.assert_close(out[inside], known[inside])
    assert not torch.allclose(out[~inside], known[~inside])
    # at the first step the known region is the known content at the top noise level with the chain's own noise
    first_t, first_sample = seen[0]
    start_noise = noise_of([1, 2])
    expected = scheduler.add_noise(known, start_noise, torch.full((2,), first_t))
    torch.testing.assert_close(first_sample[inside], expected[inside])
    torch.testing.assert_close(first_sample[~inside], start_noise[~inside])


def test_known_region_is_noised_to_the_level_the_step_moved_the_sample_to():
    """MONAI's DDIM steps from t to t - T // N, which may not be the next scheduled timestep: the hook follows the
    sample (with 3 steps: scheduled 999, 500, 0; the first step lands at 667)."""
    scheduler, seen = ddim(3), []

    class Probe(KnownRegionMerge):
        def after_step(self, sample, timestep, draw_noise):
            seen.append(timestep)
            return super().after_step(sample, timestep, draw_noise)

    known, keep = torch.randn(1, *SHAPE), torch.ones(1, 1, 8, 8)
    DenoisingLoop(scheduler, 3)(UNetDenoiser(unet()), generators([0]), SHAPE, hooks=[Probe(scheduler, known, keep)])
    assert scheduler.timesteps.tolist() == [999, 500, 0]
    assert seen == [999 - 333, 500 - 333, None]


def test_start_part_way_noises_the_input_to_the_start_level_and_runs_the_rest():
    scheduler, steps, start_level = ddim(10), 10, 4
    recorder = Recorder(unet())
    clean = torch.randn(2, *SHAPE)
    DenoisingLoop(scheduler, steps)(recorder, generators([5, 6]), SHAPE, start=clean, start_level=start_level)
    assert recorder.timesteps == scheduler.timesteps.tolist()[steps - start_level :]
    with pytest.raises(ValueError, match="needs the clean input"):
        DenoisingLoop(ddim(10), 10)(recorder, generators([5]), SHAPE, start_level=3)
