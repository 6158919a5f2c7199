"""Finding pairs (folders, datalists), reading class names and reproducible splits."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.data import find_pairs, load_splits, read_class_names, resolve_dataset

USGRA = Path(__file__).parents[2] / "shared/data/usgra_nerve_vessel"
needs_usgra = pytest.mark.skipif(not USGRA.is_dir(), reason=f"real data set not found at {USGRA}")


def _write_pair(root: Path, name: str, with_mask: bool = True, suffix: str = ".png") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    pixels = np.full((6, 8), 100, np.uint8)
    Image.fromarray(pixels).save(root / "images" / f"{name}{suffix}")
    if with_mask:
        Image.fromarray((pixels > 0).astype(np.uint8)).save(root / "masks" / f"{name}.png")


def _folder(root: Path, labelled: int, unlabelled: int = 0) -> Path:
    for i in range(labelled):
        _write_pair(root, f"case{i:03d}")
    for i in range(unlabelled):
        _write_pair(root, f"extra{i:03d}", with_mask=False)
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "thing", "encoding": "grey"}))
    return root


def _ids(entries: list[dict]) -> list[str]:
    return [Path(e["image"]).stem for e in entries]


def test_folder_pairs_match_by_stem_across_formats(tmp_path):
    _folder(tmp_path, labelled=2, unlabelled=1)
    _write_pair(tmp_path, "scan", suffix=".jpg")
    nib.save(nib.Nifti1Image(np.zeros((6, 8, 1), np.float32), np.eye(4)), tmp_path / "images" / "vol.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 8, 1), np.uint8), np.eye(4)), tmp_path / "masks" / "vol.nii.gz")
    labelled, unlabelled = find_pairs(tmp_path)
    assert sorted(labelled) == ["case000", "case001", "scan", "vol"]
    assert labelled["vol"]["label"].endswith("masks/vol.nii.gz")
    assert labelled["scan"]["image"].endswith("images/scan.jpg")
    assert list(unlabelled) == ["extra000"] and "label" not in unlabelled["extra000"]


def test_duplicate_ids_are_an_error(tmp_path):
    _folder(tmp_path, labelled=1)
    _write_pair(tmp_path, "case000", with_mask=False, suffix=".bmp")
    with pytest.raises(ValueError, match="case000"):
        find_pairs(tmp_path)


def test_seeded_split_is_disjoint_deterministic_and_fixed_across_run_seeds(tmp_path):
    root = _folder(tmp_path, labelled=20, unlabelled=3)
    splits = load_splits(root)
    assert len(splits["test"]) == 4 and len(splits["train"]) == 16 and splits["val"] == []
    assert not set(_ids(splits["train"])) & set(_ids(splits["test"]))
    assert _ids(splits["unlabelled"]) == ["extra000", "extra001", "extra002"]
    assert load_splits(root) == splits
    assert load_splits(root, seed=5)["test"] == splits["test"], "the held-out set does not change with the run seed"
    assert load_splits(root, test_seed=1)["test"] != splits["test"]
    assert all(Path(e["image"]).is_absolute() and Path(e["label"]).is_file() for e in splits["train"])


def test_num_labelled_subset_moves_the_rest_to_unlabelled(tmp_path):
    root = _folder(tmp_path, labelled=20, unlabelled=2)
    full = load_splits(root)
    five = load_splits(root, seed=1, num_labelled=5)
    ten = load_splits(root, seed=1, num_labelled=10)
    assert len(five["train"]) == 5 and len(ten["train"]) == 10
    assert set(_ids(five["train"])) < set(_ids(ten["train"])), "smaller subsets are nested in larger ones"
    assert set(_ids(five["train"])) <= set(_ids(full["train"]))
    assert five["test"] == full["test"]
    assert len(five["unlabelled"]) == 16 - 5 + 2 and all(set(e) == {"image"} for e in five["unlabelled"])
    assert set(_ids(five["unlabelled"])) == set(_ids(full["train"])) - set(_ids(five["train"])) | {
        "extra000",
        "extra001",
    }
    assert load_splits(root, seed=1, num_labelled=5) == five
    assert load_splits(root, seed=2, num_labelled=5)["train"] != five["train"]
    with pytest.raises(ValueError, match="num_labelled"):
        load_splits(root, num_labelled=17)


def test_validation_is_carved_from_the_labelled_pairs(tmp_path):
    root = _folder(tmp_path, labelled=20)
    splits = load_splits(root, seed=0, num_labelled=10, val_fraction=0.2)
    assert len(splits["train"]) == 8 and len(splits["val"]) == 2
    labelled = set(_ids(load_splits(root, seed=0, num_labelled=10)["train"]))
    assert set(_ids(splits["train"])) | set(_ids(splits["val"])) == labelled
    assert not set(_ids(splits["train"])) & set(_ids(splits["val"]))
    assert len(load_splits(root, val_fraction=0.01)["val"]) == 1, "a positive fraction gives at least one pair"


def test_split_files_are_honoured(tmp_path):
    root = _folder(tmp_path, labelled=6, unlabelled=1)
    (root / "split_train.txt").write_text("case000\ncase001\ncase002.png\n\n")
    (root / "split_test.txt").write_text("case004\ncase005\n")
    splits = load_splits(root, seed=3)
    assert _ids(splits["train"]) == ["case000", "case001", "case002"]
    assert _ids(splits["test"]) == ["case004", "case005"]
    assert _ids(splits["unlabelled"]) == ["extra000"], "case003 is in neither split file and is left out"
    (root / "split_test.txt").write_text("case004\nmissing_case\n")
    with pytest.raises(FileNotFoundError, match="missing_case"):
        load_splits(root)
    (root / "split_test.txt").write_text("case002\n")
    with pytest.raises(ValueError, match="case002"):
        load_splits(root)


def test_datalist_file_and_folder_with_datalist(tmp_path):
    data = tmp_path / "data"
    _folder(data, labelled=6, unlabelled=1)
    datalist = {
        "labels": {"0": "background", "1": "thing"},
        "training": [{"image": f"images/case{i:03d}.png", "label": f"masks/case{i:03d}.png"} for i in range(3)]
        + [{"image": "images/extra000.png", "seed": None}],
        "validation": [{"image": "images/case003.png", "label": "masks/case003.png"}],
        "test": [{"image": "images/case004.png", "label": "masks/case004.png"}, {"image": "images/case005.png"}],
    }
    (data / "datalist.json").write_text(json.dumps(datalist))
    for dataset in (data / "datalist.json", data):
        splits = load_splits(dataset, val_fraction=0.5)
        assert _ids(splits["train"]) == ["case000", "case001", "case002"]
        assert _ids(splits["val"]) == ["case003"], "the datalist's validation list wins over val_fraction"
        assert _ids(splits["test"]) == ["case004"]
        assert _ids(splits["unlabelled"]) == ["extra000", "case005"]
        assert splits["train"][0] == {
            "image": str(data / "images/case000.png"),
            "label": str(data / "masks/case000.png"),
        }
    other = tmp_path / "lists" / "only_training.json"
    other.parent.mkdir()
    rel = [{"image": f"../data/images/case{i:03d}.png", "label": f"../data/masks/case{i:03d}.png"} for i in range(5)]
    other.write_text(json.dumps({"training": rel}))
    with pytest.raises(ValueError, match="leave the datalist's folder"):
        load_splits(other)  # ../ paths reach files the datalist's author did not ship with it
    splits = load_splits(other, allow_outside_paths=True)
    assert len(splits["test"]) == 1 and len(splits["train"]) == 4, "no test list: a seeded 20 % split"
    assert Path(splits["train"][0]["image"]).resolve() == (data / "images/case000.png").resolve()
    with pytest.raises(FileNotFoundError, match="classes.json"):
        read_class_names(other)  # neither a classes.json next to the datalist nor a "labels" dict in it
    decathlon = tmp_path / "lists" / "decathlon.json"  # Decathlon test lists are plain image paths
    decathlon.write_text(json.dumps({"training": rel[:4], "test": ["../data/images/case004.png"]}))
    splits = load_splits(decathlon, allow_outside_paths=True)
    assert splits["test"] == [] and _ids(splits["unlabelled"]) == ["case004"] and len(splits["train"]) == 4


def test_read_class_names(tmp_path):
    root = _folder(tmp_path, labelled=1)
    assert read_class_names(root) == ["background", "thing"]
    (root / "classes.json").write_text(json.dumps({"0": "background", "2": "gap"}))
    with pytest.raises(ValueError, match="0..K-1"):
        read_class_names(root)
    (root / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="classes.json"):
        read_class_names(root)
    (root / "datalist.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": []}))
    assert read_class_names(root) == ["bg", "a", "b"]


def test_resolve_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_GENAUG_DATA", str(tmp_path / "cache"))
    phantoms = resolve_dataset(None)
    assert resolve_dataset("phantoms") == phantoms and Path(phantoms).parent == tmp_path / "cache"
    assert "shifted" in resolve_dataset("phantoms_shifted")
    assert len(load_splits(None)["test"]) == 40
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_dataset(tmp_path / "nowhere")


@needs_usgra
def test_usgra_loads_without_preparation():
    splits = load_splits(str(USGRA))
    assert len(splits["train"]) == 204 and len(splits["test"]) == 40 and splits["unlabelled"] == []
    assert _ids(splits["test"]) == sorted((USGRA / "split_test.txt").read_text().split())
    assert read_class_names(str(USGRA))[0] == "background" and len(read_class_names(str(USGRA))) == 3
    low = load_splits(str(USGRA), seed=0, num_labelled=10, val_fraction=0.2)
    assert len(low["train"]) == 8 and len(low["val"]) == 2 and len(low["unlabelled"]) == 194
