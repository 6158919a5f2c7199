"""Package a bundle as a model-zoo zip that runs on its own: monai, torch and the packages its metadata declares.

::

    python -m scripts.export_bundle segmentation                          # dist/segmentation_v0.4.0.zip, untrained
    python -m scripts.export_bundle segmentation --run outputs/seg_usgra   # with the weights trained there
    python -m monai.bundle download --name segmentation --url file://$PWD/dist/segmentation_v0.4.0.zip --bundle_dir D
    cd D/segmentation && python -m monai.bundle run --config_file configs/inference.json

The zip has one top folder ``NAME/`` in the model zoo's layout: ``configs/`` (every ``bundle_root`` is ``"."``, so
commands run from the bundle folder as zoo bundles do), ``docs/`` (with ``data_license.txt``), ``LICENSE``,
``models/`` and the Python the configs import: the bundle's own package and a copy of ``common`` (as zoo bundles carry
their ``scripts/``; run from the bundle folder, Python finds them first). With ``--run`` the trained checkpoints and
their cards go into ``models/``, and the metadata's class names, ``num_channels`` and spatial shapes become those the
main network (``models/model.pt``) was trained with.

Members are written in a fixed order with a fixed date, so the same inputs give the same bytes; an absolute or ``..``
member name is refused, as is a bundle version without a changelog entry or metadata that fails the schema.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import common
from common.bundles import Bundle, find_bundles
from common.checkpoints import card_path, read_card
from common.metadata import check_metadata
from common.stages import FILTER_SEGMENTER_CONFIG
from scripts.cli import run_command_line

logger = logging.getLogger("scripts.export_bundle")

__all__ = ["bundle_members", "check_member_name", "export_bundle", "trained_metadata", "write_zip"]

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold: reproducible archives
REQUIRED = ("configs/metadata.json", "configs/inference.json", "docs/README.md", "docs/data_license.txt", "LICENSE")
SKIPPED = {"__pycache__"}
UNTRAINED_MODELS = (
    "No weights travel with this export. Train them from the bundle folder with\n\n"
    "    python -m monai.bundle run --config_file configs/train.json\n\n"
    "which writes models/model.pt (and its card models/model.json), or export a trained run with\n"
    "`python -m scripts.export_bundle NAME --run OUT` in the monai-genaug repository.\n"
)


def check_member_name(name: str) -> str:
    """``name`` as a zip member; an absolute name or one with ``..`` parts is refused (it would unpack elsewhere)."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ":" in path.parts[0] or ".." in path.parts:
        raise ValueError(f"refusing zip member {name!r}: members must be relative paths inside the bundle folder")
    return str(path)


