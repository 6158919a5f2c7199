"""One run of the evaluation: an arm trained with one seed, scored on the test pairs, reused only when nothing changed.

A run trains the arm's segmenter config (the segmentation bundle's ``train.json``, or a method's scheme configs) with
the arm's training pairs for a fixed number of iterations, keeps the final network (``keep_best_by_validation``
off), and scores it per image and class on the test pairs. Its record (``run.json`` in the run folder) holds every
setting that shaped the scores: the protocol version, the arm (classic augmentation, config files and their content,
overrides), seed, iterations, validation interval and image size, and the SHA-256 of the training, validation and
test files (so another data set, split, labelled subset or synthetic set can never be mistaken for this one). A
finished run is reused only when its record equals the one asked for; otherwise it is trained again and the log says
which settings differ.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose
from torch import nn

from common import augmentation
from common.checkpoints import load_network
from common.data import chain_transforms, pair_transforms, read_orientation
from common.files import file_digest, json_ready, read_json, record_matches, write_json
from common.metrics import per_class_scores
from common.stages import run_workflow

from .arms import Arm

__all__ = [
    "PROTOCOL_VERSION",
    "classic_training_transforms",
    "files_digest",
    "finished_run",
    "run_arm",
    "score_segmenter",
    "train_run",
    "train_segmenter",
]

logger = logging.getLogger(__name__)

# bump when training or scoring changes outside the configs (3: flips follow the orientation; 4: every arm but the
# schemes trains on the whole labelled subset, validation pairs included, as the generators did)
PROTOCOL_VERSION = 4
RECORD = "run.json"
_digests: dict[tuple[str, float, int], str] = {}


def _digest(path: str) -> str:
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime, stat.st_size)
    if key not in _digests:
        _digests[key] = file_digest(path)
    return _digests[key]


def files_digest(pairs: Sequence[Mapping[str, str]]) -> str:
    """One SHA-256 over the contents of every image and label file of ``pairs`` (order-independent)."""
    combined = hashlib.sha256()
    for digest in sorted(_digest(p[key]) for p in pairs for key in ("image", "label") if key in p):
        combined.update(digest.encode())
    return combined.hexdigest()


def classic_training_transforms(image_size: int, dataset_dir: str) -> Compose:
    """The training transforms of a ``classic`` arm: the segmenter's own (with the flips the data set's orientation
    allows) followed by :func:`common.augmentation.classic_augmentation`."""
    orientation = read_orientation(dataset_dir)
    return chain_transforms(
        [pair_transforms(image_size, augment=True, orientation=orientation), augmentation.classic_augmentation()]
    )


def train_segmenter(
    arm: Arm, run_dir: str, seed: int, iterations: int, val_interval: int, dataset_dir: str, image_size: int
) -> nn.Module:
    """Train the arm's segmenter config on its pairs and return the final network it saved (``model.pt``)."""
    overrides: dict[str, Any] = {
        "bundle_root": os.path.dirname(os.path.dirname(arm.config_files[0])),
        "dataset_dir": dataset_dir,
        "image_size": image_size,
        "seed": seed,
        "max_iterations": iterations,
        "val_interval": val_interval if arm.validation else iterations,
        "keep_best_by_validation": False,
        "ckpt_dir": run_dir,
        "ckpt_name": "model.pt",
        "output_dir": os.path.join(run_dir, "logs"),
        "train#dataset#data": list(arm.train),
        "validate#dataset#data": list(arm.validation),
        **arm.overrides,
    }
    if arm.classic:
        overrides["train#preprocessing"] = classic_training_transforms(image_size, dataset_dir)
    run_workflow(arm.config_files, **overrides)
    return load_network(os.path.join(run_dir, "model.pt"), image_size=image_size)


