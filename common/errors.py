"""The error a user reads last is the real one.

MONAI's config parser wraps what a config item raises in a ``RuntimeError`` ("Failed to evaluate ConfigExpression:
..." or "Failed to instantiate ..."), so a bundle run that stops on, say, a bad data set would end with that wrapper.
:func:`install` adds to Python's handler of uncaught exceptions: after the usual traceback it repeats the root cause
(the message that names the file, the problem and what to do) as the last line. Only chains that MONAI's wrappers
start are touched; importing ``common`` installs it once.
"""

from __future__ import annotations

import sys
from types import TracebackType

__all__ = ["install", "root_cause"]

MONAI_WRAPPERS = ("Failed to evaluate", "Failed to instantiate")


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from ...`` chain."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def install() -> None:
    """Make ``sys.excepthook`` repeat the root cause of a MONAI-wrapped error last (once per process)."""
    previous = sys.excepthook
    if getattr(previous, "_repeats_root_cause", False):
        return

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        previous(kind, error, traceback)
        cause = root_cause(error)
        if cause is not error and str(error).startswith(MONAI_WRAPPERS):
            print(f"\nThe problem: {type(cause).__name__}: {cause}", file=sys.stderr)

    hook._repeats_root_cause = True  # type: ignore[attr-defined]
    sys.excepthook = hook
