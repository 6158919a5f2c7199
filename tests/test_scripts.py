"""The two command lines end to end on a tiny phantom set: augment writes filtered pairs, evaluate judges them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from common.data import load_splits, phantom_dataset
from common.evaluation import LeakageError
from scripts.augment import augment
from scripts.evaluate import evaluate

TINY_TRAINING = {"autoencoder_iterations": 4, "diffusion_iterations": 4, "val_interval": 2}
TINY_SEGMENTER = {"max_iterations": 4, "val_interval": 2}


@pytest.mark.slow
def test_augment_then_evaluate(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=30)
    run = dict(data=data, labelled=4, seed=0, out=str(tmp_path / "augpaint"), train_knobs=TINY_TRAINING)
    generation = dict(segmenter_knobs=TINY_SEGMENTER, num_samples=2, num_inference_steps=3, progress=False)
    datalist_path = augment("augpaint", **run, **generation)

    with open(datalist_path) as f:
        datalist = json.load(f)
    root = os.path.dirname(datalist_path)
    assert datalist["method"] == "augpaint"
    assert len(datalist["training"]) == 4 and datalist["dropped"] == 4  # 4 labelled x 2 samples, top half kept
    for entry in datalist["training"]:
        assert entry["status"] == "kept" and entry["score"] is not None
        made = np.array(Image.open(os.path.join(root, entry["label"])))
        source = np.array(Image.open(entry["source_label"]))
        np.testing.assert_array_equal(made, source)  # AugPaint keeps the input mask

    # a second call reuses every stage and every written pair
    modified = os.path.getmtime(os.path.join(run["out"], "models", "model.pt"))
    assert augment("augpaint", **run, **generation) == datalist_path
    assert os.path.getmtime(os.path.join(run["out"], "models", "model.pt")) == modified

    results = evaluate(
        data=data, labelled=4, synthetic=[datalist_path], seeds=2, iterations=4, out=str(tmp_path / "ev")
    )
    arms = results["arms"]
    assert len(arms) == 6  # real, classic aug, synthetic, two controls, synthetic only
    assert {"real", "real + classic aug"} <= set(arms) and results["reference"] == "real"
    assert sum("control" in name for name in arms) == 2 and sum("synthetic only" in name for name in arms) == 1
    for name, arm in arms.items():
        for metric in ("dice", "iou"):
            assert len(arm[metric]["per_seed_class_mean"]) == 2
            assert all(0.0 <= d <= 1.0 for d in arm[metric]["per_seed_class_mean"])
        assert ("difference_to_reference" in arm) == (name != "real")
    (quality,) = results["generator_quality"].values()
    assert quality["fid"] >= 0.0 and 0.0 <= quality["real_only_dice"]["class_mean"]["mean"] <= 1.0
    assert quality["synthetic_only_dice"] == next(a["dice"] for n, a in arms.items() if "synthetic only" in n)
    with open(tmp_path / "ev" / "results.md") as f:
        table = f.read()
    assert all(f"| {name} |" in table for name in arms)

    test_mask = load_splits(data, seed=0, num_labelled=4)["test"][0]["label"]
    datalist["training"][0]["source_label"] = test_mask
    leaked = tmp_path / "leaked" / "datalist.json"
    leaked.parent.mkdir()
    leaked.write_text(json.dumps(datalist))
    with pytest.raises(LeakageError, match="not in the labelled subset"):
        evaluate(data=data, labelled=4, synthetic=[str(leaked)], seeds=1, iterations=2, out=str(tmp_path / "ev2"))


TINY_GAUDA = {
    "autoencoder_iterations": 3,
    "autoencoder_batch_size": 4,
    "adversarial_warmup_iterations": 1,
    "diffusion_iterations": 4,
    "diffusion_batch_size": 8,
}
TINY_DOWNSTREAM = {
    "ensemble_size": 2,
    "channels": [4, 8, 16, 32],
    "num_workers": 0,
    "batch_size": 4,
    "ddim_steps": 2,
    "gauda_num_synthetic": 2,
    "gauda_synthesis_batch_size": 2,
    "gauda_replace_prob": 1.0,
}


@pytest.mark.slow
def test_augment_gauda_then_evaluate_the_four_schemes(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), num_images=30)
    out = tmp_path / "gauda"
    datalist_path = augment(
        "gauda", data=data, labelled=8, out=str(out), train_knobs=TINY_GAUDA, num_samples=2, num_inference_steps=2
    )
    with open(datalist_path) as f:
        datalist = json.load(f)
    assert datalist["method"] == "gauda" and datalist["training"]
    assert all(entry["condition"] and entry["source_label"] is None for entry in datalist["training"])

    results = evaluate(
        data=data,
        labelled=8,
        schemes="all",
        generator=str(out / "models"),
        synthetic=[datalist_path],
        seeds=2,
        iterations=4,
        val_interval=2,
        downstream_knobs=TINY_DOWNSTREAM,
        guidance_sweep=[0, 3],
        sweep_samples=1,
        generator_knobs={"num_inference_steps": 2},
        out=str(tmp_path / "ev"),
    )
    arms = results["arms"]
    assert list(arms)[:4] == ["baseline", "aug", "as", "gauda"] and results["reference"] == "baseline"
    assert len(arms) == 5 and "synthetic only" in list(arms)[4]
    for name, arm in arms.items():
        summary = arm["iou"]
        assert len(summary["per_seed_class_mean"]) == 2 and 0.0 <= summary["class_mean"]["mean"] <= 1.0
        assert summary["sample_median"]["mean"] is not None and set(summary["per_class"]) == {
            "organ",
            "vessel",
            "nerve",
            "lesion",
        }
        assert ("difference_to_reference" in arm) == (name != "baseline")
    records = [json.loads((tmp_path / "ev" / "runs" / f"arm03_seed{s}" / "scores.json").read_text()) for s in (0, 1)]
    assert all(r["run"]["overrides"]["generator_ckpt_dir"] == str(out / "models") for r in records)
    assert all(len(r["scores"]["dice"]) == len(load_splits(data)["test"]) for r in records)  # one row per test image

    (quality,) = results["generator_quality"].values()
    assert 0.0 <= quality["condition_agreement"]["exact"] <= 1.0 and quality["num_synthetic"] == len(
        datalist["training"]
    )
    sweep = results["guidance_sweep"]
    assert set(sweep) == {"0", "3"}
    for w in (0, 3):
        swept = json.loads((tmp_path / "ev" / "guidance" / f"w{w}" / "datalist.json").read_text())
        assert swept["config"]["guidance"] == w and len(swept["training"]) == len(datalist["training"]) // 2
    with open(tmp_path / "ev" / "results.md") as f:
        table = f.read()
    assert "| gauda |" in table and "\nIoU\n" in table and "Guidance sweep" in table
