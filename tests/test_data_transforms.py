"""pair_transforms: row-major arrays as PIL shows them, grey [0, 1] images, class-index labels, aligned augmentation."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, OneOf, RandFlipd
from PIL import Image

from common.data import chain_transforms, load_splits, pair_transforms, phantom_dataset

USGRA = Path(__file__).parents[2] / "shared/data/usgra_nerve_vessel"


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    if path.name.endswith(".nii.gz"):
        nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    else:
        (Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)).save(path)
    return str(path)


def _error_chain(error: BaseException) -> str:
    """MONAI's Compose re-raises as "applying transform ..." from the original error; users see the whole chain."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    return "\n".join(messages)


def _gradient(height: int = 5, width: int = 9) -> np.ndarray:
    return (np.arange(height * width).reshape(height, width) * 5).astype(np.uint8)


def test_loaded_image_equals_the_pil_array_of_a_non_square_image(tmp_path):
    path = _save(tmp_path / "grey.png", _gradient())
    expected = np.array(Image.open(path)) / 255.0
    for size in (None, (5, 9)):
        image = pair_transforms(size, keys=("image",))({"image": path})["image"]
        assert image.shape == (1, 5, 9) and image.dtype == torch.float32
        np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)
    saved = tmp_path / "saved.png"
    Image.fromarray(np.round(image[0].numpy() * 255).astype(np.uint8)).save(saved)
    assert np.array_equal(np.array(Image.open(saved)), np.array(Image.open(path))), "load then save is the same picture"


def test_rgb_and_palette_images_become_grey_like_pil(tmp_path):
    colour = np.random.default_rng(0).integers(0, 256, (7, 4, 3), dtype=np.uint8)
    rgb = _save(tmp_path / "rgb.png", colour)
    rgba = _save(tmp_path / "rgba.png", colour, "RGBA")
    palette = _save(tmp_path / "palette.png", colour, "P")
    transform = pair_transforms(None, keys=("image",))
    for path in (rgb, rgba, palette):
        image = transform({"image": path})["image"]
        expected = np.array(Image.open(path).convert("L")) / 255.0
        assert image.shape == (1, 7, 4)
        np.testing.assert_allclose(image[0].numpy(), expected, atol=1.01 / 255)  # PIL rounds to integers


