"""MONAI's own bundle tools on every bundle, offline: ``verify_metadata`` against the schema kept in the repository
and ``verify_net_in_out`` on the networks the metadata describes (the diffusion UNets with their timesteps)."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import verify_metadata, verify_net_in_out

from common.bundles import find_bundles
from common.metadata import SCHEMA_FILE, check_metadata

BUNDLES = find_bundles()


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_metadata_passes_monai_verify_metadata_offline(name):
    meta_file = BUNDLES[name].config("metadata")
    verify_metadata(meta_file=meta_file, filepath=SCHEMA_FILE)  # the file exists: nothing is downloaded
    with open(meta_file) as f:
        check_metadata(json.load(f), source=name)


def test_metadata_that_breaks_the_schema_or_lacks_a_changelog_entry_is_refused():
    with open(BUNDLES["segmentation"].config("metadata")) as f:
        metadata = json.load(f)
    broken = {**metadata, "network_data_format": {"inputs": {}}}
    with pytest.raises(ValueError, match="fails the bundle schema at network_data_format"):
        check_metadata(broken, source="segmentation")
    with pytest.raises(ValueError, match="version 0.0.1 has no changelog entry"):
        check_metadata({**metadata, "version": "0.0.1"}, source="segmentation")


def _num_classes() -> int:
    with open(BUNDLES["segmentation"].config("metadata")) as f:
        return json.load(f)["network_data_format"]["outputs"]["pred"]["num_channels"]  # the phantom classes


@pytest.mark.parametrize(
    ("name", "configs", "net_id", "extra"),
    [
        ("segmentation", ["train"], "trained_network", {}),
        ("augpaint", ["train_autoencoder", "train_diffusion"], "diffusion_network", {"timesteps": torch.tensor([10])}),
        (
            "gauda",
            ["train_autoencoder", "train_diffusion"],
            "diffusion_network",
            {"timesteps": torch.tensor([10]), "context": torch.zeros(1, 1, _num_classes())},
        ),
    ],
)
def test_networks_match_their_metadata_with_monai_verify_net_in_out(name, configs, net_id, extra):
    bundle = BUNDLES[name]
    verify_net_in_out(
        net_id=net_id,
        meta_file=bundle.config("metadata"),
        config_file=[bundle.config(config) for config in configs],
        device="cpu",
        extra_forward_args=extra,
        bundle_root=str(bundle.root),
    )
