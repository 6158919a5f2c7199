"""The synthetic data set writer: MONAI-readable datalist, exact pixels, atomic files, resumable runs."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime

import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from PIL import Image

from common.io import JOURNAL_NAME, SyntheticDatasetWriter, class_palette, write_contact_sheet

HEIGHT, WIDTH = 5, 7  # not square: a transposed picture would not even have the right shape


def make_pair(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose values are exact multiples of 1/255 (exact PNG round trip) and a 3-class label."""
    generator = torch.Generator().manual_seed(index)
    image = torch.randint(0, 256, (1, HEIGHT, WIDTH), generator=generator).float() / 255.0
    label = torch.zeros(1, HEIGHT, WIDTH, dtype=torch.long)
    label[0, 1:3, 2 : 4 + index % 3] = 1
    label[0, 4, 0] = 2
    return image, label


def generate(writer: SyntheticDatasetWriter, count: int) -> list[str]:
    """A generation loop as the methods write it: skip pairs that are done, return the names written now."""
    written = []
    for index in range(count):
        name = f"case{index}_s0"
        if writer.done(name):
            continue
        image, label = make_pair(index)
        writer.write_pair(image, label, seed=100 + index, source_image=f"/data/{index}.png", name=name)
        written.append(name)
    return written


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def read_png(path: str) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture)


def test_datalist_loads_with_monai_and_round_trips_pixels(tmp_path):
    writer = SyntheticDatasetWriter(str(tmp_path), method="augpaint", config={"num_samples": 2, "steps": (1, 2)})
    image, label = make_pair(0)
    writer.write_pair(image, label, seed=7, source_image="real/a.png", source_label="real/a_mask.png", name="a_s0")
    writer.write_pair(*make_pair(1), seed=8, condition=torch.tensor([1, 2]), score=0.75, name="b_s0")
    writer.drop(2)
    path = writer.finalize()
    assert path == os.path.join(str(tmp_path), "datalist.json")
    assert not os.path.exists(tmp_path / JOURNAL_NAME)

    datalist = read_json(path)
    assert list(datalist) == ["method", "created", "config", "training", "dropped"]
    assert datalist["method"] == "augpaint" and datalist["dropped"] == 2
    assert datalist["config"] == {"num_samples": 2, "steps": [1, 2]}
    datetime.fromisoformat(datalist["created"])
    assert datalist["training"][0] == {
        "image": "images/a_s0.png",
        "label": "masks/a_s0.png",
        "seed": 7,
        "source_image": "real/a.png",
        "source_label": "real/a_mask.png",
        "condition": None,
        "score": None,
        "status": "kept",
    }
    assert datalist["training"][1]["condition"] == [1, 2] and datalist["training"][1]["score"] == 0.75

    items = load_decathlon_datalist(path, data_list_key="training")
    assert [os.path.basename(item["image"]) for item in items] == ["a_s0.png", "b_s0.png"]
    loaded_image, loaded_label = read_png(items[0]["image"]), read_png(items[0]["label"])
    assert loaded_image.shape == (HEIGHT, WIDTH) and loaded_image.dtype == np.uint8
    np.testing.assert_array_equal(loaded_image, np.round(image[0].numpy() * 255).astype(np.uint8))
    np.testing.assert_array_equal(loaded_label, label[0].numpy())
    with Image.open(items[0]["label"]) as mask:
        assert mask.mode == "P"  # palette PNG: pixel value = class index, visible colours
        assert mask.getpalette()[3:6] == class_palette()[1].tolist()


def test_interrupted_run_resumes_without_duplicates(tmp_path):
    writer = SyntheticDatasetWriter(str(tmp_path), "augpaint", {"num_samples": 1})
    assert generate(writer, 3) == ["case0_s0", "case1_s0", "case2_s0"]
    writer.set_score("case1_s0", 0.5)
    del writer  # interrupted: no finalize, no datalist
    assert not os.path.exists(tmp_path / "datalist.json")

    resumed = SyntheticDatasetWriter(str(tmp_path), "augpaint", {"num_samples": 1})
    assert resumed.names == ["case0_s0", "case1_s0", "case2_s0"] and all(map(resumed.done, resumed.names))
    assert generate(resumed, 5) == ["case3_s0", "case4_s0"]  # only the missing pairs are generated
    datalist = read_json(resumed.finalize())
    assert [entry["image"] for entry in datalist["training"]] == [f"images/case{i}_s0.png" for i in range(5)]
    assert datalist["training"][1]["score"] == 0.5  # changes before the interruption survive
    assert sorted(os.listdir(tmp_path / "images")) == [f"case{i}_s0.png" for i in range(5)]

    # a finished run reopened by the same command is also complete: nothing is generated again
    again = SyntheticDatasetWriter(str(tmp_path), "augpaint", {"num_samples": 1})
    assert generate(again, 5) == [] and len(again) == 5


