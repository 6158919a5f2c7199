"""The catalogue of bad inputs: each is refused with a message that names it, before anything trains; results are
never reused across data sets or subsets, no synthetic set leaks held-out data by any path, and the output folder's
files that this project did not write are left alone. The README's "Bad input" table lists these cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.data import DataValidationError, load_splits, phantom_dataset, validate_dataset
from common.evaluation import LeakageError, check_provenance
from common.files import atomic_files, remove_stale_temporaries
from common.io import SyntheticDatasetWriter, check_output_dir
from common.stages import run_stages
from scripts.augment import augment
from scripts.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
TINY_ARMS = {"channels": [4, 8, 16, 32], "num_workers": 0, "batch_size": 4}


def folder_dataset(root: Path, count: int = 8, size: int = 16) -> Path:
    """A folder data set of ``count`` random pairs with two classes and split files (the last two ids: test)."""
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(root / "images" / f"c{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[2:6, 2:6] = 1
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "thing"}))
    (root / "split_train.txt").write_text("\n".join(f"c{i}" for i in range(count - 2)))
    (root / "split_test.txt").write_text("\n".join(f"c{i}" for i in range(count - 2, count)))
    return root


# ------------------------------------------------------------------------------------ the data set, before training


def test_every_problem_of_a_data_set_is_named_at_once(tmp_path):
    data = folder_dataset(tmp_path / "d")
    (data / "images" / "c0.png").write_text("a text file named .png")
    content = (data / "masks" / "c1.png").read_bytes()
    (data / "masks" / "c1.png").write_bytes(content[: len(content) // 2])  # truncated
    os.remove(data / "images" / "c2.png")
    nib.save(nib.Nifti1Image(np.random.rand(16, 16, 5).astype(np.float32), np.eye(4)), data / "images" / "c2.nii.gz")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(data / "masks" / "c6.png")  # a test mask, class 7
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(data / "masks" / "c3.png")  # size mismatch
    (data / "images" / "extra.png").write_text("an unlabelled image that is not one")
    with pytest.raises(DataValidationError) as error:
        validate_dataset(str(data), num_labelled=1, val_fraction=0.2)
    message = str(error.value)
    expected = {
        "leaves no training pairs": "val_fraction=0.2",
        "c0.png: unreadable": "text file named .png",
        "c1.png: unreadable (OSError: image file is truncated)": "truncated mask",
        "c2.nii.gz: unreadable": "3D volume",
        "c3.png: mask size 12x16 != image size 16x16": "size mismatch",
        "c6.png: mask values [7] are outside": "test mask value",
        "extra.png: unreadable": "unlabelled image",
    }
    for text, what in expected.items():
        assert text in message, what
    (data / "classes.json").write_text('{"0": "background", "1": "thing",}')
    with pytest.raises(DataValidationError, match=r"classes.json is not valid JSON: Expecting property name.*char 33"):
        validate_dataset(str(data))


def test_a_split_listed_id_without_its_mask_is_an_error(tmp_path):
    data = folder_dataset(tmp_path / "d")
    os.remove(data / "masks" / "c7.png")  # listed in split_test.txt
    with pytest.raises(FileNotFoundError, match=r"split_test.txt: 1 listed id\(s\) have no mask.*c7"):
        load_splits(str(data))
    data = folder_dataset(tmp_path / "e")
    (data / "images" / "free.png").write_bytes((data / "images" / "c0.png").read_bytes())
    assert load_splits(str(data))["unlabelled"] == [{"image": str((data / "images" / "free.png").resolve())}]


def test_datalist_paths_outside_its_folder_and_fractional_counts_are_refused(tmp_path):
    data = folder_dataset(tmp_path / "d")
    lists = tmp_path / "lists" / "datalist.json"
    lists.parent.mkdir()
    entries = [{"image": f"../d/images/c{i}.png", "label": f"../d/masks/c{i}.png"} for i in range(6)]
    lists.write_text(json.dumps({"training": entries}))
    with pytest.raises(ValueError, match="leave the datalist's folder"):
        load_splits(str(lists))
    assert len(load_splits(str(lists), allow_outside_paths=True)["train"]) == 5
    with pytest.raises(ValueError, match="whole number of pairs"):
        load_splits(str(data), num_labelled=2.5)


@pytest.mark.engine
def test_augment_checks_the_data_and_the_output_folder_before_the_first_stage(tmp_path):
    data = folder_dataset(tmp_path / "d")
    (data / "images" / "c0.png").write_text("a text file named .png")
    with pytest.raises(DataValidationError, match="c0.png: unreadable"):
        augment("gauda", data=str(data), out=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "models").exists()  # nothing trained
    good = folder_dataset(tmp_path / "good")
    with pytest.raises(DataValidationError, match="leaves no training pairs out of 1"):
        augment("augpaint", data=str(good), labelled=1, out=str(tmp_path / "run"))  # its filter needs validation
    synthetic = tmp_path / "run" / "synthetic"
    synthetic.mkdir(parents=True)
    (synthetic / "datalist.json").write_text(json.dumps({"training": [{"image": "a.png", "label": "b.png"}]}))
    with pytest.raises(ValueError, match="is not a synthetic set of 'gauda'"):
        augment("gauda", data=str(good), out=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "models").exists()


@pytest.mark.engine
def test_a_bundle_run_ends_with_the_real_problem(tmp_path):
    data = folder_dataset(tmp_path / "d")
    (data / "masks" / "c1.png").write_text("not a mask")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/gauda/configs/train.json"]
    command += ["--dataset_dir", str(data), "--ckpt_dir", str(tmp_path / "models")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()
    assert last[-2].startswith("The problem: DataValidationError") and "c1.png: unreadable" in last[-1]


# ------------------------------------------------------------------------------------ the evaluation


@pytest.mark.engine
def test_evaluate_checks_the_test_split_and_the_synthetic_sets_before_training(tmp_path):
    data = folder_dataset(tmp_path / "d")
    content = (data / "masks" / "c7.png").read_bytes()
    (data / "masks" / "c7.png").write_bytes(content[:20])  # a truncated test mask
    with pytest.raises(DataValidationError, match="c7.png: unreadable"):
        evaluate(data=str(data), seeds=1, iterations=2, knobs=TINY_ARMS, out=str(tmp_path / "ev"))
    assert not (tmp_path / "ev" / "runs").exists()
    good = folder_dataset(tmp_path / "good")
    writer = SyntheticDatasetWriter(str(tmp_path / "empty"), "augpaint", {"generator_labels": []})
    with pytest.raises(ValueError, match="holds no pair"):
        evaluate(data=str(good), synthetic=[writer.finalize()], seeds=1, iterations=2, out=str(tmp_path / "ev"))
    assert not (tmp_path / "ev" / "runs").exists()


@pytest.mark.engine
def test_a_one_pair_synthetic_set_is_evaluated_with_fid_reported_na(tmp_path):
    data = folder_dataset(tmp_path / "d", size=32)
    train = load_splits(str(data))["train"]
    writer = SyntheticDatasetWriter(str(tmp_path / "one" / "synthetic"), "augpaint", {"generator_labels": []})
    image = np.asarray(Image.open(train[0]["image"])) / 255.0
    writer.write_pair(image, np.asarray(Image.open(train[0]["label"])), seed=0, name="only")
    options = dict(seeds=1, iterations=2, knobs=TINY_ARMS, controls=False, synthetic_only=False)
    results = evaluate(data=str(data), synthetic=[writer.finalize()], out=str(tmp_path / "ev"), **options)
    (quality,) = results["generator_quality"].values()
    assert np.isnan(quality["fid"]) and quality["num_synthetic"] == 1
    assert "n/a (1 pairs)" in (tmp_path / "ev" / "results.md").read_text()


@pytest.mark.engine
def test_finished_runs_of_another_data_set_or_subset_are_not_reused(tmp_path):
    first, second = folder_dataset(tmp_path / "a"), folder_dataset(tmp_path / "b")
    mask = np.zeros((16, 16), np.uint8)
    mask[8:14, 8:14] = 1
    for i in range(8):  # the second data set: other masks, the same file names
        Image.fromarray(mask).save(second / "masks" / f"c{i}.png")
    options = dict(seeds=1, iterations=2, knobs=TINY_ARMS, out=str(tmp_path / "ev"))
    evaluate(data=str(first), **options)
    record = tmp_path / "ev" / "runs" / "real" / "seed0" / "run.json"
    before = json.loads(record.read_text())["settings"]
    evaluate(data=str(second), **options)
    after = json.loads(record.read_text())["settings"]
    assert before["train"] != after["train"] and before["test"] != after["test"]  # retrained, not reused
    evaluate(data=str(second), labelled=3, seed=1, **options)
    assert json.loads(record.read_text())["settings"]["train"] != after["train"]


def test_a_set_whose_generator_saw_masks_outside_the_subset_is_refused(tmp_path):
    labelled = [{"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}]
    path = tmp_path / "synthetic" / "datalist.json"
    path.parent.mkdir()
    config = {"generator_labels": [labelled[0]["label"], str(tmp_path / "b_mask.png")]}
    path.write_text(json.dumps({"method": "gauda", "config": config, "training": []}))
    with pytest.raises(LeakageError, match="trained on 1 mask"):
        check_provenance(str(path), labelled, [])
    config["generator_labels"] = [labelled[0]["label"]]
    path.write_text(json.dumps({"method": "gauda", "config": config, "training": []}))
    check_provenance(str(path), labelled, [])


# ------------------------------------------------------------------------------------ the output folder is the user's


def test_a_checkpoint_no_stage_wrote_is_not_overwritten(tmp_path):
    config = tmp_path / "train_stage.json"
    config.write_text(json.dumps({"checkpoint": "", "run": ["$open(@checkpoint, 'w').write('trained')"]}))
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_text("the user's own model")
    stage = {"name": "stage", "config_file": str(config), "checkpoint": str(checkpoint)}
    stage["overrides"] = {"checkpoint": str(checkpoint)}
    with pytest.raises(FileExistsError, match="no stage of this project wrote it"):
        run_stages([stage])
    assert checkpoint.read_text() == "the user's own model"
    assert run_stages([stage], retrain=True) == ["stage"] and checkpoint.read_text() == "trained"


def test_only_temporary_files_of_this_project_are_removed(tmp_path):
    with atomic_files(str(tmp_path / "x.png")) as (temp,):
        left_by_a_killed_run = Path(temp).name  # the name atomic_files gives its temporary files
        Path(temp).write_text("complete")
    (tmp_path / left_by_a_killed_run).write_text("half")
    os.remove(tmp_path / "x.png")
    (tmp_path / ".tmp-my-notes.txt").write_text("the user's")
    remove_stale_temporaries(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-my-notes.txt"]


def test_an_unrelated_datalist_in_the_output_folder_is_refused(tmp_path):
    (tmp_path / "datalist.json").write_text(json.dumps({"method": "augpaint", "training": []}))
    check_output_dir(str(tmp_path), "augpaint")
    with pytest.raises(ValueError, match="not a synthetic set of 'gauda'"):
        check_output_dir(str(tmp_path), "gauda")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "x"}]}))  # a user's own datalist
    with pytest.raises(ValueError, match="not a synthetic data set"):
        check_output_dir(str(tmp_path), "augpaint")


def test_phantoms_pass_the_whole_data_set_check(tmp_path):
    splits = validate_dataset(phantom_dataset(root=str(tmp_path / "p"), num_images=12), num_labelled=4)
    assert len(splits["train"]) == 4
