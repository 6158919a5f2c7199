"""The efficacy study end to end on a tiny phantom plan: selection never lets a generator or an arm see the
selection-validation pairs, the chosen cell is the one with the best validation gain, the test stage scores every cell,
the report shows every cell, and a second call reuses everything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.data import load_splits, phantom_dataset
from common.files import read_json
from scripts.study import make_sets, read_plan, study

TINY_AUGPAINT = {"autoencoder_iterations": 4, "diffusion_iterations": 4, "val_interval": 2}
CELL_KNOBS = {"num_samples": 1, "num_inference_steps": 2, "progress": False}


def test_a_plan_needs_methods_with_uniquely_named_cells(tmp_path):
    path = tmp_path / "plan.json"
    for plan, message in (({}, "methods"), ({"methods": {"augpaint": [{"name": "a"}, {"name": "a"}]}}, "unique")):
        path.write_text(json.dumps(plan))
        with pytest.raises(ValueError, match=message):
            read_plan(str(path))
    with pytest.raises(ValueError, match="unknown stage"):
        study(str(path), out=str(tmp_path / "out"), stages=["train"])


def test_a_cell_can_take_the_masks_another_cell_made(tmp_path, monkeypatch):
    calls = []

    def fake_augment(method, out, **options):
        calls.append(options)
        return os.path.join(out, "synthetic", "datalist.json")

    monkeypatch.setattr("scripts.study.augment", fake_augment)
    cells = {
        "diffuseexpand": [{"name": "no_filter", "knobs": {"filter": False}}, {"name": "tau", "masks_from": "no_filter"}]
    }
    made = make_sets({}, "d", 10, str(tmp_path), cells)
    assert "label_maps" not in calls[0] and calls[1]["label_maps"] == str(
        tmp_path / "diffuseexpand/no_filter/synthetic/masks"
    )
    assert set(made) == {"diffuseexpand/no_filter", "diffuseexpand/tau"}
    with pytest.raises(ValueError, match="listed first"):
        make_sets({}, "d", 10, str(tmp_path), {"diffuseexpand": cells["diffuseexpand"][::-1]})


@pytest.mark.engine
@pytest.mark.slow
def test_selection_keeps_validation_pairs_out_and_the_report_shows_every_cell(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=30)
    cells = [
        {"name": "quick", "train_knobs": TINY_AUGPAINT, "knobs": CELL_KNOBS, "budget": 1},
        {"name": "shape", "train_knobs": TINY_AUGPAINT, "knobs": {**CELL_KNOBS, "mask_mode": "shape"}},
    ]
    plan = {
        "data": data,
        "image_size": 32,
        "selection": {"labelled": 6, "fraction": 0.34, "seeds": 1, "iterations": 2},
        "test": {"seeds": 2, "iterations": 2, "learning_curve": [4, 6]},
        "arm_knobs": {"channels": [4, 8, 16, 32], "num_workers": 0, "batch_size": 4},
        "segmenter_knobs": {"max_iterations": 2, "val_interval": 2, "num_workers": 0},
        "methods": {"augpaint": cells},
    }
    plan_path, out, report = tmp_path / "plan.json", tmp_path / "study", tmp_path / "efficacy.md"
    plan_path.write_text(json.dumps(plan))
    study(str(plan_path), out=str(out), report=str(report))

    held_out = {os.path.realpath(p["label"]) for p in load_splits(data, 0, num_labelled=6, val_fraction=0.34)["val"]}
    assert len(held_out) == 2
    for cell in ("quick", "shape"):
        synthetic = read_json(str(out / "selection" / "augpaint" / cell / "synthetic" / "datalist.json"))
        seen = {os.path.realpath(p) for p in synthetic["config"]["generator_labels"]}
        sources = {os.path.realpath(e["source_label"]) for e in synthetic["training"]}
        assert len(seen) == 4 and not (seen | sources) & held_out  # learnt from the 4 selection-training pairs only
    selection = read_json(str(out / "selection.json"))
    gains = {cell: selection["gains"][f"augpaint/{cell}"]["mean"] for cell in ("quick", "shape")}
    assert selection["chosen"]["augpaint"] == max(gains, key=lambda c: (gains[c], c == "quick"))
    selection_results = read_json(str(out / "selection" / "evaluation" / "results.json"))
    assert selection_results["training_pairs"] == 4  # the arms train on the selection-training pairs
    assert "real + augpaint (quick)" not in selection_results["arms"]  # only what selection compares is trained
    assert Path(selection_results["test_data"]).name == "datalist.json"  # and are scored on the held-out two

    grid = read_json(str(out / "test" / "n6" / "evaluation" / "results.json"))
    assert {"real + classic aug + augpaint (quick)", "real + classic aug + augpaint (shape)"} <= set(grid["arms"])
    assert grid["training_pairs"] == 6
    curve = read_json(str(out / "test" / "n4" / "evaluation" / "results.json"))
    assert f"real + classic aug + augpaint ({selection['chosen']['augpaint']})" in curve["arms"]
    text = report.read_text()
    assert "augpaint (quick)" in text and "augpaint (shape)" in text and "Not run yet" not in text
    assert "augpaint (quick) control: noise background" in text  # every cell's controls beside it
    assert "n = 4" in text and "n = 6" in text
    assert "Per-class Dice of the chosen cells" in text and "| arm | organ | vessel | nerve | lesion |" in text
    for figure in ("efficacy_curve.png", "efficacy_budget.png", "efficacy_augpaint_contact_sheet.png"):
        assert f"({figure})" in text and (tmp_path / figure).is_file()

    models = sorted((out / "test" / "n6" / "augpaint").glob("models_*"))
    assert len(models) == 1  # the two cells differ only in generation knobs: one generator serves both
    model = models[0] / "model.pt"
    modified = model.stat().st_mtime
    study(str(plan_path), out=str(out), report=str(report))  # resumes: nothing is trained again
    assert model.stat().st_mtime == modified
    assert report.read_text().count("## Results") == 1  # the results are replaced, not appended
    plan["selection"]["fraction"] = 0.5  # another selection split under the same folder would mix two studies
    plan_path.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="another selection split"):
        study(str(plan_path), out=str(out), report=str(report))
