"""Fixtures shared by the tests; the bundles' own packages (``augpaint``, ``gauda``) are importable, as in a
``monai.bundle run`` of their configs."""

from __future__ import annotations

import pytest
import torch

from common.bundles import find_bundles
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
