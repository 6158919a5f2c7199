"""MONAI Label serves an exported, trained segmentation bundle: a real ``monailabel`` server on 127.0.0.1, in a venv
with MONAI Label and its pins (the ``[label]`` extra) and nothing of this project, answers ``/info`` with the trained
class names and ``/infer`` with the class map ``monai.bundle run`` writes for the same image, as PNG and as NIfTI,
without writing into the bundle folder."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import requires
from pathlib import Path

import monai
import nibabel as nib
import numpy as np
import pytest
import torch
from exported_bundles import REPO, STANDALONE, download_bundle, named_class_data, run_checked
from PIL import Image

from common.bundles import find_bundles
from common.stages import run_workflow
from scripts.export_bundle import export_bundle

pytestmark = [pytest.mark.slow, pytest.mark.engine]

CLASS_NAMES = ("background", "nerve", "artery")
TORCHVISION_SHIM = REPO / "tests" / "torchvision_cpu_shim.py"


def _label_requirements() -> list[str]:
    """The ``[label]`` extra of this project (as installed), plus the torch and MONAI of this environment."""
    extra = [r.split(";")[0].strip() for r in requires("monai-genaug") or [] if 'extra == "label"' in r]
    assert extra, "the installed monai-genaug declares no [label] extra: reinstall it (pip install -e .)"
    return [f"torch=={torch.__version__.split('+')[0]}", f"monai=={monai.__version__}", *extra]


def _venv_python(venv: Path) -> str:
    return str(venv / "bin" / "python")


def _site_packages(venv: Path) -> Path:
    code = "import site; print(site.getsitepackages()[0])"
    return Path(subprocess.check_output([_venv_python(venv), "-c", code], text=True).strip())


@pytest.fixture(scope="module")
def label_venv() -> Path:
    """A venv with MONAI Label and its pins only, built once per set of requirements (a few minutes) and reused; a
    build that did not finish (no ``.complete`` marker) is started again."""
    requirements = _label_requirements()
    digest = hashlib.sha256(json.dumps(requirements).encode()).hexdigest()[:12]
    venv = Path.home() / ".cache" / "monai_genaug" / f"monailabel_venv_{digest}"
    if (venv / ".complete").is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    run_checked([_venv_python(venv), "-m", "pip", "install", "--quiet", *requirements], cwd=REPO)
    if subprocess.run([_venv_python(venv), "-c", "import torchvision.utils"], capture_output=True).returncode:
        # the only torchvision wheels on this machine's disk are CUDA builds, whose extension cannot load on the CPU
        # torch; MONAI Label imports torchvision.utils only, which the shim lets import (see its docstring)
        site = _site_packages(venv)
        shutil.copy(TORCHVISION_SHIM, site / "torchvision_cpu_shim.py")
        (site / "torchvision_cpu_shim.pth").write_text("import torchvision_cpu_shim\n")
    run_checked([_venv_python(venv), "-c", "import monailabel, torchvision.utils"], cwd=REPO)
    (venv / ".complete").write_text("\n".join(requirements) + "\n")
    return venv


@pytest.fixture(scope="module")
def served_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A segmentation bundle trained on data with other classes than the phantoms', exported and downloaded into a
    MONAI Label app's model folder; and a studies folder with a square and a wide image."""
    root = tmp_path_factory.mktemp("monailabel")
    data = named_class_data(root / "data", CLASS_NAMES)
    segmentation = find_bundles()["segmentation"]
    knobs = {"channels": [8, 16, 32, 64], "num_workers": 0, "max_iterations": 40, "val_interval": 20}
    run = root / "run"
    run_workflow(
        segmentation.config("train"),
        bundle_root=str(segmentation.root),
        ckpt_dir=str(run),
        dataset_dir=str(data),
        image_size=32,
        **knobs,
    )
    zip_path = export_bundle("segmentation", run=str(run), out=str(root / "dist"))
    app = root / "apps" / "monaibundle"
    (app / "model").mkdir(parents=True)
    download_bundle(zip_path, "segmentation", app / "model")
    studies = root / "studies"
    studies.mkdir()
    image = sorted((data / "images").glob("*.png"))[0]
    shutil.copy(image, studies / "square.png")
    Image.open(image).resize((40, 32)).save(studies / "wide.png")  # the same scene, 40 columns and 32 rows
    return app, studies


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(url: str, data: bytes | None = None, timeout: float = 120) -> bytes:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "multipart/form-data; boundary=x")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _params(params: dict) -> bytes:
    """A multipart body with one ``params`` field, as MONAI Label's /infer reads its options."""
    return (
        b'--x\r\nContent-Disposition: form-data; name="params"\r\n\r\n' + json.dumps(params).encode() + b"\r\n--x--\r\n"
    )


