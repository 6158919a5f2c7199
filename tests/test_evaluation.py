"""The evaluation protocol's parts: no leakage, honest controls, arms and their references, runs reused only when
nothing changed, summaries, the per-class figure, a feature space that needs no download."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from PIL import Image

from common.bundles import find_methods, method_bundle
from common.data import load_splits, pair_transforms, phantom_dataset
from common.evaluation import LeakageError, check_provenance, load_synthetic_pairs
from common.evaluation.arms import (
    CLASSIC,
    REAL,
    real_repeats,
    scheme_arms,
    standard_arms,
    synthetic_arms,
    synthetic_set_name,
)
from common.evaluation.controls import extra_real_copies, make_control_set, paste_on_background
from common.evaluation.protocol import check_set_names, parse_schemes
from common.evaluation.quality import (
    class_condition_agreement,
    regenerated_share,
    sample_diversity,
    unet_bottleneck_features,
)
from common.evaluation.report import score_summary, summarise, to_markdown, write_class_figure
from common.evaluation.runs import files_digest, run_record
from common.io import SyntheticDatasetWriter
from common.regions import keep_mask


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
    assert "2 problem(s)" in message
    assert "outside.png" in message and unlabelled_mask in message
    assert "test.png" in message and "test split" in message
    assert "ok.png" not in message


def _set(folder, entries, generator_labels):
    folder.mkdir(parents=True, exist_ok=True)
    content = {"method": "diffuseexpand", "config": {"generator_labels": generator_labels}, "training": entries}
    (folder / "datalist.json").write_text(json.dumps({**content, "dropped": 0}))
    return str(folder / "datalist.json")


def test_images_made_for_another_set_s_masks_inherit_its_provenance(tmp_path):
    labelled = [{"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}]
    test = [{"image": str(tmp_path / "t.png"), "label": str(tmp_path / "t_mask.png")}]
    _set(tmp_path / "masks_set", [_entry("n0", None, None)], [labelled[0]["label"]])
    made = str(tmp_path / "masks_set" / "masks" / "n0.png")
    images = _set(tmp_path / "images_set", [_entry("n0_s0", None, made)], [labelled[0]["label"]])
    check_provenance(images, labelled, test)  # the masks' set was trained on the labelled subset: accepted
    _set(tmp_path / "masks_set", [_entry("n0", None, None)], [str(tmp_path / "b_mask.png")])
    with pytest.raises(LeakageError, match="(?s)come from the synthetic set .*masks_set.*b_mask.png"):
        check_provenance(images, labelled, test)  # ... and refused once that set leaks
    unlisted = str(tmp_path / "masks_set" / "masks" / "other.png")
    own = _set(tmp_path / "loop", [_entry("x", None, str(tmp_path / "loop" / "masks" / "x.png"))], [])
    for path, mask in ((_set(tmp_path / "d", [_entry("y", None, unlisted)], []), unlisted), (own, "x.png")):
        with pytest.raises(LeakageError, match=f"its mask .*{mask} is not in the labelled subset"):
            check_provenance(path, labelled, test)  # a mask no other set wrote, or the set's own


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


def test_a_synthetic_image_that_is_a_copy_of_a_test_image_is_refused(tmp_path):
    """A copied test image is a leak under any name; an empty mask equal to an empty test mask is not."""
    rng = np.random.default_rng(0)
    files = {"t.png": rng.random((8, 8)), "a.png": rng.random((8, 8))}
    for name, values in files.items():
        Image.fromarray((values * 255).astype(np.uint8)).save(tmp_path / name)
    empty = np.zeros((8, 8), np.uint8)
    for name in ("t_mask.png", "a_mask.png"):
        Image.fromarray(empty).save(tmp_path / name)
    labelled = [{"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}]
    test = [{"image": str(tmp_path / "t.png"), "label": str(tmp_path / "t_mask.png")}]
    (tmp_path / "synthetic" / "images").mkdir(parents=True)
    (tmp_path / "synthetic" / "masks").mkdir()
    for name, image in (("copy", "t.png"), ("new", "a.png")):
        shutil.copy(tmp_path / image, tmp_path / "synthetic" / "images" / f"{name}.png")
        Image.fromarray(empty).save(tmp_path / "synthetic" / "masks" / f"{name}.png")  # = the empty test mask
    path = _datalist(tmp_path, [_entry("copy", None, None), _entry("new", None, None)])
    with pytest.raises(LeakageError) as error:
        check_provenance(path, labelled, test)
    assert "1 problem(s)" in str(error.value) and "copy.png: its image is a byte-for-byte copy" in str(error.value)


def test_a_synthetic_pair_whose_own_files_are_held_out_is_refused(tmp_path):
    """No provenance at all, but the pair's own files are a test-split pair or a real mask outside the subset."""
    labelled = [{"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}]
    test = [{"image": str(tmp_path / "t.png"), "label": str(tmp_path / "t_mask.png")}]
    path = tmp_path / "synthetic" / "datalist.json"
    path.parent.mkdir()
    entries = [
        {"image": test[0]["image"], "label": test[0]["label"]},
        {"image": "images/x.png", "label": str(tmp_path / "b_mask.png")},
    ]
    path.write_text(json.dumps({"method": "augpaint", "training": entries}))
    with pytest.raises(LeakageError) as error:
        check_provenance(str(path), labelled, test, real_masks=[labelled[0]["label"], str(tmp_path / "b_mask.png")])
    assert "own files are test-split files" in str(error.value) and "outside the labelled subset" in str(error.value)


def test_methods_are_found_from_the_bundles_with_their_controls_and_schemes():
    methods = find_methods()
    assert {"augpaint", "gauda"} <= set(methods) and "segmentation" not in methods
    assert methods["augpaint"].evaluation["controls"] == ["noise_background", "real_background"]
    assert set(methods["gauda"].evaluation["schemes"]) == {"baseline", "aug", "as", "gauda"}
    assert parse_schemes("gauda") == {"gauda": ["baseline", "aug", "as", "gauda"]}
    assert parse_schemes("gauda:baseline,gauda:gauda") == {"gauda": ["baseline", "gauda"]}
    with pytest.raises(ValueError, match="unknown method 'mixup'"):
        method_bundle("mixup")
    with pytest.raises(ValueError, match="declares no schemes"):
        parse_schemes("augpaint")


def _synthetic_set(tmp_path, pairs, method="augpaint", config=None) -> str:
    load = pair_transforms(64, augment=False)
    writer = SyntheticDatasetWriter(str(tmp_path / "run" / "synthetic"), method, config or {"mask_mode": "box"})
    for index, pair in enumerate(pairs):
        item = load(dict(pair))
        source = {"source_image": pair["image"], "source_label": pair["label"]} if method == "augpaint" else {}
        writer.write_pair(torch.rand(1, 64, 64), item["label"], seed=index, name=f"s{index}", **source)
    return writer.finalize()


def test_arms_of_a_synthetic_set_add_it_with_and_without_classic_aug_and_its_controls(tmp_path):
    dataset = phantom_dataset(root=str(tmp_path / "data"), num_images=12)
    train = load_splits(dataset, seed=0, num_labelled=4)["train"]
    real = standard_arms(train)
    assert [(a.name, a.classic, len(a.train)) for a in real] == [(REAL, False, 4), (CLASSIC, True, 4)]
    augpaint = synthetic_arms(_synthetic_set(tmp_path, train), method_bundle("augpaint"), train, str(tmp_path), 64, 0)
    names = [arm.name for arm in augpaint]
    assert names == [
        "real + augpaint (run)",
        "real + classic aug + augpaint (run)",
        "real + classic aug + augpaint (run) control: noise background",
        "real + classic aug + augpaint (run) control: real background",
    ]
    assert [len(arm.train) for arm in augpaint] == [8, 8, 8, 8] and [a.classic for a in augpaint] == [0, 1, 1, 1]
    assert all(arm.references == {"real": REAL, "classic": CLASSIC} for arm in augpaint)
    gauda = synthetic_arms(
        _synthetic_set(tmp_path / "g", train[:3], "gauda"),
        method_bundle("gauda"),
        train,
        str(tmp_path),
        64,
        0,
        True,
        True,
    )
    control = gauda[2]
    assert control.name.endswith("control: extra real copies") and control.classic
    real_images = {p["image"] for p in train}
    assert len(control.train) == 4 + 3 and all(p["image"] in real_images for p in control.train)
    assert gauda[-1].name == "synthetic only: gauda (run)" and len(gauda[-1].train) == 3


def test_a_synthetic_share_repeats_the_real_pairs_in_every_arm_and_control(tmp_path):
    assert [real_repeats(10, n, 0.5) for n in (500, 20, 5)] == [50, 2, 1]  # at least once
    assert real_repeats(10, 500, 0.25) == 150 and real_repeats(10, 500, None) == 1
    with pytest.raises(ValueError, match="synthetic_share"):
        real_repeats(10, 500, 1.0)
    dataset = phantom_dataset(root=str(tmp_path / "data"), num_images=12)
    train = load_splits(dataset, seed=0, num_labelled=4)["train"]
    synthetic = _synthetic_set(tmp_path, train * 3)  # 12 pairs beside 4 real: 3 real copies make a half
    arms = synthetic_arms(synthetic, method_bundle("augpaint"), train, str(tmp_path), 64, 0, synthetic_share=0.5)
    real_images = {p["image"] for p in train}
    for arm in arms:
        real_entries = [p for p in arm.train if p["image"] in real_images]
        assert len(real_entries) == 12 and len(arm.train) == 24, arm.name  # controls alike
        assert all(real_entries.count(p) == 3 for p in real_entries)


def test_sets_side_by_side_keep_their_own_names_and_sets_with_one_name_are_refused(tmp_path):
    run = _synthetic_set(tmp_path / "a", [], "gauda")  # scripts.augment's layout: <run>/synthetic
    side_by_side = []
    for name in ("tau_1", "tau_0.5"):
        writer = SyntheticDatasetWriter(str(tmp_path / "sets" / name), "diffuseexpand", {"k": 1})
        side_by_side.append(writer.finalize())
    assert synthetic_set_name(run) == "gauda (run)"
    assert [synthetic_set_name(d) for d in side_by_side] == ["diffuseexpand (tau_1)", "diffuseexpand (tau_0.5)"]
    check_set_names([run, *side_by_side])
    again = _synthetic_set(tmp_path / "b", [], "gauda")  # another run folder named "run"
    with pytest.raises(ValueError, match=r"share an arm name .*gauda \(run\)"):
        check_set_names([run, *side_by_side, again])


def test_extra_real_copies_cycle_through_the_real_pairs(tmp_path):
    train = [{"image": f"i{k}", "label": f"m{k}"} for k in range(3)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"training": [{"image": f"s{k}", "label": f"l{k}"} for k in range(7)]}))
    copies = extra_real_copies(str(path), str(tmp_path), train, 64, seed=0)
    assert len(copies) == 7 and {c["image"] for c in copies} == {"i0", "i1", "i2"}
    assert copies[:3] == copies[3:6] and copies == extra_real_copies(str(path), str(tmp_path), train, 64, seed=0)


