"""Filters keep, relabel and drop exactly the pairs the papers' rules say."""

from __future__ import annotations

import math

import pytest
import torch

from common.filtering import confidence_scores, dice_keep_relabel_drop, keep_top_fraction


def test_confidence_is_mean_probability_of_own_class_over_labelled_area():
    # B=2, C=3, 1 x 3 pixels. probabilities per pixel (columns), classes as rows.
    probabilities = torch.tensor(
        [
            [[0.7, 0.2, 0.1], [0.2, 0.6, 0.3], [0.1, 0.2, 0.6]],  # sample 0
            [[0.9, 0.9, 0.9], [0.05, 0.05, 0.05], [0.05, 0.05, 0.05]],  # sample 1
        ]
    )[:, :, None, :]
    labels = torch.tensor([[0, 1, 2], [0, 0, 0]])[:, None, None, :]
    # sample 0: labelled pixels 1 (class 1, p=0.6) and 2 (class 2, p=0.6) -> 0.6; the background pixel does not count
    # sample 1: no labelled pixel -> NaN
    scores = confidence_scores(probabilities, labels)
    assert scores.shape == (2,)
    torch.testing.assert_close(scores[0], torch.tensor(0.6))
    assert torch.isnan(scores[1])
    # restricted to class 2: only pixel 2 -> 0.6; (B, *spatial) labels are accepted too
    torch.testing.assert_close(confidence_scores(probabilities, labels[:, 0], classes=[2])[0], torch.tensor(0.6))
    # restricted to class 1 on a sample where it is unsure: pixel 1 has p_1 = 0.6
    probabilities[0, 1, 0, 1], probabilities[0, 0, 0, 1] = 0.3, 0.5
    torch.testing.assert_close(confidence_scores(probabilities, labels, classes=[1])[0], torch.tensor(0.3))
    torch.testing.assert_close(confidence_scores(probabilities, labels)[0], torch.tensor(0.45))


def test_confidence_rejects_bad_input():
    with pytest.raises(ValueError, match="do not match"):
        confidence_scores(torch.rand(2, 3, 4, 4), torch.zeros(2, 1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="0..2"):
        confidence_scores(torch.rand(1, 3, 2, 2), torch.full((1, 1, 2, 2), 3))


def test_keep_top_fraction_keeps_highest_and_ranks_ties_by_index_and_nan_last():
    scores = torch.tensor([0.5, 0.9, float("nan"), 0.5, 0.1, 0.5])
    # ranking: 1 (0.9), 0, 3, 5 (0.5 ties by index), 4 (0.1), 2 (NaN)
    assert keep_top_fraction(scores, 0.5) == ([0, 1, 3], [2, 4, 5])
    assert keep_top_fraction(scores, 2 / 6) == ([0, 1], [2, 3, 4, 5])
    assert keep_top_fraction(scores, 5 / 6) == ([0, 1, 3, 4, 5], [2])
    assert keep_top_fraction(scores.tolist(), 1.0) == ([0, 1, 2, 3, 4, 5], [])
    assert keep_top_fraction(scores, 0.0) == ([], [0, 1, 2, 3, 4, 5])


def test_keep_top_fraction_rounding_and_minimum():
    # floor(0.5 * 7) = 3; a tiny fraction still keeps one; 0.29 * 100 must give 29, not 28 from float error
    assert len(keep_top_fraction(torch.arange(7.0), 0.5)[0]) == 3
    assert keep_top_fraction(torch.arange(7.0), 0.01) == ([6], [0, 1, 2, 3, 4, 5])
    assert len(keep_top_fraction(torch.arange(100.0), 0.29)[0]) == 29
    assert keep_top_fraction([], 0.5) == ([], [])
    assert keep_top_fraction([-math.inf, float("nan")], 0.5) == ([0], [1])
    with pytest.raises(ValueError, match="fraction"):
        keep_top_fraction([1.0], 1.5)


def test_dice_keep_relabel_drop_thresholds():
    eta = 0.065
    # float64 so the boundaries are exactly eta and 2 eta (float32 0.065 is 0.0649999976, below eta)
    losses = torch.tensor([0.0, 0.0649, 0.065, 0.1299, 0.13, 0.9, float("nan")], dtype=torch.float64)
    assert dice_keep_relabel_drop(losses, eta) == [
        "kept",
        "kept",
        "relabelled",
        "relabelled",
        "dropped",
        "dropped",
        "dropped",
    ]
    assert dice_keep_relabel_drop([0.05, 0.15], eta=0.1) == ["kept", "relabelled"]
    with pytest.raises(ValueError, match="eta"):
        dice_keep_relabel_drop([0.1], eta=0.0)
