"""End-to-end augmentation: train a method's models, then write filtered synthetic pairs.

Runs the method's bundle configs exactly as ``python -m monai.bundle run`` would (``train.json`` then
``inference.json``), with one output folder per run so runs on different data never share checkpoints::

    python -m scripts.augment augpaint                                   # embedded phantoms, quick CPU profile
    python -m scripts.augment augpaint --data ../shared/data/usgra_nerve_vessel --labelled 10 --seed 0
    python -m scripts.augment augpaint --profile paper --out runs/augpaint_paper   # the paper's sizes, for a GPU
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import fire

from common.stages import profile_files, run_workflow

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
METHODS = ("augpaint", "gauda")

logger = logging.getLogger("scripts.augment")


def default_output_dir(method: str, data: str | None, labelled: int | None, seed: int) -> str:
    """``outputs/<method>/<data set>_n<labelled>_s<seed>``: one folder per distinct run."""
    data_name = "phantoms" if data in (None, "phantoms") else Path(data).resolve().name
    return os.path.join("outputs", method, f"{data_name}_n{labelled if labelled else 'all'}_s{seed}")


def augment(
    method: str,
    data: str | None = None,
    labelled: int | None = None,
    seed: int = 0,
    image_size: int = 64,
    out: str | None = None,
    profile: str = "quick",
    retrain: bool = False,
    train_knobs: dict | None = None,
    segmenter_knobs: dict | None = None,
    **knobs: Any,
) -> str:
    """Train ``method`` on ``data`` and write its synthetic pairs; returns the datalist path.

    Args:
        method: one of ``METHODS``.
        data: a data set folder or datalist JSON; default the embedded phantoms.
        labelled: use only a seeded subset of this many labelled training pairs (the same subset as scripts.evaluate).
        seed: seeds the split, the training and the sampling.
        image_size: images are resized to this square size for every stage (the papers work at 256 px).
        out: output folder (models/ and synthetic/ inside); default ``outputs/<method>/<data>_n<N>_s<seed>``.
        profile: "quick" (CPU, minutes) or "paper" (the paper's sizes, for a GPU).
        retrain: train every stage again even when its checkpoint exists.
        train_knobs: config ids for the generative stages and the generation run alike (budgets and network sizes,
            e.g. ``--train_knobs "{'diffusion_iterations': 500}"``); a stage trained with other knobs is retrained.
        segmenter_knobs: config ids for the filter segmenter's stage (bundles/segmentation ids).
        knobs: config ids for the generation run only, e.g. ``--num_samples 3 --keep_fraction 0.5``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {METHODS}")
    out = out or default_output_dir(method, data, labelled, seed)
    bundle_root = str(BUNDLES_DIR / method)
    shared = {
        "bundle_root": bundle_root,
        "dataset_dir": data,
        "num_labelled": labelled,
        "seed": seed,
        "image_size": image_size,
        "ckpt_dir": os.path.join(out, "models"),
    }
    train_knobs = dict(train_knobs or {})
    start = time.perf_counter()
    run_workflow(
        os.path.join(bundle_root, "configs", "train.json"),
        **shared,
        profile=profile,
        retrain=retrain,
        knobs=train_knobs,
        segmenter_knobs=dict(segmenter_knobs or {}),
    )
    trained = time.perf_counter()
    synthetic_dir = os.path.join(out, "synthetic")
    run_workflow(
        [os.path.join(bundle_root, "configs", "inference.json"), *profile_files(bundle_root, profile)],
        workflow_type="infer",
        **shared,
        output_dir=synthetic_dir,
        **train_knobs,
        **knobs,
    )
    datalist_path = os.path.join(synthetic_dir, "datalist.json")
    with open(datalist_path) as f:
        datalist = json.load(f)
    logger.info(
        f"{method}: {len(datalist['training'])} pairs kept, {datalist.get('dropped', 0)} dropped -> {datalist_path} "
        f"(training {trained - start:.0f} s, generation {time.perf_counter() - trained:.0f} s)"
    )
    return datalist_path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    fire.Fire(augment)
