"""Bad input is found before training: every offending file and its problem, all in one DataValidationError."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.data import DataValidationError, load_splits, phantom_dataset, validate_pairs

USGRA = Path(__file__).parents[2] / "shared/data/usgra_nerve_vessel"

GOOD_MASK = np.zeros((6, 8), np.uint8)
GOOD_MASK[2:4, 3:6] = 1


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".nii.gz"):
        nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    else:
        image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
        image.save(path)
    return str(path)


def _pair(root: Path, name: str, image: np.ndarray | None = None, mask: np.ndarray | None = None, **kw) -> dict:
    image = np.full((6, 8), 120, np.uint8) if image is None else image
    mask = GOOD_MASK if mask is None else mask
    return {
        "image": _save(root / "images" / f"{name}.png", image, kw.get("image_mode")),
        "label": _save(root / "masks" / f"{name}.png", mask, kw.get("mask_mode")),
    }


def _bad_cases(root: Path) -> dict[str, tuple[dict, str, str]]:
    """name -> (entry, offending path, expected problem text)."""
    cases = {}
    missing = _pair(root, "missing_image")
    Path(missing["image"]).unlink()
    cases["missing image"] = (missing, missing["image"], "file not found")
    no_mask = _pair(root, "missing_mask")
    Path(no_mask["label"]).unlink()
    cases["missing mask"] = (no_mask, no_mask["label"], "file not found")
    broken = _pair(root, "broken")
    Path(broken["image"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    cases["unreadable"] = (broken, broken["image"], "unreadable")
    size = _pair(root, "size", mask=np.zeros((6, 9), np.uint8))
    cases["size mismatch"] = (size, size["label"], "mask size 6x9 != image size 6x8")
    outside = _pair(root, "outside", mask=GOOD_MASK * 7)
    cases["value >= num_classes"] = (outside, outside["label"], "mask values [7] are outside 0..2")
    empty = _pair(root, "empty", mask=np.zeros((6, 8), np.uint8))
    cases["empty mask"] = (empty, empty["label"], "empty mask")
    two = _pair(root, "two_channels", image=np.full((6, 8), 90, np.uint8), image_mode="LA")
    cases["2-channel image"] = (two, two["image"], "image has 2 channels (mode LA)")
    cmyk_path = root / "images" / "cmyk.jpg"
    Image.new("CMYK", (8, 6), (10, 20, 30, 0)).save(cmyk_path)
    cmyk = {"image": str(cmyk_path), "label": _save(root / "masks" / "cmyk.png", GOOD_MASK)}
    cases["4-channel non-RGBA"] = (cmyk, str(cmyk_path), "image has 4 channels (mode CMYK) that are not RGBA")
    rgb_mask = _pair(root, "rgb_mask", mask=GOOD_MASK, mask_mode="RGB")
    cases["multi-channel mask"] = (rgb_mask, rgb_mask["label"], "mask has 3 channels (mode RGB)")
    nan_image = np.ones((6, 8, 1), np.float32)
    nan_image[1, 2, 0] = np.nan
    nan_image[3, 3, 0] = np.inf
    nan_path = _save(root / "images" / "nan.nii.gz", nan_image)
    nan = {"image": nan_path, "label": _save(root / "masks" / "nan.png", GOOD_MASK)}
    cases["NaN/inf"] = (nan, nan_path, "image has 2 NaN/inf value(s)")
    return cases


def test_every_problem_is_reported_together(tmp_path):
    cases = _bad_cases(tmp_path)
    good = [_pair(tmp_path, f"good{i}") for i in range(3)]
    entries = good[:1] + [entry for entry, _, _ in cases.values()] + good[1:]
    with pytest.raises(DataValidationError) as caught:
        validate_pairs(entries, num_classes=3, require_foreground=True)
    error = caught.value
    assert isinstance(error, ValueError)
    message = str(error)
    for name, (_, path, problem) in cases.items():
        assert f"{path}: {problem}" in message, f"{name} not reported as expected:\n{message}"
    assert len(error.problems) == len(cases)
    assert not any("good" in path for path, _ in error.problems)


@pytest.mark.parametrize(
    "case",
    [
        "missing image",
        "unreadable",
        "size mismatch",
        "value >= num_classes",
        "empty mask",
        "2-channel image",
        "NaN/inf",
    ],
)
def test_each_problem_alone_names_its_file(tmp_path, case):
    entry, path, problem = _bad_cases(tmp_path)[case]
    with pytest.raises(DataValidationError, match="1 problem") as caught:
        validate_pairs([entry], num_classes=3, require_foreground=True)
    assert caught.value.problems == [(path, caught.value.problems[0][1])]
    assert problem in caught.value.problems[0][1]


def test_class_map_checks_raw_values(tmp_path):
    binary = _pair(tmp_path, "binary", mask=GOOD_MASK * 255)
    validate_pairs([binary], num_classes=2, class_map={0: 0, 255: 1})
    validate_pairs([binary], num_classes=2, class_map={"0": 0, "255": 1})  # JSON configs give string keys
    with pytest.raises(DataValidationError, match=r"mask values \[255\] are outside 0..1"):
        validate_pairs([binary], num_classes=2)
    odd = _pair(tmp_path, "odd", mask=GOOD_MASK * 128)
    with pytest.raises(DataValidationError, match=r"odd.png: mask values \[128\] are not in the class map"):
        validate_pairs([binary, odd], num_classes=2, class_map={0: 0, 255: 1})
    with pytest.raises(ValueError, match="class_map targets"):
        validate_pairs([binary], num_classes=2, class_map={0: 0, 255: 2})


def test_accepted_inputs_pass(tmp_path):
    colour = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    entries = [
        _pair(tmp_path, "rgb", image=colour),
        _pair(tmp_path, "rgba", image=colour, image_mode="RGBA"),
        _pair(tmp_path, "palette", mask=GOOD_MASK, mask_mode="P"),
        {"image": _save(tmp_path / "images" / "unlabelled.png", colour)},
        {
            "image": _save(tmp_path / "images" / "slice.nii.gz", np.random.rand(6, 8, 1).astype(np.float32)),
            "label": _save(tmp_path / "masks" / "slice.nii.gz", GOOD_MASK[..., None]),
        },
    ]
    validate_pairs(entries, num_classes=2, require_foreground=True)


def test_phantoms_pass(tmp_path):
    folder = phantom_dataset(root=tmp_path, num_images=12)
    splits = load_splits(folder)
    validate_pairs(splits["train"] + splits["test"], num_classes=5)


@pytest.mark.skipif(not USGRA.is_dir(), reason=f"real data set not found at {USGRA}")
def test_usgra_passes_with_its_palette_masks_and_rgb_images():
    splits = load_splits(str(USGRA))
    validate_pairs(splits["train"] + splits["test"], num_classes=3, require_foreground=True)
    with pytest.raises(DataValidationError, match="are outside 0..1") as caught:
        validate_pairs(splits["test"], num_classes=2)  # blood vessels (2) do not exist with 2 classes
    masks = (USGRA / "masks").resolve()
    assert all(Path(path).resolve().is_relative_to(masks) for path, _ in caught.value.problems)
