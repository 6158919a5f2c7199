"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_torch_thread():
    """One torch thread: tiny runs on a shared CPU are many times faster than on oversubscribed OpenMP threads, and
    training results do not depend on the thread count (reduction order), so they are reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
