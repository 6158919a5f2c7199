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
    assert len(arms) == 5  # real, classic aug, synthetic, two controls
    assert {"real", "real + classic aug"} <= set(arms)
    assert sum("control" in name for name in arms) == 2
    for name, arm in arms.items():
        assert len(arm["per_seed_mean_foreground_dice"]) == 2
        assert all(0.0 <= d <= 1.0 for d in arm["per_seed_mean_foreground_dice"])
        assert ("difference_to_real" in arm) == (name != "real")
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
