"""Orientation semantics of a data set: lateral class pairs found from names or declared, valid flips, and a
left-right flip that keeps the left class on the left."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import DataValidationError, phantom_dataset, read_orientation, validate_dataset
from common.data.laterality import (
    Orientation,
    RandLateralFlipd,
    detect_lateral_pairs,
    flip_transforms,
    orientation_from_classes,
    seeded_flips,
)
from common.evaluation.quality import lateral_side_agreement
from common.evaluation.report import to_markdown

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
    with pytest.raises(ValueError, match="outside the classes"):
        orientation_from_classes({"lateral_pairs": [[1, 7]]}, CHEST)


def test_a_lateral_flip_moves_the_pixels_and_keeps_each_side_s_class():
    # as in a chest X-ray: class 1 (right lung) on the image's left half, class 2 (left lung) on its right half
    label = torch.zeros(1, 4, 6)
    label[0, :, :2], label[0, :, 4:] = 1, 2
    label[0, 0, 2] = 3  # an unpaired class moves without changing
    image = torch.arange(24, dtype=torch.float32).reshape(1, 4, 6)
    flip = RandLateralFlipd(["image", "label"], Orientation(lateral_pairs=((2, 1),)), prob=1.0)
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
    plain = RandLateralFlipd(["image", "label"], Orientation(), prob=1.0)
    out = plain({"image": image, "label": label})
    np.testing.assert_array_equal(out["label"], torch.flip(label, [-1]))
    never = RandLateralFlipd(["image", "label"], Orientation(lateral_pairs=((1, 2),)), prob=0.0)
    np.testing.assert_array_equal(never({"image": image, "label": label})["label"], label)
    with pytest.raises(ValueError, match="does not allow left-right"):
        RandLateralFlipd(["image"], Orientation(flips=()))
    with pytest.raises(ValueError, match="must swap labels"):
        RandLateralFlipd(["image"], Orientation(lateral_pairs=((1, 2),)))


def _kinds(transforms) -> list[tuple[str, int | None]]:
    return [(type(t).__name__, getattr(getattr(t, "flipper", None), "spatial_axis", None)) for t in transforms]


def test_flip_transforms_give_each_kind_of_data_only_the_flips_it_may_take():
    lateral = Orientation(lateral_pairs=((1, 2),))
    assert _kinds(flip_transforms(["image", "label"], lateral)) == [("RandLateralFlipd", None)]
    assert flip_transforms(["image"], lateral, label_keys=()) == []  # an image or latent alone cannot swap
    assert _kinds(flip_transforms(["image"], Orientation(), label_keys=())) == [("RandFlipd", 1)]
    both = Orientation(flips=("up_down", "left_right"), lateral_pairs=((1, 2),))
    assert _kinds(flip_transforms("latent", both, label_keys=())) == [("RandFlipd", 0)]
    assert flip_transforms(["image", "label"], Orientation(flips=())) == []


def test_seeded_flips_swap_lateral_labels_and_skip_flips_the_data_does_not_allow():
    label = torch.zeros(1, 1, 4, 6)
    label[..., :2], label[..., 4:] = 1, 2  # class 1 on the image's left
    image = torch.arange(24, dtype=torch.float32).reshape(1, 1, 4, 6)
    lateral = Orientation(lateral_pairs=((2, 1),))
    flipped = 0
    for seed in range(12):
        draws = (torch.rand(2, generator=torch.Generator().manual_seed(seed)) < 0.5).tolist()
        out_image, out_label = seeded_flips(image, label, [seed], lateral)
        np.testing.assert_array_equal(out_label, label)  # mirrored and swapped: each side keeps its class
        np.testing.assert_array_equal(out_image, torch.flip(image, [-1]) if draws[1] else image)  # up-down skipped
        flipped += draws[1]
    assert 0 < flipped < 12


def test_read_orientation_finds_the_lateral_phantoms_pair_and_a_declaration(tmp_path):
    assert read_orientation(phantom_dataset(tmp_path / "lateral", image_size=16, num_images=4, layout="lateral")) == (
        Orientation(lateral_pairs=((2, 1),))  # left_lobe, right_lobe
    )
    folder = tmp_path / "declared"
    folder.mkdir()
    (folder / "images").mkdir()
    classes = {"0": "background", "1": "lobe a", "2": "lobe b", "lateral_pairs": [[1, 2]], "flips": ["up_down"]}
    (folder / "classes.json").write_text(json.dumps(classes))
    assert read_orientation(folder) == Orientation(flips=("up_down",), lateral_pairs=((1, 2),))
    (folder / "classes.json").write_text(json.dumps({**classes, "lateral_pairs": [[1, 3]]}))
    with pytest.raises(ValueError, match=r"declared: lateral pair\(s\) \[\(1, 3\)\] are outside the classes 0..2"):
        read_orientation(folder)


def _mask_file(folder, name: str, columns_by_class: dict[int, slice]) -> dict:
    label = np.zeros((8, 12), dtype=np.uint8)
    for c, columns in columns_by_class.items():
        label[2:6, columns] = c
    path = folder / f"{name}.png"
    Image.fromarray(label).save(path)
    return {"image": str(path), "label": str(path)}


SUMMARY = {"mean": 0.5, "std": 0.1, "n": 3}
RESULTS = {
    "class_names": ["background", "right_lobe", "left_lobe"],
    "test_data": "t",
    "labelled": 3,
    "data": "d",
    "training_pairs": 3,
    "validation_pairs": 0,
    "iterations": 1,
    "seeds": 3,
    "arms": {},
}


def test_side_agreement_counts_the_masks_that_keep_the_real_sides(tmp_path):
    real = [_mask_file(tmp_path, f"real{i}", {1: slice(0, 3), 2: slice(8, 11)}) for i in range(3)]
    synthetic = [
        _mask_file(tmp_path, "kept", {1: slice(1, 4), 2: slice(7, 10)}),
        _mask_file(tmp_path, "kept_too", {1: slice(0, 2), 2: slice(3, 5)}),
        _mask_file(tmp_path, "swapped", {2: slice(0, 3), 1: slice(8, 11)}),
        _mask_file(tmp_path, "one_lobe", {1: slice(0, 3)}),  # alone, on the image's left as in the real masks
        _mask_file(tmp_path, "one_lobe_moved", {2: slice(0, 3)}),  # alone, on the left where real ones are right
        _mask_file(tmp_path, "no_lobe", {3: slice(0, 3)}),  # not checked: no class of the pair
    ]
    found = lateral_side_agreement(real, synthetic, Orientation(lateral_pairs=((2, 1),)))
    assert found == {"fraction": 3 / 5, "checked": 5, "kept": 3, "real_sides": [1]}  # left class on the right
    none = lateral_side_agreement(real, synthetic[5:], Orientation(lateral_pairs=((2, 1),)))
    assert none["checked"] == 0 and np.isnan(none["fraction"])
    quality = {"fid": 1.0, "kid": 0.1, "num_synthetic": 4, "real_only_dice": {"class_mean": SUMMARY}}
    lateral_quality = {**quality, "laterality": found}
    table = to_markdown({**RESULTS, "generator_quality": {"a": lateral_quality, "b": quality}})
    assert "| sides kept |" in table.replace(" | MS-SSIM", " |") and "| 0.60 (3/5) |" in table
    assert "sides kept" not in to_markdown({**RESULTS, "generator_quality": {"b": quality}})


def test_a_bad_declaration_is_named_with_the_data_set_s_other_problems_before_training(tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(phantom_dataset(tmp_path / "lateral", image_size=16, num_images=6, layout="lateral"), folder)
    names = json.loads((folder / "classes.json").read_text())
    (folder / "classes.json").write_text(json.dumps({**names, "lateral_pairs": [[2, 1]], "flips": ["sideways"]}))
    (folder / "masks" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(DataValidationError) as raised:
        validate_dataset(folder)
    message = str(raised.value)
    assert "orientation (lateral_pairs, flips): unknown flip(s) ['sideways']" in message and "0000.png" in message
