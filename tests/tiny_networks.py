"""Tiny MONAI generative networks shared by the tests: the quick sizes' shapes at a fraction of the cost."""

from __future__ import annotations

from monai.networks.nets import VQVAE, DiffusionModelUNet


def tiny_vqvae() -> VQVAE:
    """f = 4 VQ autoencoder, 1 -> 1 channel, 3 latent channels, 16 codes."""
    return VQVAE(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        num_res_layers=1,
        num_res_channels=(8, 8),
        downsample_parameters=((2, 4, 1, 1), (2, 4, 1, 1)),
        upsample_parameters=((2, 4, 1, 1, 0), (2, 4, 1, 1, 0)),
        num_embeddings=16,
        embedding_dim=3,
    )


def tiny_diffusion_unet(in_channels: int = 3, out_channels: int = 3) -> DiffusionModelUNet:
    """Two-level diffusion UNet without attention."""
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
    )
