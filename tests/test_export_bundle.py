"""Zoo zips: ``scripts.export_bundle`` packages a bundle that MONAI's own ``download`` unpacks and that then trains and
infers from its folder with nothing of this project installed (``tests/standalone_bundle.py`` makes sure of that)."""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from exported_bundles import STANDALONE, cli_overrides, download_bundle, named_class_data, run_checked
from monai.bundle import ConfigParser
from PIL import Image
from tiny_networks import tiny_training_knobs

from common.bundles import find_bundles
from common.checkpoints import read_card
from common.stages import run_workflow
from scripts import export_bundle
from scripts.export_bundle import bundle_members, check_member_name, trained_metadata, write_zip

REPO = Path(__file__).resolve().parents[1]
TINY_SEGMENTER = {"channels": [8, 16, 32, 64], "num_workers": 0, "max_iterations": 20, "val_interval": 10}


@pytest.mark.parametrize("name", ["/etc/passwd", "../evil.py", "seg/../../evil.py", "C:/evil.py", "\\evil.py"])
def test_member_names_that_would_unpack_elsewhere_are_refused(name, tmp_path):
    with pytest.raises(ValueError, match="refusing zip member"):
        check_member_name(name)
    with pytest.raises(ValueError, match="refusing zip member"):
        write_zip(str(tmp_path / "x.zip"), "bundle", {"configs/a.json": b"{}", name: b""})
    with pytest.raises(ValueError, match="refusing zip member"):
        write_zip(str(tmp_path / "x.zip"), name, {"configs/a.json": b"{}"})
    assert not list(tmp_path.iterdir())


def test_every_bundle_exports_in_the_zoo_layout_with_its_python_and_bundle_root_dot(tmp_path):
    for name, bundle in find_bundles().items():
        members = bundle_members(bundle)
        for required in ("configs/metadata.json", "configs/inference.json", "docs/README.md", "LICENSE"):
            assert required in members, (name, required)
        assert "docs/data_license.txt" in members and "models/README.md" in members
        for member, data in members.items():
            if member.startswith("configs/") and member.endswith(".json"):
                config = json.loads(data)
                assert config.get("bundle_root", ".") == ".", (name, member)
                if member != "configs/metadata.json":  # nothing points back into the repository
                    assert "bundles/" not in data.decode(), (name, member)
        # every module the configs import or name travels with the bundle
        for member, data in members.items():
            if member.startswith("configs/") and member.endswith(".json"):
                for dotted in re.findall(rf"\b(?:common|{name})(?:\.\w+)+", data.decode()):
                    assert _has_module(members, dotted), (name, member, dotted)
        assert all(not m.startswith(("models/", "eval/")) or m == "models/README.md" for m in members)


def _has_module(members: dict, dotted: str) -> bool:
    """Whether ``dotted`` (a module, or an attribute of one) is a module file or package among ``members``."""
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):  # a submodule at least: every package has an __init__.py
        path = "/".join(parts[:end])
        if f"{path}.py" in members or f"{path}/__init__.py" in members:
            return True
    return False


def test_the_same_bundle_exports_to_the_same_bytes(tmp_path):
    first = export_bundle.export_bundle("segmentation", out=str(tmp_path / "a"))
    second = export_bundle.export_bundle("segmentation", out=str(tmp_path / "b"))
    assert Path(first).name == Path(second).name == f"segmentation_v{_version('segmentation')}.zip"
    assert Path(first).read_bytes() == Path(second).read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert {name.split("/")[0] for name in archive.namelist()} == {"segmentation"}


def test_a_version_without_changelog_entry_is_refused(tmp_path, monkeypatch):
    original = bundle_members

    def unlogged(bundle, run=None):
        members = original(bundle, run)
        metadata = json.loads(members["configs/metadata.json"])
        metadata["version"] = "9.9.9"
        members["configs/metadata.json"] = json.dumps(metadata).encode()
        return members

    monkeypatch.setattr(export_bundle, "bundle_members", unlogged)
    with pytest.raises(ValueError, match="version 9.9.9 has no changelog entry"):
        export_bundle.export_bundle("segmentation", out=str(tmp_path))
    assert not list(tmp_path.glob("*.zip"))


def test_trained_metadata_follows_the_classes_and_size_of_therun_checked():
    metadata = json.loads((REPO / "bundles" / "segmentation" / "configs" / "metadata.json").read_text())
    trained = trained_metadata(metadata, {"class_names": ["background", "nerve", "vessel"], "image_size": 128})
    pred, image = trained["network_data_format"]["outputs"]["pred"], trained["network_data_format"]["inputs"]["image"]
    assert pred["num_channels"] == 3 and pred["channel_def"] == {"0": "background", "1": "nerve", "2": "vessel"}
    assert pred["spatial_shape"] == image["spatial_shape"] == [128, 128] and image["num_channels"] == 1
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 5  # the input is left alone
    generative = json.loads((REPO / "bundles" / "gauda" / "configs" / "metadata.json").read_text())
    assert trained_metadata(generative, {"class_names": ["a", "b"], "image_size": 32}) == generative  # latents


