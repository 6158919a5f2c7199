"""AugPaint's and GAUDA's generators on the shared loop give the same tensors as the loops they replaced.

The references below are the two samplers as they were before the loop was shared (written out step by step on
MONAI's schedulers): AugPaint's DDIM inpainting with the known latent re-noised after every step to where the step
moved the sample, and GAUDA's classifier-free guided sampling with every sample's noise from its own generator.
"""

from __future__ import annotations

import pytest
import torch
from augpaint.inpainter import LatentInpainter
from gauda.generator import JointLatentGenerator
from gauda.joint_latents import class_condition
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from phantom_pairs import load_pair
from tiny_networks import build, tiny_unet_definition, tiny_vqvae_definition

from common.generation import JobBatch
from common.regions import keep_mask, to_latent_grid
from common.sampling import guided_output

SCHEDULE = {"schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195, "clip_sample": False}


def ddim() -> DDIMScheduler:
    return DDIMScheduler(1000, prediction_type="v_prediction", **SCHEDULE)


def noise(generators, shape) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


@torch.no_grad()
def reference_inpainting(network, known, keep, seeds, steps):
    """The pre-loop AugPaint sampler: start from q(z0, T) inside, noise outside; after every DDIM step (eta 0) draw
    fresh noise and merge q(z0, t - T // N) inside (z0 itself past the end)."""
    scheduler, generators = ddim(), [torch.Generator().manual_seed(s) for s in seeds]
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.tolist()
    start = noise(generators, known.shape[1:])
    first = torch.full((len(seeds),), timesteps[0], dtype=torch.long)
    sample = keep * scheduler.add_noise(known, start, first) + (1 - keep) * start
    for t in timesteps:
        output = network(sample, timesteps=torch.full((len(seeds),), t, dtype=torch.long))
        fresh = noise(generators, known.shape[1:])
        generated = scheduler.step(output, t, sample)[0]
        previous = t - 1000 // steps
        if previous < 0:
            inside = known
        else:
            inside = scheduler.add_noise(known, fresh, torch.full((len(seeds),), previous, dtype=torch.long))
        sample = keep * inside + (1 - keep) * generated
    return sample


@pytest.mark.parametrize("steps", [3, 7])
def test_augpaint_samples_are_those_of_the_sampler_it_replaced(pairs, steps):
    torch.manual_seed(0)
    autoencoder, network = build(tiny_vqvae_definition()).eval(), build(tiny_unet_definition()).eval()
    loaded = [load_pair(p) for p in pairs]
    images = torch.stack([item["image"] for item in loaded])
    labels = torch.stack([item["label"] for item in loaded]).long()
    inpainter = LatentInpainter(autoencoder, network, ddim(), steps, eta=0.0, scale_factor=1.3, box_margin=1)
    ours, _ = inpainter(JobBatch([5, 6, 7], images, labels))
    with torch.no_grad():
        known = 1.3 * autoencoder.encode_stage_2_inputs(images)
    keep = to_latent_grid(keep_mask(labels, "box", 1), known.shape[-2:])
    latents = reference_inpainting(network, known, keep, [5, 6, 7], steps)
    with torch.no_grad():
        expected = autoencoder.decode_stage_2_outputs(latents / 1.3).clamp(0, 1)
    assert torch.equal(ours, expected)


@torch.no_grad()
def reference_guided_sampling(network, scheduler, steps, context, seeds, shape, guidance=3.0):
    """The pre-loop GAUDA sampler: one batched call on (condition, null condition) per step, the guided mix, DDIM's
    step on the batch or DDPM's step per sample with its own generator."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    sample = noise(generators, shape)
    both = torch.cat([context, torch.full_like(context, -1.0)])
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps.tolist():
        output = network(torch.cat([sample, sample]), timesteps=torch.full((2 * len(seeds),), t), context=both)
        guided = guided_output(*output.chunk(2), guidance)
        if isinstance(scheduler, DDIMScheduler):
            sample = scheduler.step(guided, t, sample)[0]
        else:
            sample = torch.cat(
                [
                    scheduler.step(guided[i : i + 1], t, sample[i : i + 1], generator=g)[0]
                    for i, g in enumerate(generators)
                ]
            )
    return sample


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_gauda_samples_are_those_of_the_sampler_it_replaced(kind):
    torch.manual_seed(1)
    image_ae, mask_ae = build(tiny_vqvae_definition(1, 3)).eval(), build(tiny_vqvae_definition(5, 3)).eval()
    extra = {"with_conditioning": True, "cross_attention_dim": 5, "attention_levels": [False, True]}
    network = build(tiny_unet_definition(6, 6, num_head_channels=8, **extra)).eval()

    def scheduler():
        if kind == "ddim":
            return ddim()
        return DDPMScheduler(20, prediction_type="v_prediction", **SCHEDULE)  # a full chain: every step

    steps = 10 if kind == "ddim" else 20
    sizes = {"image_scale": 1.1, "mask_scale": 0.9, "image_channels": 3, "mask_channels": 3, "latent_size": (8, 8)}
    generator = JointLatentGenerator(  # the sampler as ported: labels from the argmax over every class
        image_ae, mask_ae, network, scheduler(), steps, 3.0, -1.0, num_classes=5, asked_classes_only=False, **sizes
    )
    conditions = [[1], [1, 2], [3]]
    images, labels = generator(JobBatch([11, 12, 13], conditions=conditions))
    latents = reference_guided_sampling(
        network, scheduler(), steps, class_condition(conditions, 5), [11, 12, 13], (6, 8, 8)
    )
    with torch.no_grad():
        expected_images = image_ae.decode_stage_2_outputs(latents[:, :3] / 1.1).clamp(0, 1)
        expected_labels = mask_ae.decode_stage_2_outputs(latents[:, 3:] / 0.9).argmax(1, keepdim=True)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
