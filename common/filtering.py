"""Filters that decide which synthetic pairs to keep: the scores, the decisions, and the pipeline's filters.

- AugPaint (Hu & Shi): a segmenter trained on the labelled data scores each synthetic image by its confidence in the
  labelled area (:func:`confidence_scores`); the top fraction is kept (:func:`keep_top_fraction`).
  :class:`ConfidenceFilter` does both on a generation run.
- DiffuseExpand (Shao et al., stage IV): a well-trained segmenter's Dice loss on the pair keeps it, relabels it with
  the segmenter's prediction or drops it (:func:`dice_keep_relabel_drop`); :class:`DiceFilter` on a run.

The filters of a run (:class:`common.generation.GenerationRun`) score the pairs as written to disk, so what is kept is
judged on exactly what a user trains on. Scores go to the datalist (``score``), decisions to ``status`` or ``dropped``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.losses import DiceLoss
from monai.utils import convert_to_tensor
from torch import nn

from common.data import pair_transforms
from common.io import SyntheticDatasetWriter

__all__ = [
    "DROPPED",
    "KEPT",
    "RELABELLED",
    "ConfidenceFilter",
    "DiceFilter",
    "confidence_scores",
    "dice_keep_relabel_drop",
    "keep_top_fraction",
    "predict_pairs",
    "predict_written_pairs",
]

logger = logging.getLogger(__name__)

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


@torch.no_grad()
def predict_pairs(
    pairs: Sequence[Mapping[str, str]], segmenter: nn.Module, image_size: int | Sequence[int], batch_size: int = 16
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The segmenter's softmax probabilities on ``{"image", "label"}`` files, batch by batch: ``(labels,
    probabilities)`` with the labels (B, 1, H, W) as on disk, both on the segmenter's device."""
    device = next(segmenter.parameters()).device
    load = pair_transforms(image_size)
    segmenter.eval()
    for start in range(0, len(pairs), batch_size):
        items = [load({"image": p["image"], "label": p["label"]}) for p in pairs[start : start + batch_size]]
        images = torch.stack([convert_to_tensor(item["image"], track_meta=False) for item in items]).to(device)
        labels = torch.stack([convert_to_tensor(item["label"], track_meta=False) for item in items]).to(device)
        yield labels.long(), torch.softmax(segmenter(images), dim=1)


