"""Files written so that nothing is ever half-written, and JSON records compared to decide whether work is reused.

Every file monai-genaug writes goes through :func:`atomic_files`: it is written under a hidden temporary name in its
final folder, flushed to disk and renamed over its final name (``os.replace``) only once complete, so a crash leaves
the old file or the new one, never a torn one. :func:`write_json` does that for JSON records.

A finished piece of work (a trained stage, an evaluation run) is reused only when the record of what made it equals
the settings asked for now: :func:`json_ready` puts settings in the form they read back from JSON, and
:func:`record_matches` compares a record on disk with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "TEMP_PREFIX",
    "atomic_files",
    "file_digest",
    "json_ready",
    "read_json",
    "record_matches",
    "remove_stale_temporaries",
    "write_json",
]

TEMP_PREFIX = ".tmp-"
_TEMPORARY = re.compile(r"^\.tmp-[0-9a-f]{12}-")  # exactly the names atomic_files makes


@contextmanager
def atomic_files(*paths: str) -> Iterator[tuple[str, ...]]:
    """Temporary names for ``paths`` in their own folders; on success they are fsynced and renamed over ``paths``,
    on an exception they are deleted, so a final name only ever holds a complete file."""
    for path in paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temps = tuple(
        os.path.join(os.path.dirname(p) or ".", f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{os.path.basename(p)}")
        for p in paths
    )
    try:
        yield temps
        for temp in temps:
            with open(temp, "r+b") as f:
                os.fsync(f.fileno())
        for temp, path in zip(temps, paths, strict=True):
            os.replace(temp, path)
    finally:
        for temp in temps:
            if os.path.exists(temp):
                os.remove(temp)


def remove_stale_temporaries(folder: str) -> None:
    """Delete the temporary files a killed process left in ``folder`` (an exception never leaves any): only names
    that :func:`atomic_files` makes, so no file of the user's is ever removed."""
    for file_name in os.listdir(folder):
        if _TEMPORARY.match(file_name):
            os.remove(os.path.join(folder, file_name))


def json_ready(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, keys strings, other objects their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def write_json(path: str, value: Any, indent: int | None = 2) -> str:
    """Write ``value`` as JSON to ``path`` atomically; returns ``path``."""
    with atomic_files(path) as (temp,), open(temp, "w") as f:
        json.dump(value, f, indent=indent, sort_keys=False, default=str)
        f.write("\n")
    return path


def read_json(path: str, default: Any = None) -> Any:
    """The JSON content of ``path``, or ``default`` when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def record_matches(path: str, settings: Mapping[str, Any], key: str | None = None) -> bool:
    """Whether the JSON record at ``path`` (its ``key`` entry, when given) equals ``settings``."""
    record = read_json(path)
    if key is not None:
        record = record.get(key) if isinstance(record, dict) else None
    return record is not None and record == json_ready(dict(settings))


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
