"""Metrics of the evaluation protocol: per-class segmentation scores, seed statistics, and image-quality distances.

Segmentation (DESIGN "Evaluation protocol"): per-class Dice and IoU per image from MONAI's ``DiceMetric`` and
``MeanIoU`` (:func:`per_class_scores`); mean +- std over seeds (:func:`summarise_seeds`) and the paired difference of
two arms with a Student-t interval (:func:`paired_difference`, scipy's t quantile; a gain only when the interval
excludes zero); Markdown tables for reports (:func:`markdown_table`).

Image quality on a pluggable feature extractor (:func:`extract_features`, by default the encoder of a segmenter
trained on real data, no download): the kernel inception distance (KID, polynomial kernel; MONAI's ``MMDMetric`` is
linear) between feature sets (FID is MONAI's ``FIDMetric``), and MS-SSIM between images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.metrics import DiceMetric, MeanIoU, MultiScaleSSIMMetric
from monai.networks.utils import one_hot
from monai.utils import convert_to_tensor
from scipy import stats
from torch import nn

__all__ = [
    "per_class_scores",
    "PairedDifference",
    "paired_difference",
    "SeedSummary",
    "summarise_seeds",
    "markdown_table",
    "kernel_inception_distance",
    "ms_ssim",
    "extract_features",
]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first


# --- segmentation scores -------------------------------------------------------------------------------------------


def per_class_scores(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Dice and IoU of every class (background included) for every image.

    Args:
        pred: predicted class-index maps ``(B, 1, *spatial)``, or scores ``(B, num_classes, *spatial)`` (argmax taken).
        label: ground-truth class-index maps ``(B, 1, *spatial)``.
        num_classes: number of classes including background.

    Returns:
        ``{"dice": (B, C), "iou": (B, C)}`` float tensors. Convention for a class absent from an image: absent from
        both prediction and label -> NaN (nothing to score; ignored by the means of :func:`summarise_scores`);
        absent from the label but predicted -> 0 (false positives count); present in the label -> the usual score.
    """
    pred, label = convert_to_tensor(pred, track_meta=False), convert_to_tensor(label, track_meta=False)
    if pred.ndim < 3 or label.ndim != pred.ndim or label.shape[1] != 1:
        raise ValueError(
            f"pred must be (B, 1 or C, *spatial) and label (B, 1, *spatial); got {tuple(pred.shape)}, "
            f"{tuple(label.shape)}"
        )
    if num_classes > 1 and pred.shape[1] == num_classes:
        pred = pred.argmax(dim=1, keepdim=True)
    if pred.shape != label.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    for name, tensor in (("pred", pred), ("label", label)):
        if tensor.min() < 0 or tensor.max() >= num_classes:
            raise ValueError(f"{name} values must be in 0..{num_classes - 1}, got {tensor.min()}..{tensor.max()}")
    pred_one_hot, label_one_hot = one_hot(pred.long(), num_classes), one_hot(label.long(), num_classes)
    # ignore_empty=False scores an empty label with an empty prediction 1 and a non-empty prediction 0;
    # the "absent in both" case is then set to NaN here.
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred_one_hot, label_one_hot)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(pred_one_hot, label_one_hot)
    spatial = tuple(range(2, pred_one_hot.ndim))
    absent = (pred_one_hot.sum(dim=spatial) == 0) & (label_one_hot.sum(dim=spatial) == 0)
    return {"dice": dice.float().masked_fill(absent, torch.nan), "iou": iou.float().masked_fill(absent, torch.nan)}


# --- statistics over seeds -----------------------------------------------------------------------------------------


