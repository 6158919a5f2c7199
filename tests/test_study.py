"""The efficacy study end to end on a tiny phantom plan: selection never lets a generator or an arm see the
selection-validation pairs, the chosen cell is the one with the best validation gain, the test stage scores every cell,
the report shows every cell, and a second call reuses everything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.data import load_splits, phantom_dataset
from common.evaluation.arms import CLASSIC, REAL
from common.files import read_json, write_json
from common.stages import profile_files
from scripts.study import COMPARISON_ARMS, cell_settings, chosen_arms, make_set, read_plan, study, write_profiles
from scripts.study_report import budget_trend, headline_section

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
    cells = [{"name": "no_filter", "knobs": {"filter": False}}, {"name": "tau", "masks_from": "no_filter"}]
    made = make_set({"methods": {"diffuseexpand": cells}}, "d", 10, str(tmp_path), "diffuseexpand", cells[1])
    assert "label_maps" not in calls[0] and calls[1]["label_maps"] == str(
        tmp_path / "diffuseexpand/no_filter/synthetic/masks"
    )  # the source cell is made (or reused) first
    assert made == str(tmp_path / "diffuseexpand/tau/synthetic/datalist.json")
    with pytest.raises(ValueError, match="listed first"):
        make_set({"methods": {"diffuseexpand": cells[::-1]}}, "d", 10, str(tmp_path), "diffuseexpand", cells[1])


def test_a_recorded_cell_is_reused_only_while_its_settings_hold(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=12)
    plan = {"data": data, "image_size": 32}
    part = {"seeds": 2, "iterations": 4}
    cell = {"name": "quick", "knobs": {"num_samples": 5}}
    settings = cell_settings(plan, part, data, 6, cell, COMPARISON_ARMS)
    assert settings == cell_settings(plan, part, data, 6, cell, COMPARISON_ARMS)
    changed = [
        cell_settings(plan, part, data, 8, cell, COMPARISON_ARMS),  # other training pairs
        cell_settings(plan, {**part, "seeds": 3}, data, 6, cell, COMPARISON_ARMS),
        cell_settings(plan, part, data, 6, {**cell, "knobs": {"num_samples": 20}}, COMPARISON_ARMS),
        cell_settings(plan, part, data, 6, cell, chosen_arms(part)),
        cell_settings({**plan, "image_size": 64}, part, data, 6, cell, COMPARISON_ARMS),
    ]
    assert all(other != settings for other in changed)
    other = phantom_dataset(root=str(tmp_path / "other"), num_images=12)  # the same pairs in another folder
    assert cell_settings(plan, part, other, 6, cell, COMPARISON_ARMS) == settings  # a record moves between machines
    label = Path(load_splits(other)["train"][0]["label"])
    label.write_bytes(label.read_bytes() + b"\0")  # the same paths, other contents
    assert cell_settings(plan, part, other, None, cell, COMPARISON_ARMS) != cell_settings(
        plan, part, data, None, cell, COMPARISON_ARMS
    )


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
    record = tmp_path / "efficacy" / "plan"  # the default: beside the report
    plan_path.write_text(json.dumps(plan))
    study(str(plan_path), out=str(out), report=str(report))

    held_out = {os.path.realpath(p["label"]) for p in load_splits(data, 0, num_labelled=6, val_fraction=0.34)["val"]}
    assert len(held_out) == 2
    for cell in ("quick", "shape"):
        synthetic = read_json(str(out / "selection" / "augpaint" / cell / "synthetic" / "datalist.json"))
        seen = {os.path.realpath(p) for p in synthetic["config"]["generator_labels"]}
        sources = {os.path.realpath(e["source_label"]) for e in synthetic["training"]}
        assert len(seen) == 4 and not (seen | sources) & held_out  # learnt from the 4 selection-training pairs only
        selection_results = read_json(str(record / "selection" / "augpaint" / f"{cell}.json"))["results"]
        assert selection_results["training_pairs"] == 4  # the arms train on the selection-training pairs
        assert set(selection_results["arms"]) == {REAL, CLASSIC, f"{CLASSIC} + augpaint ({cell})"}
        assert Path(selection_results["test_data"]).name == "datalist.json"  # and are scored on the held-out two
    selection = read_json(str(record / "selection.json"))
    gains = {cell: selection["gains"][f"augpaint/{cell}"]["mean"] for cell in ("quick", "shape")}
    chosen = selection["chosen"]["augpaint"]
    assert chosen == max(gains, key=lambda c: (gains[c], c == "quick"))
    other = "shape" if chosen == "quick" else "quick"

    grid = {cell: read_json(str(record / "test" / "n6" / "augpaint" / f"{cell}.json"))["results"] for cell in gains}
    assert grid[chosen]["training_pairs"] == 6
    controls = {f"{REAL} + augpaint ({chosen})", f"{CLASSIC} + augpaint ({chosen}) control: noise background"}
    assert controls <= set(grid[chosen]["arms"])  # the chosen cell: every arm and its controls
    assert set(grid[other]["arms"]) == {REAL, CLASSIC, f"{CLASSIC} + augpaint ({other})"}
    curve = read_json(str(record / "test" / "n4" / "augpaint" / f"{chosen}.json"))["results"]
    assert curve["training_pairs"] == 4 and f"real + classic aug + augpaint ({chosen})" in curve["arms"]
    assert not (record / "test" / "n4" / "augpaint" / f"{other}.json").exists()  # the curve is the chosen cell's
    sheets = sorted(str(path.relative_to(record)) for path in record.rglob("*.png"))
    assert sheets == [f"test/n6/augpaint/{chosen}.png"]  # the chosen cell's contact sheet, the rest stays out
    text = report.read_text()
    assert "augpaint (quick)" in text and "augpaint (shape)" in text and "Not run yet" not in text
    assert f"augpaint ({chosen}) control: noise background" in text  # the chosen cell's controls beside it
    assert f"| augpaint ({chosen}) | 4 |" in text and f"| augpaint ({chosen}) | 6 |" in text  # the curve, by count
    assert "Headline: the chosen cells on the test split" in text and f"| augpaint ({chosen}) |" in text
    assert "Per-class Dice of the chosen cells" in text and "| arm | organ | vessel | nerve | lesion |" in text
    for figure in ("efficacy_curve.png", "efficacy_budget.png", f"efficacy/plan/test/n6/augpaint/{chosen}.png"):
        assert f"({figure})" in text and (tmp_path / figure).is_file()

    models = sorted((out / "test" / "n6" / "augpaint").glob("models_*"))
    assert len(models) == 1  # the two cells differ only in generation knobs: one generator serves both
    model = models[0] / "model.pt"
    modified = model.stat().st_mtime
    study(str(plan_path), out=str(out), report=str(report))  # resumes: nothing is trained again
    assert model.stat().st_mtime == modified
    assert report.read_text().count("## Results") == 1  # the results are replaced, not appended

    moved = tmp_path / "elsewhere"  # another machine: the committed record alone, no working folder
    study(str(plan_path), out=str(moved), report=str(report))
    assert not list(moved.rglob("models_*")) and not list(moved.rglob("*.pt"))  # nothing made or trained
    assert report.read_text() == text

    plan["selection"]["fraction"] = 0.5  # another selection split under the same folder would mix two studies
    plan_path.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="another selection split"):
        study(str(plan_path), out=str(out), report=str(report))


def test_the_chosen_cells_become_standard_profiles_layered_like_paper(tmp_path):
    plan = {
        "data": "usgra",
        "methods": {
            "augpaint": [{"name": "quick"}, {"name": "x2", "train_knobs": {"diffusion_iterations": 2000}}],
            "gauda": [{"name": "quick"}, {"name": "w1", "knobs": {"guidance": 1.0}}],
        },
    }
    record = tmp_path / "record"
    gain = {"mean": 0.01, "low": -0.02, "high": 0.04}
    selection = {"chosen": {"augpaint": "x2", "gauda": "w1"}, "gains": {"augpaint/x2": gain, "gauda/w1": gain}}
    write_json(str(record / "selection.json"), selection)
    roots = {method: str(tmp_path / method) for method in plan["methods"]}
    stale = tmp_path / "augpaint" / "configs" / "standard_inference.json"
    write_json(str(stale), {"num_samples": 50})  # an earlier choice's generation knobs
    written = write_profiles(plan, str(record), roots)
    assert sorted(os.path.relpath(p, tmp_path) for p in written) == [
        "augpaint/configs/standard.json",
        "gauda/configs/standard.json",
        "gauda/configs/standard_inference.json",
    ]
    assert read_json(written[0])["diffusion_iterations"] == 2000 and not stale.exists()
    assert read_json(str(tmp_path / "gauda/configs/standard_inference.json"))["guidance"] == 1.0
    assert "'w1'" in read_json(str(tmp_path / "gauda/configs/standard.json"))["profile_sources"]["note"]
    assert profile_files(roots["gauda"], "standard", part="inference") == [
        str(tmp_path / "gauda/configs/standard_inference.json")
    ]  # scripts.augment --profile standard layers them


def test_the_budget_trend_is_a_line_in_log_budget_and_its_crossing_an_extrapolation():
    trend = budget_trend([(1, -0.02), (2, 0.0), (4, 0.02)])  # +0.02 per doubling from -0.02 at budget 1
    assert trend["at_one"] == pytest.approx(-0.02) and trend["per_doubling"] == pytest.approx(0.02)
    assert trend["reaches_target"] == pytest.approx(2.0**3.5)  # -0.02 + 0.02 * 3.5 = +0.05
    assert budget_trend([(1, 0.01), (2, 0.0), (4, -0.01)])["reaches_target"] is None  # falls: never
    assert budget_trend([(1, 0.01)]) is None and budget_trend([(2, 0.01), (2, 0.03)]) is None


def test_the_headline_compares_the_chosen_cell_with_classic_aug_and_its_strongest_control():
    def arm(per_seed, gain=None):
        summary = {"mean": sum(per_seed) / len(per_seed), "std": 0.0, "n": len(per_seed)}
        return {"dice": {"class_mean": summary, "per_seed_class_mean": per_seed}, "differences": {"classic": gain}}

    gain = {"mean": 0.06, "std": 0.01, "low": 0.05, "high": 0.07, "n": 3, "confidence": 0.95}
    results = {
        "arms": {
            CLASSIC: arm([0.30, 0.32, 0.34]),
            f"{CLASSIC} + augpaint (x)": arm([0.36, 0.38, 0.40], {"dice": gain}),
            f"{CLASSIC} + augpaint (x) control: noise background": arm([0.20, 0.20, 0.20]),
            f"{CLASSIC} + augpaint (x) control: real background": arm([0.35, 0.36, 0.38]),
        }
    }
    text = headline_section({"augpaint/x": results}, {"augpaint": "x"})
    row = next(line for line in text.splitlines() if line.startswith("| augpaint (x)"))
    assert "(real background)" in row and "+0.017" in row  # differences 0.01, 0.02, 0.02: the strongest control
    assert row.endswith("| yes |")
    results["arms"][f"{CLASSIC} + augpaint (x) control: real background"] = arm([0.37, 0.37, 0.41])
    assert headline_section({"augpaint/x": results}, {"augpaint": "x"}).splitlines()[-1].endswith("| no |")