def test_torn_journal_line_is_dropped_and_the_run_continues(tmp_path):
    writer = SyntheticDatasetWriter(str(tmp_path), "augpaint")
    generate(writer, 2)
    with open(tmp_path / JOURNAL_NAME, "a") as f:
        f.write('{"op": "write", "name": "case2_s0", "ent')  # killed in the middle of a journal write
    resumed = SyntheticDatasetWriter(str(tmp_path), "augpaint")
    assert resumed.names == ["case0_s0", "case1_s0"]
    assert generate(resumed, 3) == ["case2_s0"]
    assert SyntheticDatasetWriter(str(tmp_path), "augpaint").names == ["case0_s0", "case1_s0", "case2_s0"]


def test_resuming_with_other_settings_is_refused(tmp_path):
    generate(SyntheticDatasetWriter(str(tmp_path), "augpaint", {"num_samples": 1}), 1)
    with pytest.raises(ValueError, match="another run"):
        SyntheticDatasetWriter(str(tmp_path), "augpaint", {"num_samples": 2})
    with pytest.raises(ValueError, match="another run"):
        SyntheticDatasetWriter(str(tmp_path), "gauda", {"num_samples": 1})


def test_no_partial_file_when_saving_fails(tmp_path, monkeypatch):
    writer = SyntheticDatasetWriter(str(tmp_path), "augpaint")
    original_save = Image.Image.save
    calls = []

    def fail_on_mask(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:  # the image is saved, the mask save fails half-way
            with open(fp, "wb") as f:
                f.write(b"\x89PNG partial")
            raise OSError("disk full")
        return original_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", fail_on_mask)
    with pytest.raises(OSError, match="disk full"):
        writer.write_pair(*make_pair(0), seed=0, name="case0_s0")
    monkeypatch.setattr(Image.Image, "save", original_save)

    assert os.listdir(tmp_path / "images") == [] and os.listdir(tmp_path / "masks") == []  # no final, no temp
    assert not writer.done("case0_s0") and len(writer) == 0
    assert generate(SyntheticDatasetWriter(str(tmp_path), "augpaint"), 1) == ["case0_s0"]


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    SyntheticDatasetWriter(str(tmp_path), "augpaint")
    stale = tmp_path / "images" / ".tmp-0123456789ab-case0_s0.png"
    stale.write_bytes(b"half a png")
    SyntheticDatasetWriter(str(tmp_path), "augpaint")
    assert not stale.exists()


def test_filter_updates_scores_statuses_and_drops(tmp_path):
    writer = SyntheticDatasetWriter(str(tmp_path), "diffuseexpand")
    generate(writer, 4)
    writer.drop()  # rejected before writing
    writer.set_score("case0_s0", float("nan"))  # not JSON: recorded as null
    writer.set_score("case1_s0", 0.9)
    writer.remove("case2_s0")
    writer.set_status("case3_s0", "dropped")
    new_mask = torch.ones(1, HEIGHT, WIDTH, dtype=torch.long)
    writer.relabel("case1_s0", new_mask)
    assert writer.dropped == 3
    assert not os.path.exists(tmp_path / "images" / "case2_s0.png")
    assert not os.path.exists(tmp_path / "masks" / "case3_s0.png")
    with pytest.raises(KeyError, match="case2_s0"):
        writer.set_score("case2_s0", 1.0)
    with pytest.raises(ValueError, match="status"):
        writer.set_status("case0_s0", "maybe")

    datalist = read_json(writer.finalize())
    assert datalist["dropped"] == 3
    assert [(e["image"], e["score"], e["status"]) for e in datalist["training"]] == [
        ("images/case0_s0.png", None, "kept"),
        ("images/case1_s0.png", 0.9, "relabelled"),
    ]
    np.testing.assert_array_equal(read_png(str(tmp_path / "masks" / "case1_s0.png")), new_mask[0].numpy())


def test_journal_replayed_over_the_datalist_it_produced_counts_drops_once(tmp_path):
    # a crash between writing datalist.json and deleting the journal leaves both: replaying must not double counts
    writer = SyntheticDatasetWriter(str(tmp_path), "augpaint")
    generate(writer, 3)
    writer.remove("case0_s0")
    writer.drop(2)
    shutil.copy(tmp_path / JOURNAL_NAME, tmp_path / "journal.copy")
    writer.finalize()
    os.replace(tmp_path / "journal.copy", tmp_path / JOURNAL_NAME)
    resumed = SyntheticDatasetWriter(str(tmp_path), "augpaint")
    assert resumed.dropped == 3 and resumed.names == ["case1_s0", "case2_s0"]


def test_default_names_and_bad_input(tmp_path):
    writer = SyntheticDatasetWriter(str(tmp_path), "gauda")
    image, label = make_pair(0)
    assert writer.write_pair(image, label, seed=42) == "000042"
    with pytest.raises(ValueError, match="pass a name"):
        writer.write_pair(image, label, seed=42)
    with pytest.raises(ValueError, match="pair name"):
        writer.write_pair(image, label, seed=1, name="../escape")
    with pytest.raises(ValueError, match="differ in size"):
        writer.write_pair(image, label[:, :, :3], seed=1, name="x")
    with pytest.raises(ValueError, match="class indices"):
        writer.write_pair(image, label.float() + 0.5, seed=1, name="x")
    with pytest.raises(ValueError, match="NaN"):
        writer.write_pair(image * float("nan"), label, seed=1, name="x")
    with pytest.raises(ValueError, match="image_format"):
        SyntheticDatasetWriter(str(tmp_path / "other"), "gauda", image_format="jpg")
    assert writer.names == ["000042"]


def test_nifti_pairs_round_trip(tmp_path):
    nib = pytest.importorskip("nibabel")
    writer = SyntheticDatasetWriter(str(tmp_path), "gauda", image_format="nii.gz")
    image = torch.rand(1, HEIGHT, WIDTH)
    _, label = make_pair(0)
    writer.write_pair(image, label, seed=0, name="p")
    items = load_decathlon_datalist(writer.finalize(), data_list_key="training")
    assert items[0]["image"].endswith("images/p.nii.gz")
    np.testing.assert_allclose(np.asarray(nib.load(items[0]["image"]).dataobj), image[0].numpy())
    np.testing.assert_array_equal(np.asarray(nib.load(items[0]["label"]).dataobj), label[0].numpy())


def test_contact_sheet_shows_image_and_overlay(tmp_path):
    pairs = [make_pair(i) for i in range(3)]
    path = write_contact_sheet(pairs, str(tmp_path / "sheet.png"), num_classes=3, columns=2)
    sheet = read_png(path)
    gap, cell_width = 2, 2 * WIDTH + 1  # image | white separator | overlay
    assert sheet.shape == (2 * (HEIGHT + gap) + gap, 2 * (cell_width + gap) + gap, 3)
    image, label = pairs[1]
    top, left = gap, gap + cell_width + gap  # second pair: first row, second column
    grey = np.round(image[0].numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(sheet[top : top + HEIGHT, left : left + WIDTH, 0], grey)  # image alone
    overlay = sheet[top : top + HEIGHT, left + WIDTH + 1 : left + cell_width].astype(float)
    background = label[0].numpy() == 0
    np.testing.assert_array_equal(overlay[background][:, 1], grey[background])  # background untouched
    row, column = 1, 2  # a class-1 pixel: half image, half the class colour
    expected = 0.5 * float(grey[row, column]) + 0.5 * class_palette(3)[1].astype(float)
    np.testing.assert_allclose(overlay[row, column], expected, atol=0.51)
    with pytest.raises(ValueError, match="num_classes"):
        write_contact_sheet(pairs, str(tmp_path / "bad.png"), num_classes=2)

    writer = SyntheticDatasetWriter(str(tmp_path / "run"), "augpaint")
    generate(writer, 3)
    sheet_path = writer.write_contact_sheet(num_classes=3, columns=2)
    # the writer's pairs read back from disk give the same sheet (overlay halves may round the other way)
    np.testing.assert_allclose(read_png(sheet_path), sheet, atol=1)