class PairedDifference(NamedTuple):
    """Mean of the paired differences a - b, their std (ddof=1), the Student-t interval and the number of pairs."""

    mean: float
    std: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below zero: only then call the difference a gain (or loss)."""
        return self.low > 0 or self.high < 0


def paired_difference(
    a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor, confidence: float = 0.95
) -> PairedDifference:
    """Paired comparison of two runs over the same seeds, e.g. a method's mean Dice vs real-only, seed by seed.

    The interval is ``mean +- t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)``. Pairs with a NaN on either side are
    left out; with a single pair the std and the interval are NaN.
    """
    first, second = _as_float_array(a), _as_float_array(b)
    if first.shape != second.shape:
        raise ValueError(f"paired values need the same length, got {first.size} and {second.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    difference = first - second
    difference = difference[~np.isnan(difference)]
    n = difference.size
    if n == 0:
        raise ValueError("no pair without NaN to compare")
    mean = float(difference.mean())
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, math.nan, n, confidence)
    std = float(difference.std(ddof=1))
    half_width = t_half_width(std, n, confidence)
    return PairedDifference(mean, std, mean - half_width, mean + half_width, n, confidence)


def t_half_width(std: float, n: int, confidence: float = 0.95) -> float:
    """Half width ``t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)`` of the Student-t interval of a mean of ``n``."""
    if n < 2 or math.isnan(std):
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)


class SeedSummary(NamedTuple):
    """Mean and std (ddof=1) of one score over seeds, and the number of seeds it is over."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return _format_cell(self, precision=3)


def summarise_seeds(values: Sequence[float] | torch.Tensor) -> SeedSummary:
    """Mean and std (ddof=1, NaN for a single value) over seeds; NaN values are left out."""
    array = _as_float_array(values)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return SeedSummary(math.nan, math.nan, 0)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return SeedSummary(float(array.mean()), std, int(array.size))


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Sequence[str] | None = None,
    precision: int = 3,
) -> str:
    """A GitHub Markdown table: one line per row, the values of ``columns`` (missing ones empty).

    Floats are written with ``precision`` decimals and NaN as "n/a"; :class:`SeedSummary` as "mean ± std".
    """
    headers = list(headers) if headers is not None else list(columns)
    if len(headers) != len(columns):
        raise ValueError(f"{len(headers)} headers for {len(columns)} columns")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        cells = [_format_cell(row.get(column), precision) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_cell(value: Any, precision: int) -> str:
    if value is None:
        return ""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, SeedSummary):
        mean, std = _format_cell(value.mean, precision), _format_cell(value.std, precision)
        return mean if math.isnan(value.std) else f"{mean} ± {std}"
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.{precision}f}"
    return str(value).replace("|", "\\|")


# --- image quality -------------------------------------------------------------------------------------------------