def _files(folder: Path, prefix: str, suffixes: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Files under ``folder`` as members ``<prefix>/<relative POSIX name>`` -> bytes, caches skipped; a link leaving
    ``folder`` is refused."""
    root = folder.resolve()
    found = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or SKIPPED & set(path.parts) or (suffixes and path.suffix not in suffixes):
            continue
        if not path.resolve().is_relative_to(root):
            raise ValueError(f"refusing {path}: it links outside {folder}")
        found[f"{prefix}/{path.relative_to(folder).as_posix()}"] = path.read_bytes()
    return found


def _config_bytes(name: str, data: bytes) -> bytes:
    """A config file as exported: JSON configs get ``"bundle_root": "."``; other files are copied as they are."""
    if not name.endswith(".json"):
        return data
    config = json.loads(data)
    if "bundle_root" in config:
        config["bundle_root"] = "."
    return (json.dumps(config, indent=4) + "\n").encode()


def _models_folder(run: str) -> Path:
    """The checkpoints of a run: ``RUN/models`` (``scripts.augment``'s layout) or ``RUN`` itself (a ``ckpt_dir``)."""
    folder = Path(run) / "models" if (Path(run) / "models").is_dir() else Path(run)
    if not (folder / "model.pt").is_file():
        raise FileNotFoundError(f"--run {run}: no model.pt in {folder}; give the run's output folder or its ckpt_dir")
    return folder


def trained_metadata(metadata: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` with what the main network was trained on (its card's ``settings``): every ``segmentation``
    tensor gets the class names as channels, and image tensors (segmentation outputs and ``image`` inputs of type
    ``image``) get ``image_size``."""
    metadata = copy.deepcopy(dict(metadata))
    class_names, image_size = settings.get("class_names"), settings.get("image_size")
    formats = metadata["network_data_format"]
    for direction in ("inputs", "outputs"):
        for key, tensor in formats.get(direction, {}).items():
            if not isinstance(tensor, dict):
                continue
            is_segmentation = tensor.get("format") == "segmentation"
            if is_segmentation and class_names:
                tensor["num_channels"] = len(class_names)
                tensor["channel_def"] = {str(index): name for index, name in enumerate(class_names)}
            is_image_input = direction == "inputs" and key == "image" and tensor.get("type") == "image"
            if image_size and (is_segmentation or is_image_input):
                tensor["spatial_shape"] = [image_size, image_size]
    return metadata


def bundle_members(bundle: Bundle, run: str | None = None) -> dict[str, bytes]:
    """Every member of the exported bundle (names relative to its top folder) and its bytes."""
    members = {name: _config_bytes(name, data) for name, data in _files(bundle.root / "configs", "configs").items()}
    if "filter_segmenter" in json.loads(members.get("configs/train.json", b"{}")):
        # the filter segmenter's training travels with the method (common.stages.filter_segmenter_stage finds it)
        segmenter_config = find_bundles()["segmentation"].config("train")
        members[f"configs/{FILTER_SEGMENTER_CONFIG}"] = _config_bytes("train.json", Path(segmenter_config).read_bytes())
    members.update(_files(bundle.root / "docs", "docs"))
    members["LICENSE"] = (bundle.root / "LICENSE").read_bytes()
    for package in sorted(p for p in bundle.root.iterdir() if (p / "__init__.py").is_file()):
        members.update(_files(package, package.name, (".py",)))
    members.update(_files(Path(common.__file__).parent, "common", (".py", ".json")))
    metadata = json.loads(members["configs/metadata.json"])
    if run is None:
        members["models/README.md"] = UNTRAINED_MODELS.encode()
    else:
        models = _models_folder(run)
        for checkpoint in sorted(models.glob("*.pt")):
            members[f"models/{checkpoint.name}"] = checkpoint.read_bytes()
            card = Path(card_path(str(checkpoint)))
            if card.is_file():
                members[f"models/{card.name}"] = card.read_bytes()
        metadata = trained_metadata(metadata, read_card(str(models / "model.pt"))["settings"])
    members["configs/metadata.json"] = (json.dumps(metadata, indent=4) + "\n").encode()
    missing = [name for name in REQUIRED if name not in members]
    if missing:
        raise FileNotFoundError(f"bundle '{bundle.name}' lacks {missing}, which every exported bundle needs")
    return members


def write_zip(path: str, top: str, members: Mapping[str, bytes]) -> str:
    """Write ``members`` under the folder ``top/`` of a new zip at ``path`` (sorted, fixed date); returns ``path``."""
    check_member_name(top)
    names = {f"{top}/{check_member_name(name)}": data for name, data in members.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.partial"
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(names):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, names[name])
    os.replace(temporary, path)
    return path


def export_bundle(name: str, run: str | None = None, out: str = "dist") -> str:
    """Export bundle ``name`` (with the checkpoints of ``run`` if given) as ``out/NAME_vVERSION.zip``; returns it.

    Args:
        name: a bundle of ``bundles/`` (``segmentation``, ``augpaint``, ``gauda``, ...).
        run: a trained run: the ``--out`` of ``scripts.augment`` or a bundle's ``ckpt_dir`` (with ``model.pt``).
        out: the folder the zip is written to.
    """
    bundles = find_bundles()
    if name not in bundles:
        raise ValueError(f"unknown bundle '{name}'; there are {sorted(bundles)}")
    bundle = bundles[name]
    members = bundle_members(bundle, run)
    metadata = json.loads(members["configs/metadata.json"])
    check_metadata(metadata, source=f"bundle '{name}'")
    path = write_zip(os.path.join(out, f"{name}_v{metadata['version']}.zip"), name, members)
    trained = "with the weights of " + run if run else "untrained"
    logger.info(f"exported {name} {metadata['version']} ({trained}): {path}, {len(members)} files")
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_command_line(export_bundle)
