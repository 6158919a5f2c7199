"""Run the stages of a bundle (autoencoder, diffusion, segmenter, ...) in order, reusing finished ones.

A method's ``train.json`` lists its stages; each stage is an ordinary MONAI bundle workflow (a list of layered config
files) run with :class:`monai.bundle.ConfigWorkflow`. A stage whose checkpoint already exists is reused unless it is
asked to retrain, so an interrupted ``train.json`` resumes at the first unfinished stage. Beside each checkpoint a
``<checkpoint>.stage.json`` records the config files and overrides it was trained with and the digests of the
checkpoints of the stages before it; a checkpoint trained with other settings (another data set, seed or size) or on
an earlier stage that has since been retrained is never reused silently: that stage is trained again. A checkpoint
that no stage wrote (no record beside it) is the user's: it is never overwritten unless that stage is retrained.

:func:`run_workflow` puts the bundle's folder on ``sys.path`` first, as ``python -m monai.bundle run`` does, so the
configs can name the bundle's own Python package (e.g. ``"_target_": "augpaint.inpainter.LatentInpainter"``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from monai.bundle import ConfigWorkflow

from common.bundles import add_to_path, find_bundles
from common.files import file_digest, json_ready, read_json, record_matches, write_json

logger = logging.getLogger(__name__)

__all__ = ["add_bundle_to_path", "filter_segmenter_stage", "profile_files", "run_stages", "run_workflow"]

FILTER_SEGMENTER_CONFIG = "filter_segmenter/train.json"  # under an exported bundle's configs/
FILTER_SEGMENTER_CKPT = "model_segmenter.pt"


def profile_files(bundle_root: str, profile: str, part: str = "train") -> list[str]:
    """Config files that layer ``profile`` over a bundle's defaults: none for "quick" (the defaults); for training
    ``configs/<profile>.json``, for inference ``configs/<profile>_inference.json`` when the bundle has one."""
    if profile == "quick":
        return []
    path = os.path.join(bundle_root, "configs", f"{profile}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"unknown profile '{profile}': {path} does not exist")
    if part == "train":
        return [path]
    if part != "inference":
        raise ValueError(f"part must be 'train' or 'inference', got {part!r}")
    inference = os.path.join(bundle_root, "configs", f"{profile}_inference.json")
    return [inference] if os.path.isfile(inference) else []


def filter_segmenter_stage(bundle_root: str, ckpt_dir: str, knobs: Mapping[str, Any] | None = None) -> dict:
    """The stage that trains a method's filter segmenter, ``<ckpt_dir>/model_segmenter.pt``: ``bundles/segmentation``
    on the method's labelled pairs, with ``knobs`` (segmentation config ids, e.g. ``max_iterations``).

    An exported method bundle carries that config as ``configs/filter_segmenter/train.json``; in the repository it is
    the segmentation bundle's own ``train.json``.
    """
    exported = os.path.join(bundle_root, "configs", FILTER_SEGMENTER_CONFIG)
    config = exported if os.path.isfile(exported) else str(find_bundles()["segmentation"].config("train"))
    return {
        "name": "filter_segmenter",
        "config_file": [config],
        "checkpoint": os.path.join(ckpt_dir, FILTER_SEGMENTER_CKPT),
        "overrides": {
            "bundle_root": os.path.dirname(os.path.dirname(config)),
            "ckpt_name": FILTER_SEGMENTER_CKPT,
            "output_dir": os.path.join(ckpt_dir, "logs", "filter_segmenter"),
            **dict(knobs or {}),
        },
    }


def add_bundle_to_path(config_file: str) -> str:
    """Put the bundle folder of ``config_file`` (the parent of its ``configs/``) first on ``sys.path``; returns it."""
    config_dir = os.path.dirname(os.path.abspath(config_file))
    return add_to_path(os.path.dirname(config_dir) if os.path.basename(config_dir) == "configs" else config_dir)


def run_workflow(config_file: str | Sequence[str], workflow_type: str = "train", **overrides: Any) -> ConfigWorkflow:
    """Initialise, run and finalise one bundle workflow; returns it so callers can read its state."""
    files = [config_file] if isinstance(config_file, str) else list(config_file)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"config file(s) not found: {missing}")
    add_bundle_to_path(files[0])
    config_dir = os.path.dirname(files[0])
    meta_file = os.path.join(config_dir, "metadata.json")
    logging_file = os.path.join(config_dir, "logging.conf")
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=meta_file if os.path.isfile(meta_file) else None,
        logging_file=logging_file if os.path.isfile(logging_file) else False,
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def run_stages(
    stages: Sequence[Mapping[str, Any]],
    overrides: Mapping[str, Any] | None = None,
    retrain: bool | Sequence[str] = False,
) -> list[str]:
    """Run ``stages`` in order and return the names of the stages that were (re)trained.

    Args:
        stages: each a mapping with ``name``, ``config_file`` (one path or a list layered in order), ``checkpoint``
            (the file the stage writes; its existence marks the stage done) and optional ``overrides`` (config ids
            for this stage only).
        overrides: config ids given to every stage (data set, seed, bundle root, device, profile knobs, ...).
        retrain: ``True`` to retrain every stage, or the names of the stages to retrain.
    """
    names = [stage["name"] for stage in stages]
    overrides = dict(overrides or {})
    if not isinstance(retrain, bool):
        unknown = sorted(set(retrain) - set(names))
        if unknown:
            raise ValueError(f"retrain names unknown stage(s) {unknown}; the stages are {names}")
    trained = []
    earlier: list[str] = []
    for index, stage in enumerate(stages, start=1):
        name, checkpoint = stage["name"], stage["checkpoint"]
        config_file = [stage["config_file"]] if isinstance(stage["config_file"], str) else list(stage["config_file"])
        stage_overrides = {**overrides, **dict(stage.get("overrides", {}))}
        record = {
            "config_file": config_file,
            "overrides": stage_overrides,
            "inputs": {os.path.basename(path): file_digest(path) for path in earlier},
        }
        forced = retrain if isinstance(retrain, bool) else name in retrain
        earlier.append(checkpoint)
        if os.path.isfile(checkpoint) and not forced:
            if record_matches(f"{checkpoint}.stage.json", record):
                logger.info(f"stage {index}/{len(stages)} '{name}': reusing {checkpoint} (retrain to train it again)")
                continue
            if read_json(f"{checkpoint}.stage.json") is None:
                raise FileExistsError(
                    f"{checkpoint} exists but no stage of this project wrote it (it has no {checkpoint}.stage.json): "
                    f"move it away, choose another ckpt_dir, or retrain '{name}' to overwrite it"
                )
            logger.warning(
                f"stage {index}/{len(stages)} '{name}': {checkpoint} was trained with other settings or on other "
                "checkpoints of the stages before it"
            )
        logger.info(f"stage {index}/{len(stages)} '{name}': training -> {checkpoint}")
        start = time.perf_counter()
        run_workflow(config_file, **stage_overrides)
        if not os.path.isfile(checkpoint):
            raise RuntimeError(f"stage '{name}' finished without writing its checkpoint {checkpoint}")
        write_json(f"{checkpoint}.stage.json", json_ready(record))
        logger.info(f"stage {index}/{len(stages)} '{name}': done in {time.perf_counter() - start:.0f} s")
        trained.append(name)
    return trained
