"""The command lines end to end on a tiny phantom set: augment writes each method's pairs, one evaluation judges both
methods with their controls and GAUDA's schemes, a second call reuses every finished run, leaks are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import load_splits, phantom_dataset
from common.evaluation import LeakageError
from common.files import write_json
from scripts.augment import augment
from scripts.cli import run_command_line
from scripts.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
TINY_AUGPAINT = {"autoencoder_iterations": 4, "diffusion_iterations": 4, "val_interval": 2}
TINY_SEGMENTER = {"max_iterations": 4, "val_interval": 2, "num_workers": 0}
TINY_GAUDA = {
    "autoencoder_iterations": 3,
    "autoencoder_batch_size": 4,
    "adversarial_warmup_iterations": 1,
    "diffusion_iterations": 4,
    "diffusion_batch_size": 8,
}
TINY_ARMS = {"channels": [4, 8, 16, 32], "num_workers": 0, "batch_size": 4}
TINY_SCHEMES = {
    "ensemble_size": 2,
    "generator_steps": 2,
    "gauda_num_synthetic": 2,
    "gauda_synthesis_batch_size": 2,
    "gauda_replace_prob": 1.0,
}


@pytest.mark.engine
@pytest.mark.slow
def test_augment_both_methods_then_one_evaluation_of_both(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=30)
    run = dict(data=data, labelled=6, seed=0, out=str(tmp_path / "augpaint"), train_knobs=TINY_AUGPAINT)
    generation = dict(segmenter_knobs=TINY_SEGMENTER, num_samples=2, num_inference_steps=3, progress=False)
    augpaint = augment("augpaint", **run, **generation)
    with open(augpaint) as f:
        datalist = json.load(f)
    assert datalist["method"] == "augpaint" and datalist["config"]["eta"] == 1.0
    assert len(datalist["training"]) == 6 and datalist["dropped"] == 6  # 6 labelled x 2 samples, top half kept
    for entry in datalist["training"]:
        assert entry["status"] == "kept" and entry["score"] is not None
        made = np.array(Image.open(os.path.join(os.path.dirname(augpaint), entry["label"])))
        np.testing.assert_array_equal(made, np.array(Image.open(entry["source_label"])))  # the mask is kept
    modified = os.path.getmtime(os.path.join(run["out"], "models", "model.pt"))
    assert augment("augpaint", **run, **generation) == augpaint  # a second call reuses every stage and pair
    assert os.path.getmtime(os.path.join(run["out"], "models", "model.pt")) == modified

    gauda_out = tmp_path / "gauda"
    gauda = augment(
        "gauda", data=data, labelled=6, out=str(gauda_out), train_knobs=TINY_GAUDA, num_samples=1, num_inference_steps=2
    )
    with open(gauda) as f:
        assert all(e["condition"] and e["source_label"] is None for e in json.load(f)["training"])

    options = dict(
        data=data,
        labelled=6,
        synthetic=[augpaint, gauda],
        schemes="gauda",
        generator=str(gauda_out / "models"),
        seeds=2,
        iterations=4,
        val_interval=2,
        knobs=TINY_ARMS,
        scheme_knobs=TINY_SCHEMES,
        sweep={"guidance": [0, 3]},
        sweep_samples=1,
        generator_knobs={"num_inference_steps": 2},
        out=str(tmp_path / "ev"),
    )
    results = evaluate(**options)
    arms = results["arms"]
    assert results["training_pairs"] == 6  # every arm but the schemes trains on all labelled pairs
    assert results["scheme_training_pairs"] == 5 and results["validation_pairs"] == 1  # the schemes carve one out
    assert list(arms)[:2] == ["real", "real + classic aug"]
    assert "real + classic aug + augpaint (augpaint) control: noise background" in arms
    assert "real + classic aug + gauda (gauda) control: extra real copies" in arms
    assert {"gauda: baseline", "gauda: aug", "gauda: as", "gauda: gauda"} <= set(arms) and len(arms) == 15
    for name, arm in arms.items():
        assert len(arm["dice"]["per_seed_class_mean"]) == 2
        assert all(0.0 <= d <= 1.0 for d in arm["dice"]["per_seed_class_mean"])
        references = {d["reference"] for d in arm["differences"].values()}
        assert references == (
            {"gauda: baseline", "gauda: aug"} - {name}
            if name.startswith("gauda:")
            else {"real", "real + classic aug"} - {name}
        )
    quality = results["generator_quality"]
    assert quality["augpaint (augpaint)"]["diversity"] <= 1.0 and "condition_agreement" in quality["gauda (gauda)"]
    assert set(results["sweep"]["sets"]) == {"guidance = 0", "guidance = 3"}
    table = (tmp_path / "ev" / "results.md").read_text()
    assert "| real + classic aug + augpaint (augpaint) |" in table and "| gauda: gauda |" in table
    assert (tmp_path / "ev" / "dice_per_class.png").stat().st_size > 1000

    records = sorted((tmp_path / "ev" / "runs").glob("*/seed*/run.json"))
    assert len(records) == 30
    written = {path: path.stat().st_mtime for path in records}
    assert evaluate(**options)["arms"] == arms  # the second call trains nothing
    assert all(path.stat().st_mtime == mtime for path, mtime in written.items())


def test_a_synthetic_set_made_from_a_test_mask_is_refused_before_training(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=30)
    test_mask = load_splits(data, seed=0, num_labelled=4)["test"][0]["label"]
    leaked = tmp_path / "leaked" / "datalist.json"
    leaked.parent.mkdir()
    entry = {"image": "images/a.png", "label": "masks/a.png", "source_image": None, "source_label": test_mask}
    leaked.write_text(json.dumps({"method": "augpaint", "training": [entry]}))
    with pytest.raises(LeakageError, match="not in the labelled subset"):
        evaluate(data=data, labelled=4, synthetic=[str(leaked)], seeds=1, iterations=2, out=str(tmp_path / "ev"))
    assert not (tmp_path / "ev" / "runs").exists()


@pytest.mark.engine
def test_cross_domain_evaluation_trains_on_one_domain_and_scores_on_the_other(tmp_path):
    source = phantom_dataset(root=str(tmp_path / "data"), num_images=20)
    shifted = phantom_dataset(root=str(tmp_path / "data"), num_images=20, domain="shifted")
    options = dict(labelled=4, seeds=1, iterations=2, knobs=TINY_ARMS, synthetic_only=False)
    results = evaluate(data=source, test_data=shifted, out=str(tmp_path / "cross"), **options)
    assert results["test_data"] == shifted and results["data"] == source
    (record,) = (tmp_path / "cross" / "runs").glob("real/seed0/run.json")
    scores = json.loads(record.read_text())["scores"]["dice"]
    assert len(scores) == len(load_splits(shifted)["test"])  # one row per test image of the other domain
    with pytest.raises(ValueError, match="other classes"):
        other = tmp_path / "other"
        other.mkdir()
        (other / "images").symlink_to(os.path.join(source, "images"))
        (other / "masks").symlink_to(os.path.join(source, "masks"))
        (other / "classes.json").write_text(json.dumps({"0": "background", "1": "something"}))
        evaluate(data=source, test_data=str(other), out=str(tmp_path / "bad"), **options)


@pytest.mark.engine
def test_evaluate_runs_from_the_command_line(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=20)
    command = [sys.executable, "-m", "scripts.evaluate", "--data", data, "--labelled", "4", "--seeds", "1"]
    command += ["--iterations", "2", "--knobs", json.dumps(TINY_ARMS), "--out", str(tmp_path / "ev")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| real + classic aug |" in result.stdout and (tmp_path / "ev" / "dice_per_class.png").is_file()


def test_help_shows_help_and_runs_nothing(capsys):
    called = []

    def job(method: str, **knobs) -> None:
        """Run ``method``.

        Args:
            method: the method to run.
        """
        called.append((method, knobs))

    for argv in (["--help"], ["augpaint", "--help"], ["augpaint", "--num_samples", "2", "-h"]):
        with pytest.raises(SystemExit) as stop:
            run_command_line(job, argv)
        assert stop.value.code == 0 and not called
        shown = capsys.readouterr()
        assert "the method to run" in shown.out + shown.err
    run_command_line(job, ["augpaint", "--num_samples", "2"])
    assert called == [("augpaint", {"num_samples": 2})]


@pytest.mark.parametrize("script", ["augment", "evaluate", "benchmark", "export_bundle"])
def test_every_script_answers_help_from_the_command_line(script, tmp_path):
    command = [sys.executable, "-m", f"scripts.{script}", "--help"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PAGER": "cat"}
    result = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = result.stdout + result.stderr
    assert "SYNOPSIS" in shown and not os.listdir(tmp_path)  # help, and nothing written
    if script == "augment":
        assert "one of: augpaint, diffuseexpand, gauda" in shown  # the methods, found from the bundles


@pytest.mark.engine
def test_training_runs_in_parallel_workers_score_as_one_after_another(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=20)
    options = dict(data=data, labelled=4, seeds=2, iterations=4, knobs=TINY_ARMS, synthetic_only=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two workers below
    try:
        one_after_another = evaluate(out=str(tmp_path / "serial"), **options)
    finally:
        torch.set_num_threads(threads)
    parallel = evaluate(out=str(tmp_path / "parallel"), workers=2, **options)
    events = (tmp_path / "parallel" / "runs").glob("*/seed*/logs/events.out.tfevents.*")
    trained_by = {int(path.name.split(".")[-2]) for path in events}  # TensorBoard names a file after its process
    assert len(trained_by) == 2 and os.getpid() not in trained_by  # two worker processes trained the four runs
    for run in (tmp_path / "parallel" / "runs").glob("*/seed*/run.json"):
        serial = tmp_path / "serial" / run.relative_to(tmp_path / "parallel")
        assert json.loads(run.read_text())["scores"] == json.loads(serial.read_text())["scores"]
    assert len(list((tmp_path / "parallel" / "runs").glob("*/seed*/run.json"))) == 4  # 2 arms x 2 seeds
    assert parallel["arms"] == one_after_another["arms"]


def test_a_generation_switch_that_chooses_the_models_reaches_the_training_run_too(tmp_path, monkeypatch):
    calls = []

    def fake_workflow(config_file, workflow_type="train", **overrides):
        calls.append((workflow_type, overrides))
        if workflow_type == "infer":
            write_json(os.path.join(overrides["output_dir"], "datalist.json"), {"training": []})

    monkeypatch.setattr("scripts.augment.run_workflow", fake_workflow)
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=12)
    augment("augpaint", data=data, out=str(tmp_path / "conditional"), conditional=True, num_samples=2)
    (_, train), (_, infer) = calls
    assert train["conditional"] is True and infer["conditional"] is True  # trains the model it samples from
    assert "num_samples" not in train and infer["num_samples"] == 2  # other knobs stay with the generation
    calls.clear()
    augment("gauda", data=data, out=str(tmp_path / "gauda"), num_samples=2)
    assert "conditional" not in calls[0][1]  # nothing is passed to a bundle that has no such switch
