"""Does augmentation help? Train the same segmenter on real, real + classic aug, real + synthetic and the controls.

DESIGN ("Evaluation protocol")::

    python -m scripts.evaluate --data ../shared/data/usgra_nerve_vessel --labelled 10 \\
        --synthetic outputs/augpaint/usgra_nerve_vessel_n10_s0/synthetic --seeds 3

Every arm trains ``bundles/segmentation`` for the same number of iterations on the same labelled subset (chosen by
``--seed`` exactly as ``scripts.augment`` chose it) with training seeds 0..seeds-1, and is scored on the test split.
Writes ``results.json`` and ``results.md`` to ``--out`` and prints the Markdown table.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence

import fire
import numpy as np

from common.controls import BACKGROUNDS, make_control_set
from common.data import load_splits, read_class_names, resolve_dataset
from common.evaluation import (
    check_provenance,
    load_synthetic_pairs,
    load_trained_segmenter,
    score_segmenter,
    synthetic_feature_distances,
    train_segmenter,
)
from common.metrics import SeedSummary, markdown_table, paired_difference, summarise_seeds

logger = logging.getLogger("scripts.evaluate")


def _datalist_path(synthetic: str) -> str:
    path = os.path.join(synthetic, "datalist.json") if os.path.isdir(synthetic) else synthetic
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no synthetic datalist at {path}")
    return path


def _arm_name(datalist_path: str) -> str:
    with open(datalist_path) as f:
        method = json.load(f).get("method", "synthetic")
    return f"real + {method} ({os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(datalist_path))))})"


def _image_label(entries: list[dict]) -> list[dict]:
    """Training entries without the provenance keys (a batch needs the same keys in every item)."""
    return [{"image": e["image"], "label": e["label"]} for e in entries]


def build_arms(
    labelled: list[dict], synthetic: Sequence[str], out: str, controls: bool, image_size: int, seed: int
) -> dict[str, dict]:
    """Each arm: its training pairs and whether classic augmentation is on."""
    arms = {
        "real": {"data": labelled, "classic": False},
        "real + classic aug": {"data": labelled, "classic": True},
    }
    for datalist in synthetic:
        name = _arm_name(datalist)
        pairs = load_synthetic_pairs(datalist)
        arms[name] = {"data": labelled + _image_label(pairs), "classic": False}
        if controls and any(p.get("source_label") for p in pairs):
            for background in BACKGROUNDS:
                control_dir = os.path.join(out, "controls", f"{len(arms):02d}_{background}")
                control = make_control_set(datalist, control_dir, background, labelled, image_size, seed)
                arms[f"{name} control: {background} background"] = {
                    "data": labelled + _image_label(load_synthetic_pairs(control)),
                    "classic": False,
                }
    return arms


def evaluate(
    data: str | None = None,
    labelled: int | None = None,
    synthetic: str | Sequence[str] = (),
    seed: int = 0,
    seeds: int = 3,
    iterations: int = 1000,
    image_size: int = 64,
    controls: bool = True,
    out: str = "outputs/evaluate",
) -> dict:
    """Run the protocol and return the results (also written to ``out``).

    Args:
        data: data set folder or datalist JSON; default the embedded phantoms.
        labelled: size of the labelled subset (None: the whole training split).
        synthetic: one or more synthetic sets (folder with datalist.json, or the datalist itself).
        seed: the split seed; must be the ``--seed`` the synthetic sets were made with.
        seeds: training seeds per arm (0..seeds-1); report mean +- std and the paired difference to real.
        iterations: training iterations of every arm.
        image_size: model input size; test masks are scored at this size.
        controls: add the inpainting controls (same kept regions on noise / another real image).
        out: folder for results.json, results.md, controls and per-run checkpoints; a run finished by an earlier
            call with the same settings (its ``scores.json``) is reused, so an interrupted evaluation resumes.
    """
    synthetic = [synthetic] if isinstance(synthetic, str) else list(synthetic)
    data = resolve_dataset(data)
    splits = load_splits(data, seed=seed, num_labelled=labelled)
    labelled_pairs, test_pairs = splits["train"], splits["test"]
    if not test_pairs:
        raise ValueError(f"{data} has no test split to score on")
    class_names = read_class_names(data)
    datalists = [_datalist_path(s) for s in synthetic]
    for datalist in datalists:
        check_provenance(datalist, labelled_pairs, test_pairs)
    os.makedirs(out, exist_ok=True)
    arms = build_arms(labelled_pairs, datalists, out, controls, image_size, seed)
    logger.info(f"{len(arms)} arms x {seeds} seeds, {iterations} iterations each, {len(test_pairs)} test pairs")

    per_seed: dict[str, list[dict]] = {name: [] for name in arms}
    for arm_index, (name, arm) in enumerate(arms.items()):
        for train_seed in range(seeds):
            run_dir = os.path.join(out, "runs", f"arm{arm_index:02d}_seed{train_seed}")
            run = {"arm": name, "seed": train_seed, "iterations": iterations, "training_pairs": len(arm["data"])}
            per_class = _finished_run(run_dir, run)
            if per_class is None:
                start = time.perf_counter()
                network = train_segmenter(
                    arm["data"],
                    run_dir,
                    seed=train_seed,
                    iterations=iterations,
                    dataset_dir=data,
                    image_size=image_size,
                    classic_augmentation=arm["classic"],
                )
                scores = score_segmenter(network, test_pairs, len(class_names), image_size)
                per_class = {metric: np.nanmean(values, axis=0) for metric, values in scores.items()}
                _record_run(run_dir, run, per_class)
                logger.info(f"{name} seed {train_seed}: trained in {time.perf_counter() - start:.0f} s")
            per_seed[name].append(per_class)
            logger.info(
                f"{name} seed {train_seed}: mean foreground Dice {np.nanmean(per_class['dice'][1:]):.3f} "
                f"({len(arm['data'])} training pairs)"
            )

    results = summarise(per_seed, class_names, labelled, iterations, seeds)
    if datalists:
        real_images = splits["train"] + splits["unlabelled"]
        encoder = load_trained_segmenter(os.path.join(out, "runs", "arm00_seed0"), data, image_size)
        results["image_quality"] = {
            _arm_name(d): synthetic_feature_distances(encoder, real_images, load_synthetic_pairs(d), image_size)
            for d in datalists
        }
    markdown = to_markdown(results, class_names)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown)
    print(markdown)
    return results


def _finished_run(run_dir: str, run: dict) -> dict[str, np.ndarray] | None:
    """The scores of a run an earlier (interrupted) evaluation finished with the same settings, else None."""
    try:
        with open(os.path.join(run_dir, "scores.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if record.get("run") != run:
        return None
    return {metric: np.asarray(values, dtype=float) for metric, values in record["scores"].items()}


def _record_run(run_dir: str, run: dict, per_class: dict[str, np.ndarray]) -> None:
    temp = os.path.join(run_dir, "scores.json.tmp")
    with open(temp, "w") as f:
        json.dump({"run": run, "scores": {k: v.tolist() for k, v in per_class.items()}}, f)
    os.replace(temp, os.path.join(run_dir, "scores.json"))


def summarise(
    per_seed: dict[str, list[dict]], class_names: list[str], labelled: int | None, iterations: int, seeds: int
) -> dict:
    """Mean +- std over seeds per class and of the mean foreground score; paired difference to real-only."""
    reference = [float(np.nanmean(s["dice"][1:])) for s in per_seed["real"]]
    arms = {}
    for name, runs in per_seed.items():
        foreground = [float(np.nanmean(s["dice"][1:])) for s in runs]
        arm = {
            "mean_foreground_dice": summarise_seeds(foreground)._asdict(),
            "mean_foreground_iou": summarise_seeds([float(np.nanmean(s["iou"][1:])) for s in runs])._asdict(),
            "dice_per_class": {
                c: summarise_seeds([s["dice"][i] for s in runs])._asdict() for i, c in _foreground(class_names)
            },
            "iou_per_class": {
                c: summarise_seeds([s["iou"][i] for s in runs])._asdict() for i, c in _foreground(class_names)
            },
            "per_seed_mean_foreground_dice": foreground,
        }
        if name != "real":
            arm["difference_to_real"] = paired_difference(foreground, reference)._asdict()
        arms[name] = arm
    return {"labelled": labelled, "iterations": iterations, "seeds": seeds, "arms": arms}


def _foreground(class_names: list[str]) -> list[tuple[int, str]]:
    return list(enumerate(class_names))[1:]


def to_markdown(results: dict, class_names: list[str]) -> str:
    """One row per arm: per-class Dice, mean foreground Dice and IoU, and the paired difference to real-only."""
    foreground = [name for _, name in _foreground(class_names)]
    columns = ["arm", *[f"Dice {c}" for c in foreground], "mean Dice", "mean IoU", "diff to real [95% CI]"]
    rows = []
    for name, arm in results["arms"].items():
        row = {
            "arm": name,
            **{f"Dice {c}": SeedSummary(**arm["dice_per_class"][c]) for c in foreground},
            "mean Dice": SeedSummary(**arm["mean_foreground_dice"]),
            "mean IoU": SeedSummary(**arm["mean_foreground_iou"]),
        }
        diff = arm.get("difference_to_real")
        if diff is not None:
            gain = " (gain)" if diff["low"] > 0 else " (loss)" if diff["high"] < 0 else ""
            row["diff to real [95% CI]"] = f"{diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]{gain}"
        rows.append(row)
    title = (
        f"Test-split scores, {results['labelled'] or 'all'} labelled, {results['iterations']} iterations, "
        f"{results['seeds']} seeds (mean ± std over seeds)\n\n"
    )
    table = title + markdown_table(rows, columns)
    for name, quality in results.get("image_quality", {}).items():
        table += f"\n{name}: FID {quality['fid']:.3f}, KID {quality['kid']:.4f} (segmenter-encoder features)\n"
    return table


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    fire.Fire(evaluate, serialize=lambda results: None)
