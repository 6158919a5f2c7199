"""Statistics of stochastic segmentation predictions: ensembles and MC-dropout.

Every statistic takes the member probabilities of one batch as a tensor ``(M, B, C, *spatial)``: ``M`` ensemble
members or MC-dropout passes, softmax already applied over ``C`` (classes, background included). A single
deterministic network is ``probabilities.unsqueeze(0)`` (``M = 1``: zero variance, entropy of its own softmax).

- GAUDA (Frisch et al., eq. 8) ranks classes by the class-wise epistemic uncertainty
  ``UE_c = mean over pixels predicted as c of Var_members[p_c]`` (:func:`classwise_uncertainty`,
  :class:`PooledClasswiseUncertainty` for a whole validation set).
- UnIACorN (Niemeijer et al.) conditions a ControlNet on the normalised mean pixel entropy of a segmenter
  (:func:`normalised_mean_entropy`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "mean_probabilities",
    "pixel_entropy",
    "pixel_variance",
    "classwise_variance_sums",
    "classwise_uncertainty",
    "PooledClasswiseUncertainty",
    "pooled_classwise_uncertainty",
    "normalised_mean_entropy",
    "ensemble_predict",
    "mc_dropout_predict",
]

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _check_members(member_probs: torch.Tensor) -> None:
    if member_probs.ndim < 4:
        raise ValueError(
            f"member probabilities must be (M, B, C, *spatial) with at least one spatial dim, "
            f"got shape {tuple(member_probs.shape)}"
        )


def mean_probabilities(member_probs: torch.Tensor) -> torch.Tensor:
    """Predictive distribution: the members' mean probabilities, ``(B, C, *spatial)``."""
    _check_members(member_probs)
    return member_probs.mean(dim=0)


