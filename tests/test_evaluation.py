"""The evaluation protocol's guards: no leakage, honest controls, a feature space that needs no download."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from PIL import Image

from common.controls import make_control_set, paste_on_background
from common.data import load_splits, pair_transforms, phantom_dataset
from common.evaluation import (
    LeakageError,
    check_provenance,
    class_condition_agreement,
    load_synthetic_pairs,
    unet_bottleneck_features,
)
from common.io import SyntheticDatasetWriter
from common.regions import keep_mask
from scripts.evaluate import build_scheme_arms, scheme_config_files, score_summary


def _datalist(tmp_path, entries):
    path = tmp_path / "synthetic" / "datalist.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"method": "augpaint", "training": entries, "dropped": 0}))
    return str(path)


def _entry(name, source_image, source_label):
    return {
        "image": f"images/{name}.png",
        "label": f"masks/{name}.png",
        "seed": 0,
        "source_image": source_image,
        "source_label": source_label,
        "condition": None,
        "score": None,
        "status": "kept",
    }


def test_provenance_inside_the_labelled_subset_is_accepted(tmp_path):
    labelled = [{"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}]
    test = [{"image": str(tmp_path / "t.png"), "label": str(tmp_path / "t_mask.png")}]
    path = _datalist(tmp_path, [_entry("s0", labelled[0]["image"], labelled[0]["label"]), _entry("s1", None, None)])
    check_provenance(path, labelled, test)


def test_leakage_names_every_offending_pair(tmp_path):
    labelled = [{"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}]
    test = [{"image": str(tmp_path / "t.png"), "label": str(tmp_path / "t_mask.png")}]
    unlabelled_mask = str(tmp_path / "b_mask.png")
    path = _datalist(
        tmp_path,
        [
            _entry("ok", labelled[0]["image"], labelled[0]["label"]),
            _entry("outside", str(tmp_path / "b.png"), unlabelled_mask),
            _entry("test", test[0]["image"], labelled[0]["label"]),
        ],
    )
    with pytest.raises(LeakageError) as error:
        check_provenance(path, labelled, test)
    message = str(error.value)
    assert "2 synthetic pair(s)" in message
    assert "outside.png" in message and unlabelled_mask in message
    assert "test.png" in message and "test split" in message
    assert "ok.png" not in message


def test_control_keeps_the_region_and_replaces_the_rest():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 16, 16)
    keep = torch.zeros(1, 16, 16)
    keep[:, 4:9, 3:12] = 1.0
    other = torch.rand(1, 16, 16)
    pasted = paste_on_background(image, keep, "real", other, generator)
    assert torch.equal(pasted[keep > 0], image[keep > 0])
    assert torch.equal(pasted[keep == 0], other[keep == 0])
    noisy = paste_on_background(image, keep, "noise", None, generator)
    assert torch.equal(noisy[keep > 0], image[keep > 0])
    assert not torch.allclose(noisy[keep == 0], image[keep == 0])
    assert noisy.min() >= 0 and noisy.max() <= 1
    with pytest.raises(ValueError, match="unknown control background"):
        paste_on_background(image, keep, "cartoon", None, generator)


def test_bottleneck_features_are_the_deepest_unet_layer():
    network = UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    images = torch.rand(5, 1, 32, 32)
    features = unet_bottleneck_features(network, images)
    assert features.shape == (5, 16)
    assert not torch.allclose(features[0], features[1])


def test_control_set_keeps_source_regions_and_masks(tmp_path):
    dataset = phantom_dataset(root=str(tmp_path / "data"), num_images=12)
    pairs = load_splits(dataset, seed=0, num_labelled=4)["train"]
    load = pair_transforms(64, augment=False)
    writer = SyntheticDatasetWriter(str(tmp_path / "synthetic"), "augpaint", {"mask_mode": "box", "latent_factor": 4})
    for index, pair in enumerate(pairs):
        item = load(dict(pair))
        writer.write_pair(
            torch.rand(1, 64, 64),
            item["label"],
            seed=index,
            source_image=pair["image"],
            source_label=pair["label"],
            name=f"s{index}",
        )
    writer.write_pair(torch.rand(1, 64, 64), torch.zeros(1, 64, 64), seed=9, name="from_noise")
    synthetic = writer.finalize()

    control = make_control_set(synthetic, str(tmp_path / "control"), "real", pairs, seed=0)
    entries = load_synthetic_pairs(control)
    assert len(entries) == len(pairs)  # one control per synthetic pair with a source; none for "from_noise"
    for entry in entries:
        source = load({"image": entry["source_image"], "label": entry["source_label"]})
        made = load({"image": entry["image"], "label": entry["label"]})
        assert torch.equal(made["label"], source["label"])
        keep = keep_mask(source["label"][None], mode="box")[0] > 0
        assert keep.any()
        assert torch.allclose(made["image"][keep], source["image"][keep], atol=1 / 255)
        assert not torch.allclose(made["image"][~keep], source["image"][~keep], atol=1 / 255)


def test_class_condition_agreement_counts_exact_sets_and_recall_per_class(tmp_path):
    masks = {"a": [[0, 1], [2, 0]], "b": [[0, 1], [1, 0]], "c": [[0, 0], [0, 0]]}
    for name, mask in masks.items():
        Image.fromarray(np.array(mask, dtype=np.uint8)).save(tmp_path / f"{name}.png")
    pairs = [
        {"label": str(tmp_path / "a.png"), "condition": [1, 2]},  # exact
        {"label": str(tmp_path / "b.png"), "condition": [1, 2]},  # class 2 missing
        {"label": str(tmp_path / "c.png"), "condition": [1]},  # class 1 missing
        {"label": str(tmp_path / "a.png"), "condition": None},  # not conditional: ignored
    ]
    agreement = class_condition_agreement(pairs, num_classes=4)
    assert agreement["num_pairs"] == 3 and agreement["exact"] == pytest.approx(1 / 3)
    recall = agreement["recall"]
    assert recall[1] == pytest.approx(2 / 3) and recall[2] == pytest.approx(1 / 2) and np.isnan(recall[3])
    with pytest.raises(ValueError, match="condition"):
        class_condition_agreement(pairs[3:], num_classes=4)


def test_score_summary_reduces_images_then_classes_then_seeds():
    nan = float("nan")
    seed0 = np.array([[0.9, 0.2, 0.4], [0.8, 0.6, nan], [0.7, 0.1, 0.3]])  # (images, classes), background first
    seed1 = np.array([[0.9, 0.4, 0.6], [0.8, 0.8, 0.2], [0.7, nan, nan]])
    summary = score_summary([seed0, seed1], ["background", "nerve", "vessel"])
    # seed 0: class means nerve 0.3, vessel 0.35 -> 0.325; per-image foreground 0.3, 0.6, 0.2 -> mean 0.3667, median 0.3
    # seed 1: nerve 0.6, vessel 0.4 -> 0.5; per-image 0.5, 0.5, NaN -> mean 0.5, median 0.5
    assert summary["per_seed_class_mean"] == pytest.approx([0.325, 0.5])
    assert summary["per_class"]["nerve"]["mean"] == pytest.approx(0.45)
    assert summary["class_mean"]["mean"] == pytest.approx(0.4125)
    assert summary["sample_mean"]["mean"] == pytest.approx((1.1 / 3 + 0.5) / 2)
    assert summary["sample_median"]["mean"] == pytest.approx(0.4)
    assert summary["class_mean"]["std"] == pytest.approx(np.std([0.325, 0.5], ddof=1))


def test_schemes_layer_the_gauda_downstream_configs_and_unknown_ones_are_refused():
    assert [Path(f).name for f in scheme_config_files("baseline")] == ["train_downstream_baseline.json"]
    assert [Path(f).name for f in scheme_config_files("as")] == [
        "train_downstream_baseline.json",
        "train_downstream_as.json",
    ]
    with pytest.raises(ValueError, match="unknown scheme"):
        scheme_config_files("mixup")
    with pytest.raises(ValueError, match="needs --generator"):
        build_scheme_arms(["baseline", "gauda"], [{}], [{}], generator=None, knobs={})
    with pytest.raises(ValueError, match="validation pairs"):
        build_scheme_arms(["baseline"], [{}], [], generator=None, knobs={})
