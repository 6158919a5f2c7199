"""Helpers of the tests that use bundles as a user outside this repository does: exported, downloaded with MONAI's
``download``, run in subprocesses that see nothing of this project but the bundle folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.data import phantom_dataset

REPO = Path(__file__).resolve().parents[1]
STANDALONE = str(REPO / "tests" / "standalone_bundle.py")  # python -m monai.bundle, project hidden


def run_checked(command: Sequence[str], cwd: str | Path, env: Mapping[str, str] | None = None):
    """Run ``command`` in ``cwd`` with one torch thread and no PYTHONPATH; fail with its output if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": "", **(env or {})}
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def cli_overrides(overrides: Mapping) -> list[str]:
    """``--key value`` pairs of ``python -m monai.bundle run`` (values as JSON)."""
    return [item for key, value in overrides.items() for item in (f"--{key}", json.dumps(value))]


def download_bundle(zip_path: str, name: str, bundle_dir: Path) -> Path:
    """``monai.bundle download --url file://...``, as a user gets a zoo bundle; returns the bundle folder."""
    command = [sys.executable, "-m", "monai.bundle", "download", "--name", name, "--url", f"file://{zip_path}"]
    run_checked([*command, "--bundle_dir", str(bundle_dir)], cwd=bundle_dir.parent)
    return bundle_dir / name


def named_class_data(root: Path, names: Sequence[str] = ("background", "organ", "vessel")) -> Path:
    """A 32 px phantom set of 12 images whose masks keep ``len(names)`` classes (the others become background),
    with ``names`` as its ``classes.json``."""
    data = Path(phantom_dataset(root, image_size=32, num_images=12, seed=0))
    for mask in (data / "masks").glob("*.png"):
        values = np.asarray(Image.open(mask))
        Image.fromarray(np.where(values >= len(names), 0, values).astype(np.uint8)).save(mask)
    (data / "classes.json").write_text(json.dumps({str(i): name for i, name in enumerate(names)}))
    return data
