"""Tiny MONAI generative networks shared by the tests, as definitions (config components) and as modules, and
checkpoints with cards made from them: the quick sizes' shapes at a fraction of the cost."""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from common.checkpoints import save_card

VQVAE = "monai.networks.nets.VQVAE"
UNET = "monai.networks.nets.DiffusionModelUNet"
TINY_DIFFUSION_KNOBS = {  # a bundle's quick shapes, narrower, so that a 1000-step DDPM chain takes seconds
    "network_def#channels": [8, 8, 8],
    "network_def#num_head_channels": [0, 8, 8],
    "network_def#norm_num_groups": 8,
}
TINY_BUNDLE_KNOBS = {  # networks of a bundle's own beyond its diffusion UNet, as narrow
    "diffuseexpand": {  # a pixel-space DDPM: a shorter chain, so its 1000-step sampler setting runs in seconds
        "noise_schedule#num_train_timesteps": 100,
        "segmenter_def#channels": [8, 8, 8],
        "segmenter_def#num_head_channels": 8,
        "segmenter_def#norm_num_groups": 8,
    },
}


def tiny_training_knobs(bundle) -> dict:
    """The knobs that train a method's bundle in seconds: its smoke knobs with every network narrow."""
    return {
        **bundle.evaluation["smoke_knobs"]["train"],
        **TINY_DIFFUSION_KNOBS,
        **TINY_BUNDLE_KNOBS.get(bundle.name, {}),
    }


NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
}


def tiny_vqvae_definition(in_channels: int = 1, embedding_dim: int = 3) -> dict[str, Any]:
    """f = 4 VQ autoencoder, ``in_channels`` -> ``in_channels``, ``embedding_dim`` latent channels, 16 codes."""
    return {
        "_target_": VQVAE,
        "spatial_dims": 2,
        "in_channels": in_channels,
        "out_channels": in_channels,
        "channels": [8, 8],
        "num_res_layers": 1,
        "num_res_channels": [8, 8],
        "downsample_parameters": [[2, 4, 1, 1], [2, 4, 1, 1]],
        "upsample_parameters": [[2, 4, 1, 1, 0], [2, 4, 1, 1, 0]],
        "num_embeddings": 16,
        "embedding_dim": embedding_dim,
    }


def tiny_unet_definition(in_channels: int = 3, out_channels: int = 3, **extra: Any) -> dict[str, Any]:
    """Two-level diffusion UNet without attention (``extra``: e.g. cross-attention conditioning)."""
    return {
        "_target_": UNET,
        "spatial_dims": 2,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "channels": [8, 8],
        "attention_levels": [False, False],
        "num_res_blocks": 1,
        "norm_num_groups": 8,
        **extra,
    }


def build(definition: dict[str, Any]) -> nn.Module:
    return ConfigParser({"network": definition}).get_parsed_content("network")


def tiny_vqvae() -> nn.Module:
    return build(tiny_vqvae_definition())


def tiny_diffusion_unet(in_channels: int = 3, out_channels: int = 3) -> nn.Module:
    return build(tiny_unet_definition(in_channels, out_channels))


def tiny_checkpoint(path: str, definition: dict[str, Any], seed: int = 0, inputs=(), **settings: Any) -> str:
    """A random-weight checkpoint of ``definition`` (seeded) with its card; returns ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build(definition).state_dict(), path)
    save_card(path, definition, inputs=inputs, **settings)
    return path
