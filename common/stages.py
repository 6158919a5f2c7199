"""Run the stages of a bundle (autoencoder, diffusion, segmenter, ...) in order, reusing finished ones.

A method's ``train.json`` lists its stages; each stage is an ordinary MONAI bundle workflow (a list of layered config
files) run with :class:`monai.bundle.ConfigWorkflow`. A stage whose checkpoint already exists is reused unless it is
asked to retrain, so an interrupted ``train.json`` resumes at the first unfinished stage. Beside each checkpoint a
``<checkpoint>.stage.json`` records the config files and overrides it was trained with; a checkpoint trained with other
settings (another data set, seed or size) is never reused silently: that stage is trained again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from monai.bundle import ConfigWorkflow

logger = logging.getLogger(__name__)

__all__ = ["run_stages", "run_workflow", "profile_files"]


def profile_files(bundle_root: str, profile: str) -> list[str]:
    """Config files that layer ``profile`` over a bundle's defaults: none for "quick" (the defaults), else
    ``configs/<profile>.json``."""
    if profile == "quick":
        return []
    path = os.path.join(bundle_root, "configs", f"{profile}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"unknown profile '{profile}': {path} does not exist")
    return [path]


def run_workflow(config_file: str | Sequence[str], workflow_type: str = "train", **overrides: Any) -> ConfigWorkflow:
    """Initialise, run and finalise one bundle workflow; returns it so callers can read its state."""
    files = [config_file] if isinstance(config_file, str) else list(config_file)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"config file(s) not found: {missing}")
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
    for index, stage in enumerate(stages, start=1):
        name, checkpoint = stage["name"], stage["checkpoint"]
        config_file = [stage["config_file"]] if isinstance(stage["config_file"], str) else list(stage["config_file"])
        stage_overrides = {**overrides, **dict(stage.get("overrides", {}))}
        record = _stage_record(config_file, stage_overrides)
        forced = retrain if isinstance(retrain, bool) else name in retrain
        if os.path.isfile(checkpoint) and not forced:
            if _read_record(checkpoint) == record:
                logger.info(f"stage {index}/{len(stages)} '{name}': reusing {checkpoint} (retrain to train it again)")
                continue
            logger.warning(f"stage {index}/{len(stages)} '{name}': {checkpoint} was trained with other settings")
        logger.info(f"stage {index}/{len(stages)} '{name}': training -> {checkpoint}")
        start = time.perf_counter()
        run_workflow(config_file, **stage_overrides)
        if not os.path.isfile(checkpoint):
            raise RuntimeError(f"stage '{name}' finished without writing its checkpoint {checkpoint}")
        _write_record(checkpoint, record)
        logger.info(f"stage {index}/{len(stages)} '{name}': done in {time.perf_counter() - start:.0f} s")
        trained.append(name)
    return trained


def _stage_record(config_file: list[str], overrides: Mapping[str, Any]) -> dict:
    """What a stage was trained with, in a JSON-comparable form."""
    return json.loads(json.dumps({"config_file": config_file, "overrides": overrides}, sort_keys=True, default=str))


def _read_record(checkpoint: str) -> dict | None:
    try:
        with open(f"{checkpoint}.stage.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_record(checkpoint: str, record: dict) -> None:
    temp = f"{checkpoint}.stage.json.tmp"
    with open(temp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(temp, f"{checkpoint}.stage.json")