def test_scheme_arms_use_the_method_configs_validation_and_reference_schemes(tmp_path):
    train, val = [{"image": "a", "label": "b"}], [{"image": "c", "label": "d"}]
    gauda = method_bundle("gauda")
    arms = scheme_arms(gauda, ["baseline", "gauda"], train, val, str(tmp_path), {"ensemble_size": 2})
    assert [Path(f).name for f in arms[1].config_files] == ["train_downstream.json", "train_downstream_gauda.json"]
    assert arms[1].overrides["generator_ckpt_dir"] == str(tmp_path) and arms[1].overrides["ensemble_size"] == 2
    assert arms[0].validation == val and arms[0].references == {"real": "gauda: baseline", "classic": "gauda: aug"}
    with pytest.raises(ValueError, match="needs --generator"):
        scheme_arms(gauda, ["gauda"], train, val, None, {})
    with pytest.raises(ValueError, match="validation pairs"):
        scheme_arms(gauda, ["baseline"], train, [], None, {})
    with pytest.raises(ValueError, match="no scheme"):
        scheme_arms(gauda, ["mixup"], train, val, None, {})


def test_a_run_record_changes_with_anything_that_shapes_the_scores(tmp_path):
    """The data set, split, labelled subset and synthetic files are identified by the contents of their files."""
    dataset = phantom_dataset(root=str(tmp_path / "data"), num_images=12)
    other = phantom_dataset(root=str(tmp_path / "data"), num_images=12, seed=1)
    splits = load_splits(dataset, seed=0, num_labelled=4)
    arm = standard_arms(splits["train"])[0]
    record = run_record(arm, 0, 100, 20, 64, splits["test"])
    assert record == run_record(standard_arms(splits["train"])[0], 0, 100, 20, 64, splits["test"])
    other_splits = load_splits(other, seed=0, num_labelled=4)
    changes = {
        "another data set": run_record(standard_arms(other_splits["train"])[0], 0, 100, 20, 64, other_splits["test"]),
        "another subset": run_record(
            standard_arms(load_splits(dataset, seed=1, num_labelled=4)["train"])[0], 0, 100, 20, 64, splits["test"]
        ),
        "another seed": run_record(arm, 1, 100, 20, 64, splits["test"]),
        "another budget": run_record(arm, 0, 50, 20, 64, splits["test"]),
        "another size": run_record(arm, 0, 100, 20, 32, splits["test"]),
        "classic aug": run_record(standard_arms(splits["train"])[1], 0, 100, 20, 64, splits["test"]),
    }
    for what, changed in changes.items():
        assert changed != record, what
    assert files_digest(splits["train"]) == files_digest(list(reversed(splits["train"])))