def _venv_env(venv: Path) -> dict[str, str]:
    """The venv's commands first on PATH (``monailabel`` runs ``python``), nothing of this project importable."""
    return {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}


def _add_app_files(venv: Path, app: Path, scratch: Path) -> None:
    """The ``monaibundle`` sample app (it ships inside the MONAI Label wheel: offline) around ``app/model``."""
    command = [str(venv / "bin" / "monailabel"), "apps", "--download", "--name", "monaibundle"]
    run_checked([*command, "--output", str(scratch)], cwd=scratch, env=_venv_env(venv))
    for item in (scratch / "monaibundle").iterdir():
        if item.name != "model":
            (shutil.copytree if item.is_dir() else shutil.copy)(item, app / item.name)


@contextmanager
def _server(venv: Path, app: Path, studies: Path, log_path: Path) -> Iterator[str]:
    """A ``monailabel start_server`` of ``app`` on a free local port, offline; yields its base URL once ``/info``
    answers, and stops it (its whole process group) afterwards."""
    port = _free_port()
    command = [str(venv / "bin" / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies)]
    command += ["--conf", "models", "segmentation", "--conf", "zoo_source", "github", "--conf", "sam2", "false"]
    command += ["--conf", "skip_trainers", "true", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command,
            cwd=log_path.parent,
            env=_venv_env(venv),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            for _ in range(240):
                assert server.poll() is None, f"the server stopped: {log_path.read_text()[-4000:]}"
                try:
                    _request(f"{base}/info/", timeout=5)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.5)
            yield base
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts)


def test_monailabel_serves_the_exported_bundle(label_venv, served_bundle, tmp_path):
    app, studies = served_bundle
    bundle = app / "model" / "segmentation"
    _add_app_files(label_venv, app, tmp_path)
    before = _files(bundle)
    masks = {}
    with _server(label_venv, app, studies, tmp_path / "server.log") as base:
        model = json.loads(_request(f"{base}/info/"))["models"]["segmentation"]
        assert set(model["labels"]) == {"nerve", "artery"} and model["dimension"] == 2  # the trained classes
        for image in ("square", "wide"):
            url = f"{base}/infer/segmentation?image={image}&output=image"
            png, nifti = _request(url, _params({})), _request(url, _params({"result_extension": ".nii.gz"}))
            mask = np.asarray(Image.open(io.BytesIO(png)))
            assert mask.dtype == np.uint8 and mask.ndim == 2
            volume = np.squeeze(nib.Nifti1Image.from_bytes(gzip.decompress(nifti)).get_fdata())
            np.testing.assert_array_equal(volume.T, mask)  # NIfTI x, y = the PNG's columns, rows
            masks[image] = mask
    assert masks["wide"].shape == (32, 40) and masks["square"].shape == (32, 32)  # rows, columns of each input
    assert _files(bundle) == before  # MONAI Label wrote nothing into the bundle folder

    # the class maps of the bundle's own inference, run from its folder
    reference = tmp_path / "reference"
    run = [sys.executable, STANDALONE, "run", "--config_file", "configs/inference.json"]
    run_checked([*run, "--input_dir", str(studies), "--output_dir", str(reference)], cwd=bundle)
    for image, mask in masks.items():
        expected = np.asarray(Image.open(reference / f"{image}.png"))
        np.testing.assert_array_equal(mask, expected)
        assert len(np.unique(mask)) > 1  # structures were found: a transposed or misplaced map would show
