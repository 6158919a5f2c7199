"""GAUDA's pair generator: class-conditional joint latent sampling with classifier-free guidance, then both decoders.

Job ``i`` of a :class:`common.generation.JobBatch` is conditioned on the multi-hot vector of its class set and drawn
from its seed alone: the joint latent ``cat(s_image * z_image, s_mask * z_mask)`` is sampled by the shared denoising
loop (:class:`common.sampling.DenoisingLoop`) with classifier-free guidance of strength ``w``
(:class:`common.sampling.ClassifierFreeDenoiser`, GAUDA: w = 3, the null condition filled with the value dropped in
training), split, unscaled and decoded; the image is clamped to [0, 1] and the label is the argmax over the mask
decoder's K channels. With ``asked_classes_only`` (the default) that argmax runs over background and the job's class
set only: the diffusion model sometimes gives part of a structure the label of a class that was not asked for (e.g. a
lone lobe's edge the other lobe's label, a nerve the lobe's), and the decoder's next choice among the asked classes is
the label the condition promises.

:func:`load_generator` builds it from the bundle's ``inference.json`` (id ``generator``), whose networks, noise
schedule, prediction type, latent scales and null condition come from the checkpoints' cards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import Scheduler
from torch import nn

from common.generation import JobBatch
from common.sampling import ClassifierFreeDenoiser, DenoisingLoop
from common.stages import add_bundle_to_path
from gauda.joint_latents import class_condition, split_joint_latent

__all__ = ["JointLatentGenerator", "load_generator"]


class JointLatentGenerator:
    """Makes (image, mask) pairs conditioned on class sets (see the module docstring).

    Args:
        image_autoencoder, mask_autoencoder: frozen autoencoders (MONAI ``VQVAE``) with ``decode_stage_2_outputs``.
        network: the joint LDM (``DiffusionModelUNet`` with cross-attention context (B, 1, K)).
        scheduler: the sampling scheduler on the training noise schedule (DDIM, or DDPM with every step).
        num_inference_steps: reverse steps (DDPM: all training steps; DDIM: e.g. 50).
        guidance: guidance strength ``w`` (GAUDA: 3.0).
        null_value: fill value of the null condition, the one used when the condition was dropped in training.
        image_scale, mask_scale: the latent scale factors of training.
        image_channels, mask_channels: latent channels of each part.
        latent_size: spatial size (h, w) of the latents.
        num_classes: K, classes incl. background (length of the condition vector and mask decoder channels).
        eta: DDIM noise weight.
        asked_classes_only: label each pixel with background or a class of its job's class set (see the module
            docstring); False gives the plain argmax over all K channels.
        progress: tqdm bar over the steps.
    """

    def __init__(
        self,
        image_autoencoder: nn.Module,
        mask_autoencoder: nn.Module,
        network: nn.Module,
        scheduler: Scheduler,
        num_inference_steps: int,
        guidance: float,
        null_value: float,
        image_scale: float,
        mask_scale: float,
        image_channels: int,
        mask_channels: int,
        latent_size: Sequence[int],
        num_classes: int,
        eta: float = 0.0,
        asked_classes_only: bool = True,
        progress: bool = False,
    ) -> None:
        self.image_autoencoder = image_autoencoder.eval()
        self.mask_autoencoder = mask_autoencoder.eval()
        self.network = network.eval()
        self.loop = DenoisingLoop(scheduler, num_inference_steps, eta=eta, progress=progress, description="GAUDA")
        self.guidance = float(guidance)
        self.null_value = float(null_value)
        self.image_scale = float(image_scale)
        self.mask_scale = float(mask_scale)
        self.image_channels = int(image_channels)
        self.mask_channels = int(mask_channels)
        self.latent_size = tuple(int(s) for s in latent_size)
        self.num_classes = int(num_classes)
        self.asked_classes_only = bool(asked_classes_only)
        self.device = next(network.parameters()).device

    @torch.no_grad()
    def __call__(self, batch: JobBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, H, W) in [0, 1] and class-index labels (B, 1, H, W), one pair per job."""
        if batch.conditions is None or len(batch.conditions) != len(batch.seeds):
            raise ValueError("GAUDA samples one pair per class set: the jobs need a condition and a seed each")
        context = class_condition(batch.conditions, self.num_classes).to(self.device)
        generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in batch.seeds]
        denoiser = ClassifierFreeDenoiser(self.network, context, self.guidance, self.null_value)
        shape = (self.image_channels + self.mask_channels, *self.latent_size)
        latents = self.loop(denoiser, generators, shape)
        image_latent, mask_latent = split_joint_latent(latents, self.image_channels)
        images = self.image_autoencoder.decode_stage_2_outputs(image_latent / self.image_scale).clamp(0.0, 1.0)
        logits = self.mask_autoencoder.decode_stage_2_outputs(mask_latent / self.mask_scale)
        if self.asked_classes_only:
            asked = context[:, 0] > 0
            asked[:, 0] = True
            logits = logits.masked_fill(~asked[:, :, None, None], float("-inf"))
        return images, logits.argmax(dim=1, keepdim=True)


def load_generator(
    config_file: str | Sequence[str] = "bundles/gauda/configs/inference.json",
    ckpt_dir: str | None = None,
    device: str | torch.device | None = None,
    num_inference_steps: int | None = None,
    guidance: float | None = None,
    **overrides: Any,
) -> JointLatentGenerator:
    """The bundle's ``generator`` from its inference config (a path or a list of layered paths).

    ``ckpt_dir``, ``device``, ``num_inference_steps`` and ``guidance`` override the config ids of the same name when
    given; ``overrides`` any other id (e.g. ``sampler="ddpm"``, ``dataset_dir=...``).
    """
    files = [config_file] if isinstance(config_file, str) else list(config_file)
    add_bundle_to_path(files[0])
    parser = ConfigParser()
    parser.read_config(files)
    given = {"ckpt_dir": ckpt_dir, "device": device, "num_inference_steps": num_inference_steps, "guidance": guidance}
    updates = {key: value for key, value in given.items() if value is not None}
    if "device" in updates:
        updates["device"] = torch.device(updates["device"])
    parser.update({**updates, **overrides})
    return parser.get_parsed_content("generator")
