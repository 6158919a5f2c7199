"""The embedded phantom data set: deterministic, realistic class statistics, the shared layout, atomic generation."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from PIL import Image

from common.data import (
    PHANTOM_CLASSES,
    load_splits,
    phantom_dataset,
    read_class_names,
    read_orientation,
    render_phantom,
)
from common.data import phantom as phantom_module
from common.regions import regenerated_fraction


def _digest(folder: str) -> dict[str, str]:
    root = Path(folder)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _masks(folder: str) -> list[np.ndarray]:
    return [np.array(Image.open(p)) for p in sorted(Path(folder, "masks").glob("*.png"))]


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> str:
    """The default 240-image set, generated once for this module."""
    return phantom_dataset(root=tmp_path_factory.mktemp("phantoms"))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    first = phantom_dataset(root=tmp_path / "a", num_images=12, seed=3)
    second = phantom_dataset(root=tmp_path / "b", num_images=12, seed=3)
    other = phantom_dataset(root=tmp_path / "c", num_images=12, seed=4)
    assert _digest(first) == _digest(second)
    assert len(_digest(first)) == 2 * 12 + 4  # images, masks, classes.json, two split files, datalist.json
    first_masks, other_masks = _masks(first), _masks(other)
    assert sum(np.array_equal(a, b) for a, b in zip(first_masks, other_masks, strict=True)) == 0
    image, label = render_phantom((64, 64), seed=3, index=5, has_rare=False)
    assert np.array_equal(np.array(Image.open(Path(first, "images", "0005.png"))), np.round(image * 255))
    assert np.array_equal(np.array(Image.open(Path(first, "masks", "0005.png"))), label)


def test_class_frequencies_sizes_and_rare_class(default_set):
    masks = _masks(default_set)
    assert len(masks) == 240 and masks[0].shape == (64, 64)
    presence = {c: np.mean([(m == c).any() for m in masks]) for c in range(len(PHANTOM_CLASSES))}
    assert all(presence[c] > 0 for c in presence), presence
    assert 0 < presence[4] < 0.15, "the lesion class must be rare but present"
    assert presence[1] > presence[2] > presence[3] > presence[4]
    mean_area = {c: np.mean([(m == c).sum() for m in masks if (m == c).any()]) for c in range(1, 5)}
    assert mean_area[1] > 3 * max(mean_area[2], mean_area[3]) and min(mean_area[2], mean_area[3]) > mean_area[4]
    splits = load_splits(default_set)
    for split in ("train", "test"):
        rare = [np.any(np.array(Image.open(e["label"])) == 4) for e in splits[split]]
        assert any(rare), f"the rare class must appear in {split}"


def test_later_classes_overwrite_earlier_ones_and_intensities_separate_classes():
    """A lesion is drawn inside the organ and replaces it; each class has its own intensity level."""
    overlaps, levels = 0, {c: [] for c in range(5)}
    for index in range(40):
        image, label = render_phantom((64, 64), seed=0, index=index, has_rare=index % 4 == 0)
        lesion = label == 4
        if lesion.any():
            ring = np.zeros_like(lesion)
            ring[1:-1, 1:-1] = lesion[:-2, 1:-1] | lesion[2:, 1:-1] | lesion[1:-1, :-2] | lesion[1:-1, 2:]
            overlaps += np.any(label[ring & ~lesion] == 1)
        for c in range(5):
            levels[c] += image[label == c].tolist()
    assert overlaps >= 5, "lesions sit on the organ they overwrite"
    means = {c: float(np.mean(v)) for c, v in levels.items()}
    assert means[2] < means[0] < means[1] < means[3] < means[4], means
    assert min(abs(a - b) for i, a in means.items() for j, b in means.items() if i < j) > 0.1


def test_textured_background_and_noise():
    image, label = render_phantom((64, 64), seed=0, index=1, has_rare=False)
    background = image[label == 0]
    assert background.std() > 0.02, "background is textured, not flat"
    assert image.min() > 0 and image.max() <= 1 and image.dtype == np.float32


def test_shifted_domain_has_the_same_masks_and_another_look(tmp_path):
    source = phantom_dataset(root=tmp_path, num_images=8)
    shifted = phantom_dataset(root=tmp_path, num_images=8, domain="shifted")
    assert source != shifted
    for a, b in zip(_masks(source), _masks(shifted), strict=True):
        assert np.array_equal(a, b)
    image_s, label = render_phantom((64, 64), 0, 2, True, "source")
    image_t, _ = render_phantom((64, 64), 0, 2, True, "shifted")
    assert np.abs(image_s - image_t).mean() > 0.05
    # blur + speckle: neighbouring pixels of the shifted look correlate differently and the contrast changes
    contrast = [abs(img[label == 1].mean() - img[label == 0].mean()) for img in (image_s, image_t)]
    assert contrast[1] < contrast[0]
    with pytest.raises(ValueError, match="domain"):
        phantom_dataset(root=tmp_path, domain="target")


def test_layout_follows_the_shared_data_format(default_set):
    root = Path(default_set)
    assert read_class_names(default_set) == list(PHANTOM_CLASSES)
    train = (root / "split_train.txt").read_text().split()
    test = (root / "split_test.txt").read_text().split()
    assert not set(train) & set(test) and len(train) + len(test) == 240
    assert 30 <= len(test) <= 50  # about one sixth
    first = Image.open(root / "images" / f"{train[0]}.png")
    mask = Image.open(root / "masks" / f"{train[0]}.png")
    assert first.mode == "L" and mask.mode == "P" and first.size == mask.size == (64, 64)
    datalist = json.loads((root / "datalist.json").read_text())
    assert not Path(datalist["training"][0]["image"]).is_absolute()
    entries = load_decathlon_datalist(str(root / "datalist.json"), data_list_key="training")
    assert [Path(e["image"]).stem for e in entries] == train
    assert all(Path(e["label"]).is_file() for e in entries)
    assert [Path(e["image"]).stem for e in datalist["test"]] == [Path(e).stem for e in test]


def test_any_image_size_rows_first(tmp_path):
    folder = phantom_dataset(root=tmp_path, image_size=(40, 72), num_images=3)
    image = Image.open(Path(folder, "images", "0000.png"))
    assert image.size == (72, 40)  # PIL gives (width, height)
    assert np.array(Image.open(Path(folder, "masks", "0000.png"))).shape == (40, 72)


def test_generation_is_atomic_when_interrupted(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = phantom_module.Image.Image.save

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(phantom_module.Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        phantom_dataset(root=tmp_path, num_images=10)
    assert list(tmp_path.iterdir()) == [], "an interrupted run leaves neither a half set nor its temporary folder"
    monkeypatch.setattr(phantom_module.Image.Image, "save", original)
    folder = phantom_dataset(root=tmp_path, num_images=10)
    assert len(list(Path(folder, "images").iterdir())) == 10
    assert [p.name for p in tmp_path.iterdir()] == [Path(folder).name]


def test_concurrent_generation_gives_one_complete_set(tmp_path):
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(phantom_dataset(root=tmp_path, num_images=20))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 3
    assert [p.name for p in tmp_path.iterdir()] == [Path(results[0]).name]
    assert len(list(Path(results[0], "masks").iterdir())) == 20


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_GENAUG_DATA", str(tmp_path))
    folder = phantom_dataset(num_images=4, image_size=16)
    assert Path(folder).parent == tmp_path


def test_lateral_layout_has_a_look_alike_pair_told_apart_only_by_side(tmp_path):
    folder = Path(phantom_dataset(root=tmp_path, num_images=40, layout="lateral"))
    assert read_class_names(folder) == ["background", "right_lobe", "left_lobe", "vessel", "nerve", "lesion"]
    assert "lateral" in folder.name and phantom_dataset(root=tmp_path, num_images=40) != str(folder)
    both, right_values, left_values = 0, [], []
    for index in range(40):
        image, label = render_phantom((64, 64), seed=0, index=index, has_rare=index == 0, layout="lateral")
        columns = np.nonzero(label == 1)[1], np.nonzero(label == 2)[1]
        if all(len(c) for c in columns):
            both += 1
            assert columns[0].mean() < 32 < columns[1].mean()  # right lobe on the image's left, left lobe on its right
            right_values.append(image[label == 1].mean())
            left_values.append(image[label == 2].mean())
    assert both >= 25
    assert abs(np.mean(right_values) - np.mean(left_values)) < 0.02  # same look: only the side tells them apart
    _, lesion = render_phantom((64, 64), seed=0, index=0, has_rare=True, layout="lateral")
    assert (lesion == 5).any()
    with pytest.raises(ValueError, match="layout"):
        render_phantom((64, 64), seed=0, index=0, has_rare=False, layout="mirrored")


def test_thorax_layout_has_large_structures_whose_boxes_leave_little_to_regenerate(tmp_path):
    """The chest X-ray case: lungs, heart and clavicles whose class boxes cover most of the image, so box-mode
    inpainting regenerates far less than on the default phantoms (mostly the corners)."""
    folder = Path(phantom_dataset(root=tmp_path, num_images=60, layout="thorax"))
    assert read_class_names(folder) == ["background", "right_lung", "left_lung", "heart", "clavicles", "nodule"]
    assert [sorted(pair) for pair in read_orientation(folder).lateral_pairs] == [[1, 2]]  # paired by their names
    regenerated = {}
    for layout in ("thorax", "standard"):
        labels = torch.stack(
            [
                torch.from_numpy(render_phantom((64, 64), 0, index, index == 0, layout=layout)[1]).long()[None]
                for index in range(60)
            ]
        )
        regenerated[layout] = float(regenerated_fraction(labels, "box").mean())
        if layout == "thorax":
            lungs = [(labels[i, 0] == c).nonzero()[:, 1].float().mean() for i in range(60) for c in (1, 2)]
            assert all(float(column) < 32 for column in lungs[0::2] if not column.isnan())  # right lung on the left
            assert all(float(column) > 32 for column in lungs[1::2] if not column.isnan())
            assert float((labels[:, 0] > 0).float().mean()) > 0.4  # large: over 40 % of the pixels are labelled
            assert (labels == 5).any()
    assert regenerated["thorax"] < 0.45 and regenerated["standard"] > 0.6
