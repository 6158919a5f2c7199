"""A deep ensemble of segmenters as one ``nn.Module``: GAUDA's Bayesian downstream model (Frisch et al., sec. 3.2).

The members train together on the same batches (one optimiser over all parameters; Adam's update is per parameter,
so this equals M independent optimisers up to the 1/M loss scale), each with its own loss (:class:`MemberMeanLoss`);
their diversity comes from their independent random initialisations, as in Lakshminarayanan et al.'s deep ensembles
without bootstrap. Any MONAI engine works unchanged:

- training mode: ``forward`` returns the member logits stacked on a new first dim, ``(M, B, C, *spatial)``, which
  :class:`MemberMeanLoss` turns into the mean of the members' losses;
- eval mode: ``forward`` returns ``log`` of the members' mean softmax probabilities, ``(B, C, *spatial)``, so argmax
  gives the ensemble's mask and ``softmax(output)`` is exactly the ensemble's predictive distribution.

``common.uncertainty.ensemble_predict(ensemble.members, images)`` gives the member probabilities for ``UE_c``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BAYESIAN_MODELS", "DeepEnsemble", "MemberMeanLoss", "bayesian_segmenter"]

BAYESIAN_MODELS = ("ensemble", "mc_dropout")


class DeepEnsemble(nn.Module):
    """``num_members`` networks made by ``member_factory`` (e.g. a MONAI ``UNet`` config with ``"_mode_": "callable"``).

    Args:
        member_factory: called with no argument once per member; each call must build a freshly initialised network.
        num_members: ensemble size M (GAUDA: 10; fewer on a CPU).
    """

    def __init__(self, member_factory: Callable[[], nn.Module], num_members: int) -> None:
        super().__init__()
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}")
        self.members = nn.ModuleList(member_factory() for _ in range(num_members))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(images) for member in self.members])
        if self.training:
            return logits
        return torch.log(torch.softmax(logits, dim=2).mean(dim=0).clamp_min(torch.finfo(logits.dtype).tiny))


class MemberMeanLoss(nn.Module):
    """Mean over ensemble members of ``loss(member_logits, target)``; a plain ``(B, C, ...)`` input passes through.

    Each member gets its own loss on the same batch (e.g. MONAI ``DiceCELoss``), so the gradient of each member is
    the one it would get alone, divided by M.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.ndim == target.ndim:
            return self.loss(prediction, target)
        if prediction.ndim != target.ndim + 1:
            raise ValueError(
                f"expected member logits (M, B, C, ...) for a target of shape {tuple(target.shape)}, "
                f"got {tuple(prediction.shape)}"
            )
        return torch.stack([self.loss(member, target) for member in prediction]).mean()


def bayesian_segmenter(
    member_factory: Callable[[], nn.Module], kind: str = "ensemble", num_members: int = 3
) -> nn.Module:
    """GAUDA's Bayesian downstream model (sec. 3.2): a :class:`DeepEnsemble` of ``num_members`` networks, or one
    network whose dropout layers give MC-dropout samples (``kind="mc_dropout"``; M times cheaper to train)."""
    if kind not in BAYESIAN_MODELS:
        raise ValueError(f"kind must be one of {BAYESIAN_MODELS}, got {kind!r}")
    if kind == "ensemble":
        return DeepEnsemble(member_factory, num_members)
    network = member_factory()
    if not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in network.modules()):
        raise ValueError("an MC-dropout segmenter needs dropout layers with p > 0 (set the network's dropout)")
    return network
