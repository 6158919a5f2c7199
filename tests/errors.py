"""Errors as a user sees them through ``monai.bundle``: MONAI wraps what a config item raises in a RuntimeError
("Failed to evaluate/instantiate ..."), and the message that names the problem is its cause."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


@contextmanager
def raises_through_bundle(error_type: type[BaseException], match: str) -> Iterator[None]:
    """Like ``pytest.raises``, for an error raised inside a bundle config (its root cause is checked)."""
    with pytest.raises(Exception) as info:
        yield
    cause = root_cause(info.value)
    assert isinstance(cause, error_type), f"expected {error_type.__name__}, got {type(cause).__name__}: {cause}"
    assert re.search(match, str(cause)), f"{match!r} not in {cause}"
