"""Filters that decide which synthetic pairs to keep.

- AugPaint (Hu & Shi): a segmenter trained on the labelled data scores each synthetic image by its confidence in the
  labelled area (:func:`confidence_scores`); the top fraction is kept (:func:`keep_top_fraction`).
- DiffuseExpand (Shao et al., stage IV): a well-trained segmenter's Dice loss on the pair keeps it, relabels it with
  the segmenter's prediction or drops it (:func:`dice_keep_relabel_drop`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["KEPT", "RELABELLED", "DROPPED", "confidence_scores", "keep_top_fraction", "dice_keep_relabel_drop"]

KEPT, RELABELLED, DROPPED = "kept", "relabelled", "dropped"


def confidence_scores(
    probabilities: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None = None
) -> torch.Tensor:
    """AugPaint's filter score: per sample, the mean softmax probability of the labelled class over the labelled area.

    Args:
        probabilities: softmax output of the segmenter, ``(B, C, *spatial)``.
        labels: class-index maps, ``(B, 1, *spatial)`` or ``(B, *spatial)``.
        classes: the classes whose pixels form the labelled area; default every foreground class (label > 0).

    Returns:
        ``(B,)`` float scores: for each pixel of the labelled area the probability of its own label class, averaged.
        A sample without a labelled pixel scores NaN (:func:`keep_top_fraction` ranks it last).
    """
    if probabilities.ndim < 3:
        raise ValueError(f"probabilities must be (B, C, *spatial), got shape {tuple(probabilities.shape)}")
    if labels.ndim == probabilities.ndim:
        if labels.shape[1] != 1:
            raise ValueError(f"labels must be class-index maps (B, 1, *spatial), got shape {tuple(labels.shape)}")
        labels = labels[:, 0]
    if labels.shape != probabilities.shape[:1] + probabilities.shape[2:]:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match probabilities {tuple(probabilities.shape)} (B, C, *spatial)"
        )
    labels = labels.long()
    num_classes = probabilities.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"label values must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    labelled = torch.arange(1, num_classes) if classes is None else torch.as_tensor(list(classes))
    area = torch.isin(labels, labelled.to(labels.device))
    own_class = probabilities.gather(1, labels.unsqueeze(1)).squeeze(1)
    spatial = tuple(range(1, labels.ndim))
    total = torch.where(area, own_class, 0.0).sum(dim=spatial)
    count = area.sum(dim=spatial)
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan)


def keep_top_fraction(scores: torch.Tensor | Sequence[float], fraction: float) -> tuple[list[int], list[int]]:
    """Split sample indices into the ``fraction`` with the highest scores and the rest.

    ``floor(fraction * n)`` samples are kept, at least one when ``fraction > 0`` and there is a sample. The ranking is
    deterministic: higher score first, equal scores by lower index, NaN scores last (and, among NaNs, by index).

    Returns:
        ``(kept_indices, dropped_indices)``, each in ascending index order.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    values = torch.as_tensor(scores, dtype=torch.float64).flatten()
    n = values.numel()
    num_kept = math.floor(fraction * n + 1e-9)
    if fraction > 0 and n > 0:
        num_kept = max(num_kept, 1)
    # NaN becomes -inf for ranking, a stable sort keeps equal scores (and all NaNs) in index order
    ranking = torch.nan_to_num(values, nan=-math.inf).argsort(descending=True, stable=True).tolist()
    return sorted(ranking[:num_kept]), sorted(ranking[num_kept:])


def dice_keep_relabel_drop(dice_loss: torch.Tensor | Sequence[float], eta: float = 0.065) -> list[str]:
    """DiffuseExpand stage IV decision per pair from a segmenter's Dice loss on it.

    ``"kept"`` if loss < eta, ``"relabelled"`` (replace the mask by the segmenter's prediction) if eta <= loss < 2 eta,
    ``"dropped"`` otherwise (including NaN losses).
    """
    if eta <= 0:
        raise ValueError(f"eta must be positive, got {eta}")
    losses = torch.as_tensor(dice_loss, dtype=torch.float64).detach().cpu().flatten().numpy()
    decisions = np.select([losses < eta, losses < 2 * eta], [KEPT, RELABELLED], default=DROPPED)
    return decisions.tolist()