def kernel_inception_distance(
    feats_a: torch.Tensor,
    feats_b: torch.Tensor,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    subset_size: int | None = None,
    num_subsets: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Kernel inception distance (Binkowski et al. 2018): unbiased MMD^2 with the polynomial kernel.

    ``k(x, y) = (gamma x.y + coef0) ** degree`` with ``gamma = 1 / F`` by default, and
    ``MMD^2 = mean_{i != j} k(a_i, a_j) + mean_{i != j} k(b_i, b_j) - 2 mean_{i, j} k(a_i, b_j)``.
    With ``subset_size`` the estimate is averaged over ``num_subsets`` random subsets of that size drawn without
    replacement from each set (seeded), as in the paper; by default it uses the full sets once. Returns a scalar
    (float64); unbiased, so it can be slightly negative for sets from the same distribution.
    """
    a, b = _check_features(feats_a, feats_b, minimum=2)
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    if subset_size is None:
        return _polynomial_mmd2(a, b, degree, gamma, coef0)
    if subset_size < 2 or subset_size > min(len(a), len(b)):
        raise ValueError(f"subset_size must be in 2..{min(len(a), len(b))} (the smaller set), got {subset_size}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(num_subsets):
        subset_a = a[torch.randperm(len(a), generator=generator)[:subset_size]]
        subset_b = b[torch.randperm(len(b), generator=generator)[:subset_size]]
        estimates.append(_polynomial_mmd2(subset_a, subset_b, degree, gamma, coef0))
    return torch.stack(estimates).mean()


def ms_ssim(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Multi-scale SSIM per image, ``(B,)``, with MONAI's ``MultiScaleSSIMMetric`` (2D or 3D).

    The default five scales need images above ``16 * (kernel_size - 1)`` pixels; for smaller images (64 px with an
    11 px kernel) ``weights=None`` uses as many of the first (finest) scales of Wang et al.'s weights as fit
    (3 at 64 px), renormalised to sum to 1. One scale left is plain SSIM.
    """
    if y_pred.shape != y.shape or y_pred.ndim not in (4, 5):
        raise ValueError(
            f"images must be (B, C, H, W[, D]) of the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}"
        )
    if weights is None:
        weights = _fitting_ms_ssim_weights(min(y_pred.shape[2:]), kernel_size)
    metric = MultiScaleSSIMMetric(
        spatial_dims=y_pred.ndim - 2,
        data_range=data_range,
        kernel_size=kernel_size,
        kernel_sigma=kernel_sigma,
        weights=weights,
        reduction="none",
    )
    return metric(y_pred.float(), y.float()).reshape(-1)


@torch.no_grad()
def extract_features(
    network_encoder: nn.Module | Any,
    images: torch.Tensor | Iterable[torch.Tensor | Mapping[str, torch.Tensor]],
    batch_size: int = 32,
) -> torch.Tensor:
    """Features ``(N, F)`` of images for FID/KID: the encoder's output, globally average-pooled over space.

    Args:
        network_encoder: any module/callable mapping ``(B, C, *spatial)`` images to a feature map ``(B, F, *spatial)``
            or vectors ``(B, F)``; a list/tuple output (e.g. skip features) uses its last element. Modules run in
            eval mode (their modes are restored), on the device of their parameters.
        images: a tensor ``(N, C, *spatial)`` (split into ``batch_size`` chunks) or an iterable of batches (tensors
            or dicts with an ``"image"`` key, e.g. a MONAI DataLoader).
    """
    if isinstance(images, torch.Tensor):
        batches: Iterable[Any] = images.split(batch_size)
    else:
        batches = images
    modules = list(network_encoder.modules()) if isinstance(network_encoder, nn.Module) else []
    modes = {module: module.training for module in modules}
    parameter = next(iter(network_encoder.parameters()), None) if modules else None
    device = parameter.device if parameter is not None else None
    features = []
    try:
        if modules:
            network_encoder.eval()
        for batch in batches:
            batch_images = batch["image"] if isinstance(batch, Mapping) else batch
            output = network_encoder(batch_images.to(device) if device is not None else batch_images)
            if isinstance(output, (list, tuple)):
                output = output[-1]
            if output.ndim > 2:
                output = output.flatten(start_dim=2).mean(dim=2)
            features.append(output.float().cpu())
    finally:
        for module, mode in modes.items():
            module.training = mode
    if not features:
        raise ValueError("no images to extract features from")
    return torch.cat(features)


def _check_features(feats_a: torch.Tensor, feats_b: torch.Tensor, minimum: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.as_tensor(feats_a).double(), torch.as_tensor(feats_b).double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, F) with the same F, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < minimum or len(b) < minimum:
        raise ValueError(f"need at least {minimum} feature vectors per set, got {len(a)} and {len(b)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("features contain NaN or inf")
    return a, b


def _polynomial_mmd2(a: torch.Tensor, b: torch.Tensor, degree: int, gamma: float, coef0: float) -> torch.Tensor:
    m, n = len(a), len(b)
    k_aa = (gamma * a @ a.T + coef0) ** degree
    k_bb = (gamma * b @ b.T + coef0) ** degree
    k_ab = (gamma * a @ b.T + coef0) ** degree
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return within_a + within_b - 2 * k_ab.mean()


def _fitting_ms_ssim_weights(size: int, kernel_size: int) -> tuple[float, ...]:
    """The most MS-SSIM scales whose coarsest level still holds the kernel (and MONAI's own size check)."""
    for num_scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        divisor = max(2 ** (num_scales - 1), max(1, num_scales - 1) ** 2)
        if size // divisor > kernel_size - 1:
            weights = MS_SSIM_WEIGHTS[:num_scales]
            return tuple(w / sum(weights) for w in weights)
    raise ValueError(f"images of {size} px are too small for an SSIM kernel of {kernel_size} px")


def _as_float_array(values: Sequence[float] | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)