def test_intensity_scaling_options(tmp_path):
    deep = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    path = _save(tmp_path / "deep.png", deep)
    image = pair_transforms(None, keys=("image",))({"image": path})["image"][0].numpy()
    np.testing.assert_allclose(image, deep / 65535.0, atol=1e-6)
    stretched = pair_transforms(None, keys=("image",), intensity="minmax")({"image": path})["image"][0].numpy()
    np.testing.assert_allclose(stretched, deep / deep.max(), atol=1e-6)
    window = pair_transforms(None, keys=("image",), intensity=(10000, 30000))({"image": path})["image"][0].numpy()
    np.testing.assert_allclose(window, np.clip((deep.astype(float) - 10000) / 20000, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="intensity"):
        pair_transforms(intensity="zscore")


def test_nifti_slices_load_and_volumes_fail_clearly(tmp_path):
    slice_ = np.random.default_rng(1).normal(size=(6, 10, 1)).astype(np.float32)
    mask = (slice_ > 0).astype(np.uint8)
    entry = {"image": _save(tmp_path / "img.nii.gz", slice_), "label": _save(tmp_path / "seg.nii.gz", mask)}
    out = pair_transforms(None)(entry)
    expected = (slice_[..., 0] - slice_.min()) / (slice_.max() - slice_.min())  # float data: min-max per image
    np.testing.assert_allclose(out["image"][0].numpy(), expected, atol=1e-6)
    assert np.array_equal(out["label"][0].numpy(), mask[..., 0])
    resized = pair_transforms((12, 20))(entry)
    assert resized["image"].shape == resized["label"].shape == (1, 12, 20)
    volume = _save(tmp_path / "volume.nii.gz", np.zeros((6, 10, 3), np.float32))
    with pytest.raises(RuntimeError) as caught:
        pair_transforms(None, keys=("image",))({"image": volume})
    assert re.search(r"volume.nii.gz: shape \(6, 10, 3\) is not a 2D slice", _error_chain(caught.value))


def test_class_map_turns_raw_values_into_indices(tmp_path):
    raw = np.zeros((6, 8), np.uint8)
    raw[1:3, 2:5] = 255
    entry = {"image": _save(tmp_path / "i.png", raw), "label": _save(tmp_path / "m.png", raw)}
    label = pair_transforms(None, class_map={"0": 0, "255": 1})(entry)["label"][0].numpy()
    assert np.array_equal(label, raw // 255)
    only_mask = pair_transforms((3, 4), keys=("label",), class_map={0: 0, 255: 1})({"label": entry["label"]})
    assert set(np.unique(only_mask["label"].numpy())) <= {0.0, 1.0} and "image" not in only_mask


def test_wrong_channel_counts_name_the_file(tmp_path):
    two = _save(tmp_path / "two.png", _gradient(), "LA")
    with pytest.raises(RuntimeError) as caught:
        pair_transforms(None, keys=("image",))({"image": two})
    assert "two.png: image has 2 channels (mode LA)" in _error_chain(caught.value)
    rgb_mask = _save(tmp_path / "rgb_mask.png", _gradient(), "RGB")
    with pytest.raises(RuntimeError) as caught:
        pair_transforms(None, keys=("label",))({"label": rgb_mask})
    assert "rgb_mask.png: mask has 3 channels" in _error_chain(caught.value)


def test_phantom_batches_have_the_contract_shapes_and_values(tmp_path):
    splits = load_splits(phantom_dataset(root=tmp_path, num_images=12))
    transform = pair_transforms(48, augment=True)
    transform.set_random_state(0)
    loader = DataLoader(Dataset(splits["train"][:6], transform), batch_size=3, num_workers=0)
    for batch in loader:
        image, label = batch["image"], batch["label"]
        assert image.shape == label.shape == (3, 1, 48, 48)
        assert image.dtype == label.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert torch.equal(label, label.round()) and set(label.unique().tolist()) <= {0, 1, 2, 3, 4}


def test_augmentation_moves_image_and_label_together(tmp_path):
    """The label is exactly where the image is bright; after any random flip/affine it still is."""
    label = np.zeros((40, 56), np.uint8)
    label[5:30, 8:16] = 1  # an L shape: no flip or rotation maps it onto itself
    label[22:30, 8:40] = 1
    entry = {
        "image": _save(tmp_path / "i.png", np.where(label > 0, 220, 20).astype(np.uint8)),
        "label": _save(tmp_path / "m.png", label),
    }
    plain = pair_transforms((32, 48))(entry)
    transform = pair_transforms((32, 48), augment=True)
    changed = 0
    for seed in range(12):
        transform.set_random_state(seed)
        out = transform(entry)
        bright, inside = out["image"][0] > 0.47, out["label"][0] > 0.5
        iou = float((bright & inside).sum() / (bright | inside).sum())
        assert iou > 0.9, f"seed {seed}: image and label drifted apart (IoU {iou:.2f})"
        changed += not torch.equal(out["label"], plain["label"])
    assert changed >= 6, "augmentation must actually move things"
    assert float((plain["image"][0] > 0.47).eq(plain["label"][0] > 0.5).float().mean()) > 0.97


@pytest.mark.skipif(not USGRA.is_dir(), reason=f"real data set not found at {USGRA}")
def test_usgra_pairs_load_as_pil_shows_them():
    entries = load_splits(str(USGRA))["train"]
    entry = next(e for e in entries if Image.open(e["image"]).size == (534, 512))
    out = pair_transforms(None)(entry)
    grey = np.array(Image.open(entry["image"]).convert("L")) / 255.0
    assert out["image"].shape == (1, 512, 534)
    np.testing.assert_allclose(out["image"][0].numpy(), grey, atol=1.01 / 255)
    assert np.array_equal(out["label"][0].numpy(), np.array(Image.open(entry["label"])))
    small = pair_transforms(64)(entry)
    assert small["image"].shape == small["label"].shape == (1, 64, 64)
    assert set(small["label"].unique().tolist()) <= {0, 1, 2}


def test_chained_transforms_are_cached_up_to_the_first_random_one(tmp_path):
    """A nested Compose counts as random for CacheDataset; chained, the loaded and resized pair is cached and the
    augmentation after it (a OneOf kept whole) still runs at every draw."""
    pairs = load_splits(phantom_dataset(root=str(tmp_path), num_images=6), seed=0)["train"][:2]
    flip = OneOf([RandFlipd(["image", "label"], prob=1.0, spatial_axis=1)])  # random by type, always flips
    nested = CacheDataset(pairs, Compose([pair_transforms(32), flip]), progress=False)
    chained = CacheDataset(pairs, chain_transforms([pair_transforms(32), flip]), progress=False)
    assert isinstance(nested._cache[0]["image"], str)  # nothing cached: every draw reads and resizes the file
    assert chained._cache[0]["image"].shape == chained._cache[0]["label"].shape == (1, 32, 32)
    assert type(chained.transform.transforms[-1]) is OneOf
    loaded = pair_transforms(32)(dict(pairs[0]))
    for key in ("image", "label"):
        assert torch.equal(torch.as_tensor(chained[0][key]), torch.as_tensor(loaded[key]).flip(-1))