def test_summaries_compare_every_arm_with_its_real_and_classic_references(tmp_path):
    class_names = ["background", "a"]
    per_seed = {
        name: [{m: np.array([[1.0, value + 0.01 * s]]) for m in ("dice", "iou")} for s in range(3)]
        for name, value in {REAL: 0.5, CLASSIC: 0.6, "real + x": 0.7}.items()
    }
    references = {name: {"real": REAL, "classic": CLASSIC} for name in per_seed}
    results = summarise(per_seed, class_names, references)
    assert results[REAL]["differences"].keys() == {"classic"}  # never compared with itself
    vs_classic = results["real + x"]["differences"]["classic"]["dice"]
    assert vs_classic["mean"] == pytest.approx(0.1) and vs_classic["std"] == pytest.approx(0.0, abs=1e-12)
    full = {
        "data": "d",
        "test_data": "d",
        "labelled": 4,
        "training_pairs": 3,
        "validation_pairs": 1,
        "iterations": 10,
        "seeds": 3,
        "class_names": class_names,
        "arms": results,
    }
    markdown = to_markdown(full)
    assert "| real + x |" in markdown and "+0.100" in markdown and "vs classic aug [95% CI]" in markdown
    quality = {
        "fid": 1.0,
        "kid": 0.1,
        "num_synthetic": 3,
        "real_only_dice": {"class_mean": {"mean": 0.5, "std": 0, "n": 1}},
    }
    noise_made = to_markdown({**full, "generator_quality": {"from noise": quality}})
    assert (
        "regenerated" not in noise_made and "sides kept" not in noise_made
    )  # columns only data or sets that have them
    inpainted = to_markdown(
        {**full, "generator_quality": {"from noise": quality, "inpainted": {**quality, "regenerated": 0.25}}}
    )
    assert "| regenerated |" in inpainted and "| 0.25 |" in inpainted
    figure = write_class_figure(full, str(tmp_path / "dice.png"))
    assert Image.open(figure).size[0] > 300


