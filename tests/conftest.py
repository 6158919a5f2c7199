"""Fixtures shared by the tests; the bundles' own packages (``augpaint``, ``gauda``) are importable, as in a
``monai.bundle run`` of their configs."""

from __future__ import annotations

import pytest
import torch

from common.bundles import find_bundles
from common.data import load_splits, phantom_dataset
from common.stages import add_bundle_to_path

for _bundle in find_bundles().values():
    add_bundle_to_path(str(_bundle.root / "configs" / "metadata.json"))


@pytest.fixture
def single_torch_thread():
    """One torch thread: tiny runs on a shared CPU are many times faster than on oversubscribed OpenMP threads, and
    training results do not depend on the thread count (reduction order), so they are reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> list[dict]:
    """Three labelled pairs of a 32 px phantom set of 12 images (seed 0)."""
    root = phantom_dataset(tmp_path_factory.mktemp("phantoms"), image_size=32, num_images=12, seed=0)
    return load_splits(root, seed=0, num_labelled=3)["train"]
