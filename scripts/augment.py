"""End-to-end augmentation: train a method's models, then write its (filtered) synthetic pairs.

Runs the method's bundle configs exactly as ``python -m monai.bundle run`` would (``train.json`` then
``inference.json``), with one output folder per run so runs on different data never share checkpoints. A method whose
inference filters pairs with a segmenter (AugPaint, DiffuseExpand) trains it in its ``train.json`` too
(``bundles/segmentation`` on the same labelled pairs), unless ``--segmenter_ckpt`` names one (``--filter False``:
unfiltered)::

    python -m scripts.augment augpaint                                   # embedded phantoms, quick CPU profile
    python -m scripts.augment augpaint --data ../shared/data/usgra_nerve_vessel --labelled 10 --seed 0
    python -m scripts.augment gauda --profile paper --out runs/gauda_paper     # the paper's sizes, for a GPU

The methods are the bundles with a ``configs/evaluate.json`` (:func:`common.bundles.find_methods`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from common.bundles import find_methods, method_bundle
from common.data import validate_dataset
from common.io import check_output_dir
from common.stages import profile_files, run_workflow
from scripts.cli import run_command_line

logger = logging.getLogger("scripts.augment")

SEGMENTER_VAL_FRACTION = 0.2  # bundles/segmentation/configs/train.json's val_fraction


def default_output_dir(method: str, data: str | None, labelled: int | None, seed: int) -> str:
    """``outputs/<method>/<data set>_n<labelled>_s<seed>``: one folder per distinct run."""
    data_name = "phantoms" if data in (None, "phantoms") else Path(data).resolve().name
    return os.path.join("outputs", method, f"{data_name}_n{labelled if labelled else 'all'}_s{seed}")


# generation knobs that also choose what ``train.json`` trains (AugPaint's conditional variant samples from its own
# diffusion model), passed to both runs when the bundle's train.json declares them
TRAINING_SWITCHES = ("conditional",)


def _train_settings(train_config: str) -> tuple[int, bool, set[str]]:
    """The bundle's image size, whether its ``train.json`` trains a filter segmenter (its ``inference.json`` then
    filters with it) and which of :data:`TRAINING_SWITCHES` it declares."""
    parser = ConfigParser()
    parser.read_config(train_config)
    return int(parser["image_size"]), "filter_segmenter" in parser, {k for k in TRAINING_SWITCHES if k in parser}


def augment(
    method: str,
    data: str | None = None,
    labelled: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    out: str | None = None,
    models: str | None = None,
    profile: str = "quick",
    retrain: bool = False,
    train_knobs: dict | None = None,
    segmenter_knobs: dict | None = None,
    allow_outside_paths: bool = False,
    **knobs: Any,
) -> str:
    """Train ``method`` on ``data`` and write its synthetic pairs; returns the datalist path.

    Args:
        method: the method, one of: {methods} (the bundles with ``configs/evaluate.json``).
        data: a data set folder or datalist JSON; default the embedded phantoms.
        labelled: use only a seeded subset of this many labelled training pairs (the same subset as scripts.evaluate).
        seed: seeds the split, the training and the sampling.
        image_size: images are resized to this square size for every stage (the papers work at 256 px); default the
            bundle's own (``image_size`` of its ``train.json``: 64 px, DiffuseExpand's pixel-space DDPM 32 px).
        out: output folder (models/ and synthetic/ inside); default ``outputs/<method>/<data>_n<N>_s<seed>``.
        models: the checkpoints' folder, default ``<out>/models``; runs that differ only in generation knobs can
            share one (a stage trained with other settings is retrained, never reused).
        profile: "quick" (CPU, minutes) or "paper" (the paper's sizes, for a GPU).
        retrain: train every stage again even when its checkpoint exists.
        train_knobs: config ids of the generative stages (budgets and network sizes, e.g.
            ``--train_knobs "{'diffusion_iterations': 500}"``); a stage trained with other knobs is retrained.
        segmenter_knobs: config ids of the filter segmenter (``bundles/segmentation`` ids, e.g. ``max_iterations``).
        allow_outside_paths: accept a datalist whose paths leave its folder.
        knobs: config ids of the generation run, e.g. ``--num_samples 3 --keep_fraction 0.5 --eta 0``; a switch that
            also chooses the trained models (AugPaint's ``--conditional True``) goes to the training run too.
    """
    bundle = method_bundle(method)
    out = out or default_output_dir(method, data, labelled, seed)
    models = models or os.path.join(out, "models")
    inference = bundle.config("inference")
    bundle_image_size, has_filter, switches = _train_settings(bundle.config("train"))
    image_size = image_size or bundle_image_size
    needs_segmenter = has_filter and knobs.get("filter", True) and "segmenter_ckpt" not in knobs
    # every problem of the data and of the settings before the first stage trains
    val_fraction = dict(segmenter_knobs or {}).get("val_fraction", SEGMENTER_VAL_FRACTION) if needs_segmenter else 0.0
    validate_dataset(data, labelled, seed, val_fraction, allow_outside_paths=allow_outside_paths)
    check_output_dir(os.path.join(out, "synthetic"), bundle.evaluation.get("method", method))
    shared = {
        "bundle_root": str(bundle.root),
        "dataset_dir": data,
        "num_labelled": labelled,
        "seed": seed,
        "image_size": image_size,
        "ckpt_dir": models,
        "allow_outside_paths": allow_outside_paths,
    }
    start = time.perf_counter()
    filter_knobs = {"filter_segmenter": needs_segmenter, "segmenter_knobs": dict(segmenter_knobs or {})}
    run_workflow(
        bundle.config("train"),
        **shared,
        profile=profile,
        retrain=retrain,
        knobs=dict(train_knobs or {}),
        **(filter_knobs if has_filter else {}),
        **{switch: knobs[switch] for switch in switches if switch in knobs},
    )
    trained = time.perf_counter()
    synthetic_dir = os.path.join(out, "synthetic")
    run_workflow(
        [inference, *profile_files(str(bundle.root), profile, part="inference")],
        workflow_type="infer",
        **shared,
        output_dir=synthetic_dir,
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
    augment.__doc__ = augment.__doc__.replace("{methods}", ", ".join(sorted(find_methods())))  # for --help
    run_command_line(augment)
