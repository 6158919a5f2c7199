"""Loading trained networks for inference: a flat state dict into a network that is then frozen."""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["load_frozen_network"]


def load_frozen_network(network: nn.Module, checkpoint: str, device: str | torch.device) -> nn.Module:
    """Load the flat state dict ``checkpoint`` into ``network``; returned on ``device``, in eval mode, without
    gradients. A missing file raises an error that says which stage writes it is missing."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} not found: train the stage that writes it first")
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return network.to(device).eval().requires_grad_(False)