@torch.no_grad()
def score_segmenter(
    network: nn.Module, pairs: Sequence[dict], num_classes: int, image_size: int = 64, batch_size: int = 16
) -> dict[str, np.ndarray]:
    """Per-image, per-class Dice and IoU of ``network`` on ``pairs`` at the model's input size:
    ``{"dice": (N, C), "iou": (N, C)}`` (background in column 0; NaN where a class is absent from both)."""
    device = next(network.parameters()).device
    load = pair_transforms(image_size, augment=False)
    network.eval()
    dice, iou = [], []
    for start in range(0, len(pairs), batch_size):
        items = [load({"image": p["image"], "label": p["label"]}) for p in pairs[start : start + batch_size]]
        images = torch.stack([torch.as_tensor(i["image"]) for i in items]).to(device)
        labels = torch.stack([torch.as_tensor(i["label"]) for i in items]).to(device)
        scores = per_class_scores(network(images).argmax(dim=1, keepdim=True), labels, num_classes)
        dice.append(scores["dice"].cpu().numpy())
        iou.append(scores["iou"].cpu().numpy())
    return {"dice": np.concatenate(dice).astype(np.float64), "iou": np.concatenate(iou).astype(np.float64)}


def run_record(
    arm: Arm, seed: int, iterations: int, val_interval: int, image_size: int, test: Sequence[dict]
) -> dict[str, Any]:
    """Everything that shapes the scores of one run (see the module docstring)."""
    return json_ready(
        {
            "protocol": PROTOCOL_VERSION,
            "arm": arm.name,
            "classic": arm.classic,
            "config_files": {os.path.basename(f): file_digest(f) for f in arm.config_files},
            "overrides": arm.overrides,
            "seed": seed,
            "iterations": iterations,
            "val_interval": val_interval if arm.validation else None,
            "image_size": image_size,
            "train": files_digest(arm.train),
            "validation": files_digest(arm.validation),
            "test": files_digest(test),
        }
    )


def finished_run(
    arm: Arm, run_dir: str, seed: int, iterations: int, val_interval: int, image_size: int, test: Sequence[dict]
) -> dict[str, np.ndarray] | None:
    """The per-image, per-class test scores of a finished run with the same record, or None (logging what changed
    when the folder holds a run with another record)."""
    record = run_record(arm, seed, iterations, val_interval, image_size, test)
    path = os.path.join(run_dir, RECORD)
    previous = read_json(path)
    if record_matches(path, record, key="settings"):
        return {metric: np.asarray(values, dtype=float) for metric, values in previous["scores"].items()}
    if isinstance(previous, dict) and "settings" in previous:
        changed = sorted(k for k in record if previous["settings"].get(k) != record[k])
        logger.info(f"{arm.name} seed {seed}: retraining, the finished run in {run_dir} differs in {changed}")
    return None


def train_run(
    arm: Arm,
    run_dir: str,
    seed: int,
    iterations: int,
    val_interval: int,
    dataset_dir: str,
    image_size: int,
    test: Sequence[dict],
    num_classes: int,
) -> dict[str, np.ndarray]:
    """Train one arm with one seed, score it on ``test`` and write its record; returns the per-image, per-class
    scores."""
    start = time.perf_counter()
    network = train_segmenter(arm, run_dir, seed, iterations, val_interval, dataset_dir, image_size)
    scores = score_segmenter(network, test, num_classes, image_size)
    record = run_record(arm, seed, iterations, val_interval, image_size, test)
    write_json(
        os.path.join(run_dir, RECORD), {"settings": record, "scores": {k: v.tolist() for k, v in scores.items()}}
    )
    logger.info(f"{arm.name} seed {seed}: trained and scored in {time.perf_counter() - start:.0f} s")
    return scores


def run_arm(
    arm: Arm,
    run_dir: str,
    seed: int,
    iterations: int,
    val_interval: int,
    dataset_dir: str,
    image_size: int,
    test: Sequence[dict],
    num_classes: int,
) -> dict[str, np.ndarray]:
    """Per-image, per-class test scores of one arm and seed: read from a finished run with the same record, or
    trained and scored now."""
    scores = finished_run(arm, run_dir, seed, iterations, val_interval, image_size, test)
    if scores is not None:
        return scores
    return train_run(arm, run_dir, seed, iterations, val_interval, dataset_dir, image_size, test, num_classes)