def pixel_entropy(member_probs: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """Entropy (natural log) of the mean probabilities at every pixel, ``(B, *spatial)``.

    ``0 * log 0`` counts as 0. With ``normalise=True`` the entropy is divided by ``log C``, its maximum, so it lies in
    [0, 1] whatever the number of classes.
    """
    mean = mean_probabilities(member_probs)
    entropy = -torch.xlogy(mean, mean).sum(dim=1)
    if normalise:
        entropy = entropy / math.log(mean.shape[1])
    return entropy


def pixel_variance(member_probs: torch.Tensor) -> torch.Tensor:
    """Variance of every class probability across the members, ``(B, C, *spatial)``.

    Population variance (``unbiased=False``: divided by M, not M - 1), as GAUDA's eq. 8 writes it, so one member gives 0
    and two members with probabilities p and q give ``((p - q) / 2) ** 2``.
    """
    _check_members(member_probs)
    return member_probs.var(dim=0, unbiased=False)


def classwise_variance_sums(member_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class: the sum over pixels predicted as c of the variance of p_c, and the number of those pixels.

    "Predicted as c" means argmax over classes of the mean probabilities. Both results are ``(B, C)``; the
    sums are float64 so pooling many images does not lose precision. :func:`classwise_uncertainty` divides them.
    """
    variance = pixel_variance(member_probs)
    predicted = mean_probabilities(member_probs).argmax(dim=1, keepdim=True)
    one_hot = torch.zeros_like(variance, dtype=torch.bool).scatter_(1, predicted, True)
    spatial = tuple(range(2, variance.ndim))
    sums = torch.where(one_hot, variance, 0.0).sum(dim=spatial, dtype=torch.float64)
    counts = one_hot.sum(dim=spatial)
    return sums, counts


def classwise_uncertainty(member_probs: torch.Tensor) -> torch.Tensor:
    """GAUDA eq. 8 per image: ``UE_c`` = mean over pixels predicted as c of the members' variance of p_c, ``(B, C)``.

    A class that no pixel of an image is predicted as has no ``UE_c``: its entry is NaN (``torch.isnan`` flags it).
    """
    sums, counts = classwise_variance_sums(member_probs)
    return _divide_or_nan(sums, counts).to(member_probs.dtype)


class PooledClasswiseUncertainty:
    """``UE_c`` over a data set: pixels predicted as c are pooled over all images before the mean.

    Pooling weights every pixel equally (a class predicted on many pixels of one image counts more than a class
    predicted on a few pixels of another), which is eq. 8 applied to the data set as one big image. Classes never
    predicted anywhere are NaN.

    Example::

        pooled = PooledClasswiseUncertainty()
        for images in loader:
            pooled.update(ensemble_predict(networks, images))
        ue = pooled.compute()  # (C,)
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def update(self, member_probs: torch.Tensor) -> None:
        """Add the pixels of one batch ``(M, B, C, *spatial)``."""
        sums, counts = classwise_variance_sums(member_probs)
        sums, counts = sums.sum(dim=0).cpu(), counts.sum(dim=0).cpu()
        if self.sums is None or self.counts is None:
            self.sums, self.counts = sums, counts
            return
        if sums.shape != self.sums.shape:
            raise ValueError(f"batches disagree on the number of classes: {sums.shape[0]} vs {self.sums.shape[0]}")
        self.sums, self.counts = self.sums + sums, self.counts + counts

    def compute(self) -> torch.Tensor:
        """``UE_c`` for every class, ``(C,)`` float64, NaN for classes never predicted."""
        if self.sums is None or self.counts is None:
            raise ValueError("no predictions were added: call update() before compute()")
        return _divide_or_nan(self.sums, self.counts)


def pooled_classwise_uncertainty(member_prob_batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """``UE_c`` of a data set given its batches of member probabilities (see :class:`PooledClasswiseUncertainty`)."""
    pooled = PooledClasswiseUncertainty()
    for member_probs in member_prob_batches:
        pooled.update(member_probs)
    return pooled.compute()


def normalised_mean_entropy(member_probs: torch.Tensor) -> torch.Tensor:
    """One scalar per image, ``(B,)``: the mean over pixels of the pixel entropy divided by ``log C``, in [0, 1].

    UnIACorN's control value for the uncertainty ControlNet.
    """
    entropy = pixel_entropy(member_probs, normalise=True)
    return entropy.flatten(start_dim=1).mean(dim=1)


@torch.no_grad()
def ensemble_predict(networks: Sequence[nn.Module], images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of every member of a deep ensemble, ``(M, B, C, *spatial)``.

    Each network runs in eval mode; the previous train/eval modes of its modules are restored afterwards.
    """
    if len(networks) == 0:
        raise ValueError("ensemble_predict needs at least one network")
    members = []
    for network in networks:
        with _modes_restored(network):
            network.eval()
            members.append(torch.softmax(network(images), dim=1))
    return torch.stack(members)


@torch.no_grad()
def mc_dropout_predict(network: nn.Module, images: torch.Tensor, num_passes: int) -> torch.Tensor:
    """Softmax probabilities of ``num_passes`` MC-dropout passes, ``(num_passes, B, C, *spatial)``.

    Dropout layers sample a new mask at every pass; everything else (batch/instance norm statistics) is in eval mode.
    The modes of all modules are restored afterwards. Raises ValueError when no dropout layer has p > 0 (every
    pass would be identical and the uncertainty silently zero).
    """
    if num_passes < 1:
        raise ValueError(f"num_passes must be >= 1, got {num_passes}")
    dropouts = [m for m in network.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]
    if not dropouts:
        raise ValueError(f"{type(network).__name__} has no dropout layer with p > 0; MC-dropout needs dropout > 0")
    with _modes_restored(network):
        network.eval()
        for module in dropouts:
            module.train()
        passes = [torch.softmax(network(images), dim=1) for _ in range(num_passes)]
    return torch.stack(passes)


@contextmanager
def _modes_restored(network: nn.Module) -> Iterator[None]:
    """Give back every module's own train/eval mode on exit (a network may mix modes, e.g. frozen norm layers)."""
    modes = {module: module.training for module in network.modules()}
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _divide_or_nan(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan)
