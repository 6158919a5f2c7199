"""Orientation semantics of a data set: lateral class pairs found from names or declared, valid flips, and a
left-right flip that keeps the left class on the left."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.data.laterality import Orientation, RandLateralFlipd, detect_lateral_pairs, orientation_from_classes

CHEST = ["background", "right_lung", "left_lung", "heart", "L_clavicle", "R_clavicle", "lesion_l"]


def test_pairs_are_found_from_left_right_markers_in_any_case():
    assert detect_lateral_pairs(CHEST) == [(2, 1), (4, 5)]  # (left, right); lesion_l has no right partner
    assert detect_lateral_pairs(["background", "Kidney-Left", "kidney right", "liver"]) == [(1, 2)]
    assert detect_lateral_pairs(["background", "nerve", "blood vessel"]) == []
    assert detect_lateral_pairs(["background", "rib", "lung"]) == []  # a name that only starts with "r" or "l"


def test_declarations_override_the_defaults_and_up_down_is_off_unless_declared():
    detected = orientation_from_classes({}, CHEST)
    assert detected.lateral_pairs == ((2, 1), (4, 5)) and detected.flips == ("left_right",)
    assert detected.flip_axes == (1,) and not detected.allows_plain_flip("left_right")
    declared = orientation_from_classes({"lateral_pairs": [[1, 2]], "flips": ["left_right", "up_down"]}, CHEST)
    assert declared.lateral_pairs == ((1, 2),) and declared.flip_axes == (0, 1)
    assert declared.allows_plain_flip("up_down")
    plain = orientation_from_classes({}, ["background", "nerve", "vessel"])
    assert plain.allows_plain_flip("left_right") and not plain.allows_plain_flip("up_down")
    assert orientation_from_classes({"flips": []}, CHEST).flip_axes == ()
    with pytest.raises(ValueError, match="unknown flip"):
        Orientation(flips=("diagonal",))
    with pytest.raises(ValueError, match="disjoint foreground"):
        Orientation(lateral_pairs=((1, 2), (2, 3)))


def test_a_lateral_flip_moves_the_pixels_and_keeps_each_side_s_class():
    # as in a chest X-ray: class 1 (right lung) on the image's left half, class 2 (left lung) on its right half
    label = torch.zeros(1, 4, 6)
    label[0, :, :2], label[0, :, 4:] = 1, 2
    label[0, 0, 2] = 3  # an unpaired class moves without changing
    image = torch.arange(24, dtype=torch.float32).reshape(1, 4, 6)
    flip = RandLateralFlipd(["image", "label"], Orientation(lateral_pairs=((2, 1),)), num_classes=4, prob=1.0)
    out = flip({"image": image, "label": label})
    np.testing.assert_array_equal(out["image"], torch.flip(image, [-1]))  # the image is mirrored
    np.testing.assert_array_equal(out["label"][0, :, :2], 1)  # the right lung class is still on the image's left
    np.testing.assert_array_equal(out["label"][0, :, 4:], 2)
    assert out["label"][0, 0, 3] == 3  # mirrored position, same class
    # the mask follows the image pixel for pixel: every pixel's structure moved with it
    np.testing.assert_array_equal(out["label"] > 0, torch.flip(label, [-1]) > 0)


def test_without_pairs_it_is_a_plain_flip_and_with_probability_zero_nothing():
    label = torch.randint(0, 3, (1, 5, 5)).float()
    image = torch.rand(1, 5, 5)
    plain = RandLateralFlipd(["image", "label"], Orientation(), num_classes=3, prob=1.0)
    out = plain({"image": image, "label": label})
    np.testing.assert_array_equal(out["label"], torch.flip(label, [-1]))
    never = RandLateralFlipd(["image", "label"], Orientation(lateral_pairs=((1, 2),)), num_classes=3, prob=0.0)
    np.testing.assert_array_equal(never({"image": image, "label": label})["label"], label)
    with pytest.raises(ValueError, match="does not allow left-right"):
        RandLateralFlipd(["image"], Orientation(flips=()), num_classes=3)
