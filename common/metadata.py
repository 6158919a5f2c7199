"""Bundle metadata checked as MONAI's bundle tools check it, offline.

``common/schemas/meta_schema.json`` is the bundle-metadata schema written from MONAI's bundle specification (the
official one is a download; nothing here downloads at run time). :func:`check_metadata` validates with it as
``python -m monai.bundle verify_metadata`` does, and also asks that the version has a changelog entry::

    python -m monai.bundle verify_metadata --meta_file bundles/segmentation/configs/metadata.json \\
        --filepath common/schemas/meta_schema.json
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema

__all__ = ["SCHEMA_FILE", "check_metadata"]

SCHEMA_FILE = str(Path(__file__).parent / "schemas" / "meta_schema.json")


def check_metadata(metadata: Mapping[str, Any], source: str = "metadata") -> None:
    """Raise ``ValueError`` naming ``source`` when ``metadata`` fails the schema or its version has no changelog."""
    with open(SCHEMA_FILE) as f:
        schema = json.load(f)
    try:
        jsonschema.validate(instance=dict(metadata), schema=schema)
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise ValueError(f"{source}: metadata fails the bundle schema at {where}: {error.message}") from None
    version = metadata["version"]
    if version not in metadata["changelog"]:
        raise ValueError(f"{source}: version {version} has no changelog entry (it has {sorted(metadata['changelog'])})")