def test_diversity_is_the_ms_ssim_of_images_from_the_same_source(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "b.png")
    same = [{"image": str(tmp_path / "a.png"), "source_image": "s"}] * 2
    different = [{"image": str(tmp_path / n), "source_image": "s"} for n in ("a.png", "b.png")]
    assert sample_diversity(same) == pytest.approx(1.0, abs=1e-4)
    assert sample_diversity(different) < 0.2
    assert np.isnan(sample_diversity(same[:1]))


def test_regenerated_share_is_read_from_each_pair_s_source_mask_and_the_set_s_mask_settings(tmp_path):
    small, large = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    small[2:6, 2:6] = 1  # a 4x4 box: 1/16 of the image
    large[1:15, 1:15] = 2  # a 14x14 box
    for name, mask in (("small", small), ("large", large)):
        Image.fromarray(mask).save(tmp_path / f"{name}.png")
    pairs = [{"image": "x", "source_label": str(tmp_path / f"{n}.png")} for n in ("small", "small", "large")]
    config = {"mask_mode": "box", "box_margin": 0, "image_size": 8}  # masks read at 8 px: boxes of 2x2 and 7x7
    assert regenerated_share(pairs, config) == pytest.approx((2 * (1 - 4 / 64) + (1 - 49 / 64)) / 3)
    # on the latent grid of an f=4 autoencoder (2x2 cells), each box touches 1 and 4 cells
    assert regenerated_share(pairs, {**config, "latent_factor": 4}) == pytest.approx((2 * 3 / 4 + 0) / 3)
    assert regenerated_share(pairs, {**config, "box_margin": 1}) < regenerated_share(pairs, config)
    assert regenerated_share(pairs, {"image_size": 8}) is None  # not an inpainting set
    assert regenerated_share([{"image": "x"}], config) is None  # made from noise


def test_a_command_line_list_of_synthetic_sets_is_read_with_or_without_quotes():
    from common.evaluation.protocol import _paths

    assert (
        _paths("[/a/synthetic,/b/synthetic]")
        == _paths("['/a/synthetic', '/b/synthetic']")
        == [
            "/a/synthetic",
            "/b/synthetic",
        ]
    )
    assert _paths("/a/synthetic") == ["/a/synthetic"] and _paths(("/a",)) == ["/a"]
