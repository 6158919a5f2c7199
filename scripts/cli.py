"""The scripts' command lines: ``python-fire`` with ``-h`` / ``--help`` meaning help wherever they are written.

A function with ``**knobs`` (``scripts.augment``) would otherwise take ``--help`` as a knob named ``help`` and start
a full run, and fire's own ``METHOD -- --help`` calls the function before showing help; here any ``-h`` / ``--help``
shows the component's help and runs nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import fire

__all__ = ["HELP_FLAGS", "run_command_line"]

HELP_FLAGS = ("-h", "--help")


def run_command_line(component: Callable, argv: Sequence[str] | None = None, **fire_options: Any) -> Any:
    """``fire.Fire(component)`` on ``argv`` (default ``sys.argv[1:]``), showing help when a help flag is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in HELP_FLAGS for arg in argv):
        argv = ["--", "--help"]  # the component's help, never a call (fire would call it first with its arguments)
    return fire.Fire(component, command=argv, **fire_options)