def predict_written_pairs(
    writer: SyntheticDatasetWriter,
    names: Sequence[str],
    segmenter: nn.Module,
    image_size: int | Sequence[int],
    batch_size: int = 16,
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """:func:`predict_pairs` on written pairs: ``(names, labels, probabilities)`` per batch."""
    paths = {pair["name"]: pair for pair in writer.pairs()}
    for start, (labels, probabilities) in zip(
        range(0, len(names), batch_size),
        predict_pairs([paths[name] for name in names], segmenter, image_size, batch_size),
        strict=True,
    ):
        yield list(names[start : start + batch_size]), labels, probabilities


class ConfidenceFilter:
    """AugPaint's filter: score every pair by :func:`confidence_scores` and keep the top ``keep_fraction`` of the
    planned pairs (a run interrupted while removing resumes with the same kept set, since the pairs removed first
    were outside it).

    Args:
        segmenter: network giving class logits (B, C, H, W), trained on the labelled pairs.
        keep_fraction: fraction of the planned pairs kept (the paper: 0.5).
        image_size: size pairs are scored at (the segmenter's input size).
        batch_size: pairs scored together.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        keep_fraction: float = 0.5,
        image_size: int | Sequence[int] = 64,
        batch_size: int = 16,
    ) -> None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        self.segmenter = segmenter
        self.keep_fraction = keep_fraction
        self.image_size = image_size
        self.batch_size = batch_size

    def apply(self, writer: SyntheticDatasetWriter, names: Sequence[str], planned: int) -> None:
        scores = []
        for batch, labels, probabilities in predict_written_pairs(
            writer, names, self.segmenter, self.image_size, self.batch_size
        ):
            batch_scores = confidence_scores(probabilities, labels).cpu()
            for name, value in zip(batch, batch_scores.tolist(), strict=True):
                writer.set_score(name, value)
            scores.append(batch_scores)
        num_kept = len(keep_top_fraction(torch.zeros(planned), self.keep_fraction)[0])
        kept, dropped = keep_top_fraction(torch.cat(scores), min(1.0, num_kept / len(names))) if names else ([], [])
        for index in dropped:
            writer.remove(names[index])
        logger.info(
            f"confidence filter kept {len(kept)} pairs (top {self.keep_fraction:.0%}), {writer.dropped} dropped in all"
        )


class DiceFilter:
    """DiffuseExpand's stage IV: the segmenter's Dice loss (MONAI ``DiceLoss`` on its softmax against the pair's
    mask, averaged over the classes that the mask or the prediction shows) keeps a pair below ``eta``, relabels it with
    the segmenter's prediction below ``2 eta`` and drops it otherwise (:func:`dice_keep_relabel_drop`); the loss is
    the pair's ``score``. A pair relabelled by an interrupted run keeps its decision.

    The paper's ``eta`` (0.065) assumes a segmenter that scores real pairs below it. A segmenter of a few labelled
    pairs does not (on usgra, 8 pairs: a median loss of 0.20 on its own training pairs, 0.93 on test pairs), and every
    synthetic pair is dropped. With ``eta=None`` the threshold is the median loss of the segmenter on
    ``reference_pairs`` (the labelled pairs, most of which it was trained on): a pair is kept when the segmenter agrees
    with it as well as with a typical real pair it knows.

    Args:
        segmenter: a well-trained segmenter of the real pairs.
        eta: the keep threshold (the paper: 0.065), or None to set it from ``reference_pairs``.
        include_background: whether the background class enters the Dice loss.
        image_size, batch_size: as :class:`ConfidenceFilter`.
        reference_pairs: real ``{"image", "label"}`` files; needed when ``eta`` is None.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        eta: float | None = 0.065,
        include_background: bool = False,
        image_size: int | Sequence[int] = 64,
        batch_size: int = 16,
        reference_pairs: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        if eta is None and not reference_pairs:
            raise ValueError("eta=None sets the threshold from reference pairs: give the labelled pairs")
        if eta is not None and eta <= 0:
            raise ValueError(f"eta must be positive, got {eta}")
        self.segmenter = segmenter
        self.eta = eta
        self.image_size = image_size
        self.batch_size = batch_size
        self.include_background = include_background
        self.reference_pairs = list(reference_pairs or [])
        self.dice_loss = DiceLoss(include_background=True, to_onehot_y=True, softmax=False, reduction="none")

    @torch.no_grad()
    def threshold(self) -> float:
        """``eta``, or the median loss on the reference pairs when it is None (computed once)."""
        if self.eta is None:
            predicted = predict_pairs(self.reference_pairs, self.segmenter, self.image_size, self.batch_size)
            losses = torch.cat([self.losses(probabilities, labels).cpu() for labels, probabilities in predicted])
            self.eta = max(float(losses.median()), 1e-6)
            logger.info(f"Dice filter: eta {self.eta:.3f}, the median loss on {len(losses)} real labelled pairs")
        return self.eta

    def losses(self, probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per pair, the mean Dice loss over the classes its mask or its prediction shows ``(B,)``."""
        per_class = self.dice_loss(probabilities, labels).flatten(1)
        classes = torch.arange(probabilities.shape[1], device=labels.device).view(1, -1)
        shown = (labels.flatten(1).unsqueeze(1) == classes.unsqueeze(-1)).any(-1)
        predicted = probabilities.argmax(dim=1).flatten(1)
        shown |= (predicted.unsqueeze(1) == classes.unsqueeze(-1)).any(-1)
        if not self.include_background:
            shown[:, 0] = False
        count = shown.sum(dim=1)
        return torch.where(count > 0, (per_class * shown).sum(dim=1) / count.clamp(min=1), 0.0)

    def apply(self, writer: SyntheticDatasetWriter, names: Sequence[str], planned: int) -> None:
        eta = self.threshold()
        undecided = [name for name in names if writer.entry(name)["status"] != RELABELLED]
        counts = {KEPT: 0, RELABELLED: 0, DROPPED: 0}
        scored = []
        for batch, labels, probabilities in predict_written_pairs(
            writer, undecided, self.segmenter, self.image_size, self.batch_size
        ):
            losses = self.losses(probabilities, labels).cpu()
            scored.append(losses)
            predictions = probabilities.argmax(dim=1, keepdim=True).cpu()
            for index, (name, decision) in enumerate(zip(batch, dice_keep_relabel_drop(losses, eta), strict=True)):
                counts[decision] += 1
                if decision == DROPPED:
                    writer.remove(name)
                    continue
                writer.set_score(name, float(losses[index]))
                if decision == RELABELLED:
                    writer.relabel(name, predictions[index])
        quartiles = torch.quantile(torch.cat(scored), torch.tensor([0.0, 0.25, 0.5, 0.75])).tolist() if scored else []
        logger.info(
            f"Dice filter (eta {eta:.3f}): {counts[KEPT]} kept, {counts[RELABELLED]} relabelled, "
            f"{counts[DROPPED]} dropped of {len(undecided)} scored; their Dice losses: min, quartiles "
            + ", ".join(f"{q:.3f}" for q in quartiles)
        )
