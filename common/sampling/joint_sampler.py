"""GAUDA's pair generator: class-conditional joint latent sampling, then both decoders.

:class:`JointLatentSampler` is the callable the online loop consumes:
``sampler(class_sets, seeds) -> (images (B, 1, H, W) in [0, 1], labels (B, 1, H, W) class indices)``. Sample ``i`` is
conditioned on the multi-hot vector of ``class_sets[i]`` and drawn from ``seeds[i]`` alone: the joint latent
``cat(s_image * z_image, s_mask * z_mask)`` is sampled with classifier-free guidance
(:class:`common.sampling.classifier_free.ClassifierFreeGuidanceSampler`), split, unscaled and decoded; the image is
clamped to [0, 1] and the label is the argmax over the mask decoder's K channels.

:func:`load_joint_sampler` builds it from the bundle's ``inference.json`` (id ``joint_sampler``);
:func:`save_untrained_generator` writes random-weight checkpoints it can load (for speed benchmarks and tests).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from common.joint_latents import class_condition, split_joint_latent
from common.latents import save_latent_scale
from common.sampling.classifier_free import ClassifierFreeGuidanceSampler

__all__ = ["JointLatentSampler", "load_joint_sampler", "save_untrained_generator"]


class JointLatentSampler:
    """Makes (image, mask) pairs conditioned on class sets (see the module docstring).

    Args:
        image_autoencoder, mask_autoencoder: frozen autoencoders (MONAI ``VQVAE``) with ``decode_stage_2_outputs``.
        network: the joint LDM (``DiffusionModelUNet`` with cross-attention context (B, 1, K)).
        sampler: the guided sampler (scheduler, steps, guidance ``w``, null value).
        image_scale, mask_scale: the latent scale factors of training.
        image_channels, mask_channels: latent channels of each part.
        latent_size: spatial size (h, w) of the latents.
        num_classes: K, classes incl. background (length of the condition vector and mask decoder channels).
        device: where sampling runs.
    """

    def __init__(
        self,
        image_autoencoder: nn.Module,
        mask_autoencoder: nn.Module,
        network: nn.Module,
        sampler: ClassifierFreeGuidanceSampler,
        image_scale: float,
        mask_scale: float,
        image_channels: int,
        mask_channels: int,
        latent_size: Sequence[int],
        num_classes: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.image_autoencoder = image_autoencoder.eval()
        self.mask_autoencoder = mask_autoencoder.eval()
        self.network = network.eval()
        self.sampler = sampler
        self.image_scale = float(image_scale)
        self.mask_scale = float(mask_scale)
        self.image_channels = int(image_channels)
        self.mask_channels = int(mask_channels)
        self.latent_size = tuple(int(s) for s in latent_size)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, class_sets: Sequence[Sequence[int]], seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(class_sets) != len(seeds):
            raise ValueError(f"need one seed per class set: {len(class_sets)} class sets, {len(seeds)} seeds")
        context = class_condition(class_sets, self.num_classes).to(self.device)
        generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        shape = (len(seeds), self.image_channels + self.mask_channels, *self.latent_size)
        latents = self.sampler(self.network, shape, context, generators)
        image_latent, mask_latent = split_joint_latent(latents, self.image_channels)
        images = self.image_autoencoder.decode_stage_2_outputs(image_latent / self.image_scale).clamp(0.0, 1.0)
        logits = self.mask_autoencoder.decode_stage_2_outputs(mask_latent / self.mask_scale)
        return images, logits.argmax(dim=1, keepdim=True)


def load_joint_sampler(
    config_file: str | Sequence[str] | ConfigParser = "bundles/gauda/configs/inference.json",
    ckpt_dir: str | None = None,
    device: str | torch.device | None = None,
    num_inference_steps: int | None = None,
    guidance: float | None = None,
    **overrides: Any,
) -> JointLatentSampler:
    """The bundle's ``joint_sampler`` from its inference config (a path, a list of layered paths or a parser).

    ``ckpt_dir``, ``device``, ``num_inference_steps`` and ``guidance`` override the config ids of the same name when
    given; ``overrides`` any other id (e.g. ``sampler="ddpm"``, ``dataset_dir=...``).
    """
    if isinstance(config_file, ConfigParser):
        parser = config_file
    else:
        parser = ConfigParser()
        parser.read_config(config_file)
    given = {"ckpt_dir": ckpt_dir, "device": device, "num_inference_steps": num_inference_steps, "guidance": guidance}
    updates = {key: value for key, value in given.items() if value is not None}
    if "device" in updates:
        updates["device"] = torch.device(updates["device"])
    parser.update({**updates, **overrides})
    return parser.get_parsed_content("joint_sampler")


def save_untrained_generator(ckpt_dir: str, config_file: str = "bundles/gauda/configs/inference.json") -> str:
    """Random-weight checkpoints of the config's two autoencoders and joint LDM, named as the generator stages write
    them (``model_image_autoencoder.pt``, ``model_mask_autoencoder.pt``, ``model.pt``, latent scales 1.0), so
    :func:`load_joint_sampler` can load them from ``ckpt_dir``; returns ``ckpt_dir``. Speed does not depend on the
    weights, so benchmarks and tests need no trained generator."""
    parser = ConfigParser()
    parser.read_config(config_file)
    os.makedirs(ckpt_dir, exist_ok=True)
    for definition, name in [
        ("image_autoencoder_def", "model_image_autoencoder.pt"),
        ("mask_autoencoder_def", "model_mask_autoencoder.pt"),
        ("network_def", "model.pt"),
    ]:
        torch.save(parser.get_parsed_content(definition).state_dict(), os.path.join(ckpt_dir, name))
    for part in ("image", "mask"):
        save_latent_scale(os.path.join(ckpt_dir, f"latent_scale_{part}.json"), 1.0)
    return str(ckpt_dir)
