"""Loading a pair as the pipeline does, for comparisons in tests."""

from __future__ import annotations

import torch

from common.data import pair_transforms


def load_pair(pair: dict, size: int = 32) -> dict[str, torch.Tensor]:
    """``{"image", "label"}`` tensors (1, size, size) of a pair's files, loaded with :func:`pair_transforms`."""
    item = pair_transforms(size)({"image": pair["image"], "label": pair["label"]})
    return {key: torch.as_tensor(item[key]).as_subclass(torch.Tensor) for key in ("image", "label")}
