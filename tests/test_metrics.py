"""Metrics against hand counts, Student-t tables, a direct KID computation and the closed form of MONAI's FID in the
feature space the evaluation uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric
from torch import nn

from common.metrics import (
    SeedSummary,
    extract_features,
    kernel_inception_distance,
    markdown_table,
    ms_ssim,
    paired_difference,
    per_class_scores,
    summarise_seeds,
    t_half_width,
)


def hand_counted_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """One 2 x 4 image, 4 classes.

    label  0 0 1 1     pred  0 1 1 1
           0 0 1 0           0 0 0 3
    class 0: |L| = 5, |P| = 4, overlap 3 -> Dice 6/9,  IoU 3/6
    class 1: |L| = 3, |P| = 3, overlap 2 -> Dice 4/6,  IoU 2/4
    class 2: absent from both            -> NaN
    class 3: |L| = 0, |P| = 1            -> Dice 0,    IoU 0 (false positive)
    """
    label = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]])[None, None]
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 3]])[None, None]
    return pred, label


def test_per_class_dice_and_iou_match_hand_counts():
    pred, label = hand_counted_pair()
    scores = per_class_scores(pred, label, num_classes=4)
    dice, iou = scores["dice"][0], scores["iou"][0]
    torch.testing.assert_close(dice[[0, 1, 3]], torch.tensor([6 / 9, 4 / 6, 0.0]))
    torch.testing.assert_close(iou[[0, 1, 3]], torch.tensor([3 / 6, 2 / 4, 0.0]))
    assert torch.isnan(dice[2]) and torch.isnan(iou[2])
    # scores (B, C, H, W) are argmaxed first: the same result
    logits = torch.nn.functional.one_hot(pred[:, 0], 4).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(per_class_scores(logits, label, 4)["dice"], scores["dice"], equal_nan=True)


def test_per_class_scores_reject_bad_input():
    pred, label = hand_counted_pair()
    with pytest.raises(ValueError, match="0..2"):
        per_class_scores(pred, label, num_classes=3)
    with pytest.raises(ValueError, match="differ in shape"):
        per_class_scores(pred[..., :3], label, num_classes=4)


def test_paired_difference_interval():
    # differences 0.1, 0.2, 0.3: mean 0.2, std 0.1, half width t_{0.975,2} * 0.1 / sqrt(3) = 4.302653 * 0.057735
    # (4.302653: the 0.975 quantile of Student's t with 2 degrees of freedom, from the printed tables)
    result = paired_difference([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert result.mean == pytest.approx(0.2)
    assert result.std == pytest.approx(0.1)
    half_width = 4.302653 * 0.1 / math.sqrt(3)
    assert (result.low, result.high) == pytest.approx((0.2 - half_width, 0.2 + half_width), abs=1e-6)
    assert result.n == 3
    assert result.low < 0 < result.high and not result.excludes_zero  # +0.2 on 3 seeds with std 0.1 is no gain
    # differences 0.18, 0.20, 0.22: std 0.02, half width 4.302653 * 0.02 / sqrt(3) = 0.0497 -> a gain
    steady = paired_difference([0.68, 0.7, 0.72], [0.5, 0.5, 0.5])
    assert steady.low == pytest.approx(0.2 - 4.302653 * 0.02 / math.sqrt(3), abs=1e-6)
    assert steady.excludes_zero
    # NaN pairs are left out; one pair has no interval
    single = paired_difference([0.7, math.nan], [0.5, 0.5])
    assert single.n == 1 and single.mean == pytest.approx(0.2) and math.isnan(single.low)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0], [1.0, 2.0])


def test_t_half_width_matches_tables():
    # t_{0.975,3} = 3.182446 and t_{0.95,9} = 1.833113 from the printed tables
    assert t_half_width(1.0, 4) == pytest.approx(3.182446 / 2.0, abs=1e-6)
    assert t_half_width(0.3, 10, confidence=0.90) == pytest.approx(1.833113 * 0.3 / math.sqrt(10), abs=1e-6)
    assert math.isnan(t_half_width(1.0, 1)) and math.isnan(t_half_width(math.nan, 5))


def test_summarise_seeds_uses_sample_std():
    summary = summarise_seeds(torch.tensor([0.1, 0.2, 0.3, math.nan]))
    assert summary.mean == pytest.approx(0.2) and summary.std == pytest.approx(0.1) and summary.n == 3
    assert math.isnan(summarise_seeds([0.4]).std)


def test_markdown_table():
    rows = [
        {"method": "real", "dice": SeedSummary(0.1234, 0.0456, 3), "gain": math.nan},
        {"method": "augpaint", "dice": SeedSummary(0.15, math.nan, 1), "gain": 0.02},
    ]
    table = markdown_table(rows, ["method", "dice", "gain"], headers=["Method", "Dice", "Gain"])
    assert table.splitlines() == [
        "| Method | Dice | Gain |",
        "| --- | --- | --- |",
        "| real | 0.123 ± 0.046 | n/a |",
        "| augpaint | 0.150 | 0.020 |",
    ]


def direct_polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_direct_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(loc=0.5, size=(9, 5))
    kid = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y))
    assert kid.item() == pytest.approx(direct_polynomial_mmd2(x, y), rel=1e-10)
    # subsets: the mean of the subset estimates, each a direct MMD^2 of a subset
    subset_kid = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subset_size=5, num_subsets=3)
    assert subset_kid.item() != pytest.approx(kid.item())
    assert kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subset_size=5, num_subsets=3).item() == (
        subset_kid.item()
    )
    # far apart sets score much higher than sets from one distribution
    same = kernel_inception_distance(torch.randn(64, 5), torch.randn(64, 5))
    far = kernel_inception_distance(torch.randn(64, 5), torch.randn(64, 5) + 3)
    assert far > 10 * abs(same)


def whitened(samples: int, features: int, seed: int) -> torch.Tensor:
    """Samples with mean exactly 0 and unbiased covariance exactly the identity."""
    x = torch.randn(samples, features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(dim=0)
    return x @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T


def test_monai_fid_the_evaluation_uses_has_the_closed_form():
    """FID = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), exact on whitened feature sets."""
    fid = FIDMetric()
    a = whitened(50, 4, seed=0)
    assert fid(a, a).item() == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    # same covariance, shifted mean: ||mu_a - mu_b||^2 = 1 + 4 + 0.25 = 5.25
    assert fid(a, a + shift).item() == pytest.approx(5.25, rel=1e-6)
    # covariances I and diag(s^2): ||shift||^2 + sum (1 - s)^2 = 5.25 + (1 + 0 + 0.25 + 4)
    scale = torch.tensor([2.0, 1.0, 0.5, 3.0], dtype=torch.float64)
    b = whitened(60, 4, seed=1) * scale + shift
    assert fid(a, b).item() == pytest.approx(5.25 + 5.25, rel=1e-6)


def test_ms_ssim_at_64_pixels():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(ms_ssim(images, images), torch.ones(2))
    slightly, badly = (images + 0.05 * torch.randn_like(images)).clamp(0, 1), torch.rand(2, 1, 64, 64)
    slight_score, bad_score = ms_ssim(slightly, images), ms_ssim(badly, images)
    assert slight_score.shape == (2,)
    assert (bad_score < slight_score).all() and (slight_score < 1).all()
    with pytest.raises(ValueError, match="too small"):
        ms_ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_extract_features_pools_the_feature_map():
    encoder = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Dropout(0.5))
    with torch.no_grad():
        encoder[0].weight.copy_(torch.tensor([1.0, 2.0, -1.0]).reshape(3, 1, 1, 1))
        encoder[0].bias.zero_()
    encoder.train()
    images = torch.rand(5, 1, 4, 4)
    features = extract_features(encoder, images, batch_size=2)
    # the 1x1 conv multiplies each image by (1, 2, -1); pooled: its mean times those, dropout off in eval mode
    expected = images.mean(dim=(1, 2, 3))[:, None] * torch.tensor([1.0, 2.0, -1.0])
    torch.testing.assert_close(features, expected)
    assert encoder.training  # mode restored
    # dict batches (a MONAI loader) and list outputs (last element taken) work too
    batches = [{"image": images[:3]}, {"image": images[3:]}]
    torch.testing.assert_close(extract_features(lambda x: [x, encoder[0](x)], batches), expected)
