"""An autoencoder as an image-to-image model in MONAI engines: its loss, its batches and its inferer.

The autoencoder's target is its own input, so :func:`reconstruction_batch` gives the image twice; MONAI's ``VQVAE``
returns ``(reconstruction, quantization_loss)``, so :class:`ReconstructionInferer` keeps the reconstruction for
evaluators and metrics; :class:`ReconstructionLoss` is the pixel loss of the reconstruction and
:class:`ProbabilityCrossEntropyLoss` the cross-entropy of a mask autoencoder's class probabilities against one-hot
masks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from monai.losses import PerceptualLoss
from monai.utils import CommonKeys
from torch import nn

__all__ = ["ProbabilityCrossEntropyLoss", "ReconstructionLoss", "ReconstructionInferer", "reconstruction_batch"]


class ReconstructionLoss(nn.Module):
    """L1 between reconstruction and image, plus ``perceptual_weight`` times a perceptual loss when it is > 0.

    The perceptual loss is MONAI's ``PerceptualLoss`` on a torchvision ResNet-50, the only variant whose weights can
    come from a local file: with ``perceptual_weights_path`` its weights are read from that file, without it the
    network keeps its random initialisation (MONAI's ``pretrained=False``). Nothing is ever downloaded, and with the
    default weight 0 no perceptual network is built at all.

    Args:
        perceptual_weight: weight of the perceptual term (0 = L1 only).
        perceptual_weights_path: local ResNet-50 state dict file (torchvision layout) for the perceptual network.
        perceptual_weights_key: key of the state dict inside that file, if it is nested.
    """

    def __init__(
        self,
        perceptual_weight: float = 0.0,
        perceptual_weights_path: str | None = None,
        perceptual_weights_key: str | None = None,
    ) -> None:
        super().__init__()
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
        if perceptual_weights_path is not None and not os.path.isfile(perceptual_weights_path):
            raise FileNotFoundError(f"perceptual_weights_path {perceptual_weights_path} is not a file")
        self.l1 = nn.L1Loss()
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual: nn.Module | None = None
        if self.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(
                spatial_dims=2,
                network_type="resnet50",
                is_fake_3d=False,
                pretrained=perceptual_weights_path is not None,
                pretrained_path=perceptual_weights_path,
                pretrained_state_dict_key=perceptual_weights_key,
            )

    def forward(self, reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        loss = self.l1(reconstruction, image)
        if self.perceptual is not None:
            loss = loss + self.perceptual_weight * self.perceptual(reconstruction.float(), image.float())
        return loss


class ProbabilityCrossEntropyLoss(nn.Module):
    """Cross-entropy ``-mean_pixels sum_c onehot_c * log p_c`` of class probabilities ``p`` (B, K, H, W), e.g. the
    softmax of a mask decoder's logits, against one-hot masks (B, K, H, W). The log is taken of ``p`` clamped to
    ``min_probability``; above that it equals ``log_softmax`` of the logits, i.e. the usual cross-entropy."""

    def __init__(self, min_probability: float = 1e-7) -> None:
        super().__init__()
        self.min_probability = float(min_probability)

    def forward(self, probabilities: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        if probabilities.shape != one_hot.shape:
            raise ValueError(
                f"probabilities {tuple(probabilities.shape)} and one-hot masks {tuple(one_hot.shape)} must match"
            )
        log_probabilities = torch.log(probabilities.clamp_min(self.min_probability))
        return -(one_hot * log_probabilities).sum(dim=1).mean()


def reconstruction_batch(
    batchdata: Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    key: str = CommonKeys.IMAGE,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for autoencoders: the batch's ``key`` (``"image"``; ``"label"`` for a mask autoencoder on
    one-hot labels) is both the input and the target."""
    image = batchdata[key].to(device=device, non_blocking=non_blocking, **kwargs)
    return image, image


class ReconstructionInferer(Inferer):
    """Runs an autoencoder and returns its reconstruction: the first output when the network returns a tuple (VQVAE:
    reconstruction and quantisation loss; AutoencoderKL: reconstruction, mean and sigma)."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        outputs = network(inputs, *args, **kwargs)
        return outputs[0] if isinstance(outputs, Sequence) else outputs