def _version(name: str) -> str:
    return json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())["version"]


@pytest.mark.slow
@pytest.mark.engine
def test_a_trained_segmenter_exports_with_its_classes_and_passes_monai_checks(tmp_path):
    data = named_class_data(tmp_path / "data")
    models = tmp_path / "run" / "models"
    segmentation = find_bundles()["segmentation"]
    overrides = {**TINY_SEGMENTER, "dataset_dir": str(data), "image_size": 32, "output_dir": str(tmp_path / "logs")}
    run_workflow(segmentation.config("train"), bundle_root=str(segmentation.root), ckpt_dir=str(models), **overrides)
    zip_path = export_bundle.export_bundle("segmentation", run=str(tmp_path / "run"), out=str(tmp_path / "dist"))
    folder = download_bundle(zip_path, "segmentation", tmp_path / "zoo")
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {"0": "background", "1": "organ", "2": "vessel"} and pred["num_channels"] == 3
    assert (folder / "models" / "model.pt").read_bytes() == (models / "model.pt").read_bytes()
    assert read_card(str(folder / "models" / "model.pt"))["settings"]["image_size"] == 32

    # MONAI's bundle tools, from the bundle folder: metadata schema (offline), network in/out, TorchScript export
    tools = [sys.executable, STANDALONE]
    schema = str(folder / "common" / "schemas" / "meta_schema.json")
    run_checked([*tools, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", schema], cwd=folder)
    net_args = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"]
    run_checked([*tools, "verify_net_in_out", "--net_id", "network_def", *net_args], cwd=folder)
    run_checked(
        [
            *tools,
            "ckpt_export",
            "network_def",
            "--filepath",
            "models/model.ts",
            "--ckpt_file",
            "models/model.pt",
            *net_args,
        ],
        cwd=folder,
    )
    scripted = torch.jit.load(str(folder / "models" / "model.ts"))
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    sys.path.insert(0, str(folder))
    try:
        network = parser.get_parsed_content("network_def").eval()
    finally:
        sys.path.remove(str(folder))
    network.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu"))
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), network(image))


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.parametrize("name", sorted(find_bundles()))
def test_a_downloaded_bundle_trains_and_infers_from_its_own_folder(name, tmp_path):
    bundle = find_bundles()[name]
    zip_path = export_bundle.export_bundle(name, out=str(tmp_path / "dist"))
    folder = download_bundle(zip_path, name, tmp_path / "zoo")
    run = [sys.executable, STANDALONE, "run", "--config_file"]
    if bundle.is_method:
        knobs = tiny_training_knobs(bundle)
        segmenter = ["--segmenter_knobs", json.dumps(TINY_SEGMENTER)]  # the filter's, when the method has one
        run_checked([*run, "configs/train.json", "--knobs", json.dumps(knobs), *segmenter], cwd=folder)
        run_checked(
            [*run, "configs/inference.json", *cli_overrides(bundle.evaluation["smoke_knobs"]["inference"])], cwd=folder
        )
        datalist = json.loads((folder / "eval" / "synthetic" / "datalist.json").read_text())
        entries = datalist["training"]
        assert entries, "no synthetic pair written"
        for entry in entries:
            image, label = Image.open(folder / "eval" / "synthetic" / entry["image"]), None
            label = np.asarray(Image.open(folder / "eval" / "synthetic" / entry["label"]))
            assert image.size == label.shape[::-1] and label.max() < 5  # the phantom classes
        if "filter_segmenter" in json.loads((folder / "configs" / "train.json").read_text()):
            # the filter segmenter trained from the bundle's own copy of its config, and inference filtered with it
            assert read_card(str(folder / "models" / "model_segmenter.pt"))["settings"]["class_names"]
            assert all("score" in entry for entry in entries)
    else:
        run_checked([*run, "configs/train.json", *cli_overrides(TINY_SEGMENTER)], cwd=folder)
        run_checked([*run, "configs/inference.json"], cwd=folder)
        masks = sorted((folder / "eval" / "masks").glob("*.png"))
        assert len(masks) == 40  # the phantoms' test split
        assert max(int(np.asarray(Image.open(mask)).max()) for mask in masks) < 5
    assert (folder / "models" / "model.pt").is_file() and read_card(str(folder / "models" / "model.pt"))
