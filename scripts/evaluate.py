"""Does augmentation help? Every arm trains the same segmenter with the same budget and seeds, scored on the test split.

Two protocols::

    # DESIGN "Evaluation protocol": real, real + classic aug, real + each synthetic set, its controls
    python -m scripts.evaluate --data ../shared/data/usgra_nerve_vessel --labelled 10 \\
        --synthetic outputs/augpaint/usgra_nerve_vessel_n10_s0/synthetic --seeds 3

    # GAUDA Tables 1-4: the GAUDA bundle's downstream schemes on one train/validation split
    python -m scripts.evaluate --data ../shared/data/usgra_nerve_vessel --labelled 10 \\
        --schemes "[baseline,aug,as,gauda]" --generator outputs/gauda/usgra_nerve_vessel_n10_s0/models \\
        --synthetic outputs/gauda/usgra_nerve_vessel_n10_s0/synthetic --guidance_sweep "[0,1,3,5]"

Every arm trains for the same number of iterations on the same labelled subset (chosen by ``--seed`` exactly as
``scripts.augment`` chose it) with training seeds 0..seeds-1. The first arm (real, or the first scheme) is the
reference every other arm is compared to by a paired difference over seeds with a 95 % interval. Scheme arms carve
``val_fraction`` of the labelled subset out for validation (GAUDA's uncertainty and Adaptive Sampling's weights are
computed on it; every scheme keeps its best network by validation Dice).

Generator quality of every synthetic set: FID and KID in the bottleneck space of the reference segmenter, the
Real-Only score (the reference segmenters scored on the synthetic pairs), the Synthetic-Only score (an arm trained on
the synthetic pairs alone, scored on the test split) and, for class-conditional sets, how often the masks show exactly
the conditioned classes. ``--guidance_sweep`` synthesises a set per guidance strength w from ``--generator`` and
reports the same (GAUDA Fig. 5).

Writes ``results.json`` and ``results.md`` to ``--out`` and prints the Markdown tables.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np

from common.controls import BACKGROUNDS, make_control_set
from common.data import load_splits, read_class_names, resolve_dataset
from common.evaluation import (
    check_provenance,
    class_condition_agreement,
    load_synthetic_pairs,
    load_trained_segmenter,
    score_segmenter,
    synthetic_feature_distances,
    train_segmenter,
)
from common.metrics import SeedSummary, markdown_table, paired_difference, summarise_seeds
from common.stages import run_workflow

logger = logging.getLogger("scripts.evaluate")

GAUDA_CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "gauda" / "configs"
SCHEMES = ("baseline", "aug", "as", "gauda")
METRICS = ("dice", "iou")
METRIC_NAMES = {"dice": "Dice", "iou": "IoU"}


def scheme_config_files(scheme: str) -> list[str]:
    """The GAUDA downstream configs layered over the segmentation bundle for ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme '{scheme}'; choose from {SCHEMES}")
    files = [GAUDA_CONFIGS / "train_downstream_baseline.json"]
    if scheme != "baseline":
        files.append(GAUDA_CONFIGS / f"train_downstream_{scheme}.json")
    return [str(f) for f in files]


def _datalist_path(synthetic: str) -> str:
    path = os.path.join(synthetic, "datalist.json") if os.path.isdir(synthetic) else synthetic
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no synthetic datalist at {path}")
    return path


def _set_name(datalist_path: str) -> str:
    """``<method> (<run folder>)`` of a synthetic set written by ``scripts.augment``."""
    with open(datalist_path) as f:
        method = json.load(f).get("method", "synthetic")
    return f"{method} ({os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(datalist_path))))})"


def _image_label(entries: list[dict]) -> list[dict]:
    """Training entries without the provenance keys (a batch needs the same keys in every item)."""
    return [{"image": e["image"], "label": e["label"]} for e in entries]


def _arm(data: list[dict], classic: bool = False, val: Sequence[dict] = (), config_files=(), overrides=None) -> dict:
    return {
        "data": data,
        "classic": classic,
        "val": list(val),
        "config_files": list(config_files),
        "overrides": dict(overrides or {}),
    }


def build_arms(
    labelled: list[dict], synthetic: Sequence[str], out: str, controls: bool, image_size: int, seed: int
) -> dict[str, dict]:
    """DESIGN's arms: real, real + classic aug, real + each synthetic set and, for inpainting sets, its controls."""
    arms = {"real": _arm(labelled), "real + classic aug": _arm(labelled, classic=True)}
    for datalist in synthetic:
        name = f"real + {_set_name(datalist)}"
        pairs = load_synthetic_pairs(datalist)
        arms[name] = _arm(labelled + _image_label(pairs))
        if controls and any(p.get("source_label") for p in pairs):
            for background in BACKGROUNDS:
                control_dir = os.path.join(out, "controls", f"{len(arms):02d}_{background}")
                control = make_control_set(datalist, control_dir, background, labelled, image_size, seed)
                arms[f"{name} control: {background} background"] = _arm(
                    labelled + _image_label(load_synthetic_pairs(control))
                )
    return arms


def build_scheme_arms(
    schemes: Sequence[str], train: list[dict], val: list[dict], generator: str | None, knobs: dict
) -> dict[str, dict]:
    """One arm per GAUDA downstream scheme, all on the same train/validation split."""
    if not val:
        raise ValueError("the downstream schemes need validation pairs: set val_fraction > 0")
    if "gauda" in schemes and generator is None:
        raise ValueError("scheme 'gauda' needs --generator: the models folder of a trained GAUDA generator")
    arms = {}
    for scheme in schemes:
        overrides = {"bundle_root": str(GAUDA_CONFIGS.parent), **knobs}
        if scheme == "gauda":
            overrides["generator_ckpt_dir"] = os.path.abspath(generator)
        arms[scheme] = _arm(train, val=val, config_files=scheme_config_files(scheme), overrides=overrides)
    return arms


def evaluate(
    data: str | None = None,
    labelled: int | None = None,
    synthetic: str | Sequence[str] = (),
    schemes: str | Sequence[str] = (),
    generator: str | None = None,
    seed: int = 0,
    seeds: int = 3,
    iterations: int = 1000,
    val_interval: int = 200,
    val_fraction: float = 0.2,
    image_size: int = 64,
    controls: bool = True,
    synthetic_only: bool = True,
    downstream_knobs: dict | None = None,
    guidance_sweep: Sequence[float] = (),
    sweep_samples: int = 20,
    generator_knobs: dict | None = None,
    out: str = "outputs/evaluate",
) -> dict:
    """Run the protocol and return the results (also written to ``out``).

    Args:
        data: data set folder or datalist JSON; default the embedded phantoms.
        labelled: size of the labelled subset (None: the whole training split).
        synthetic: one or more synthetic sets (folder with datalist.json, or the datalist itself).
        schemes: GAUDA downstream schemes to compare instead of DESIGN's arms (``baseline``, ``aug``, ``as``,
            ``gauda``; "all" for the four).
        generator: models folder of a trained GAUDA generator (``scripts.augment gauda`` writes ``<out>/models``),
            for the ``gauda`` scheme and the guidance sweep.
        seed: the split seed; must be the ``--seed`` the synthetic sets and the generator were made with.
        seeds: training seeds per arm (0..seeds-1); report mean +- std and the paired difference to the reference.
        iterations: training iterations of every arm.
        val_interval: iterations between validations of the scheme arms (GAUDA refreshes its pool there).
        val_fraction: part of the labelled subset the scheme arms validate on.
        image_size: model input size; test masks are scored at this size.
        controls: add the inpainting controls (same kept regions on noise / another real image).
        synthetic_only: add an arm per synthetic set trained on its pairs alone (the Synthetic-Only score).
        downstream_knobs: config ids for every scheme arm, e.g. ``"{'bayesian_model': 'mc_dropout'}"``.
        guidance_sweep: guidance strengths w to synthesise ``sweep_samples`` pairs per class set at (needs
            ``generator``).
        sweep_samples: pairs per class set and guidance strength.
        generator_knobs: config ids the generator was trained with (e.g. network sizes) for the sweep's sampling.
        out: folder for results.json, results.md, controls, sweep sets and per-run checkpoints; a run finished by an
            earlier call with the same settings (its ``scores.json``) is reused, so an interrupted evaluation resumes.
    """
    synthetic = [synthetic] if isinstance(synthetic, str) else list(synthetic)
    schemes = _scheme_list(schemes)
    data = resolve_dataset(data)
    splits = load_splits(data, seed=seed, num_labelled=labelled, val_fraction=val_fraction if schemes else 0.0)
    labelled_pairs, test_pairs = splits["train"] + splits["val"], splits["test"]
    if not test_pairs:
        raise ValueError(f"{data} has no test split to score on")
    if guidance_sweep and generator is None:
        raise ValueError("--guidance_sweep needs --generator: the models folder of a trained GAUDA generator")
    class_names = read_class_names(data)
    datalists = [_datalist_path(s) for s in synthetic]
    for datalist in datalists:
        check_provenance(datalist, labelled_pairs, test_pairs)
    os.makedirs(out, exist_ok=True)
    if schemes:
        arms = build_scheme_arms(schemes, splits["train"], splits["val"], generator, dict(downstream_knobs or {}))
    else:
        arms = build_arms(labelled_pairs, datalists, out, controls, image_size, seed)
    if synthetic_only:  # with the reference's model (the baseline scheme's, without validation, with schemes)
        model = {"config_files": scheme_config_files(schemes[0]), "overrides": downstream_knobs} if schemes else {}
        for datalist in datalists:
            arms[f"synthetic only: {_set_name(datalist)}"] = _arm(_image_label(load_synthetic_pairs(datalist)), **model)
    reference = next(iter(arms))
    logger.info(f"{len(arms)} arms x {seeds} seeds, {iterations} iterations each, {len(test_pairs)} test pairs")

    run_dirs = {
        name: [os.path.join(out, "runs", f"arm{i:02d}_seed{s}") for s in range(seeds)] for i, name in enumerate(arms)
    }
    per_seed: dict[str, list[dict]] = {name: [] for name in arms}
    for name, arm in arms.items():
        for train_seed, run_dir in enumerate(run_dirs[name]):
            scores = _run_arm(
                name, arm, run_dir, train_seed, iterations, val_interval, data, image_size, test_pairs, len(class_names)
            )
            per_seed[name].append(scores)
            logger.info(
                f"{name} seed {train_seed}: mean foreground Dice {_class_mean(scores['dice']):.3f} "
                f"({len(arm['data'])} training pairs)"
            )

    results = {
        "labelled": labelled,
        "iterations": iterations,
        "seeds": seeds,
        "reference": reference,
        "class_names": class_names,
        "arms": summarise(per_seed, class_names, reference),
    }
    real_images = splits["train"] + splits["val"] + splits["unlabelled"]

    def reference_networks() -> list:
        return [_load_arm(arms[reference], run_dir, data, image_size) for run_dir in run_dirs[reference]]

    if datalists or guidance_sweep:
        networks = reference_networks()
        sets = {_set_name(d): load_synthetic_pairs(d) for d in datalists}
        results["generator_quality"] = {
            name: generator_quality(
                networks, real_images, pairs, class_names, image_size, results["arms"].get(f"synthetic only: {name}")
            )
            for name, pairs in sets.items()
        }
        if guidance_sweep:
            results["guidance_sweep"] = {
                f"{w:g}": generator_quality(
                    networks,
                    real_images,
                    _synthesise(generator, w, sweep_samples, data, labelled, seed, image_size, out, generator_knobs),
                    class_names,
                    image_size,
                )
                for w in guidance_sweep
            }
    markdown = to_markdown(results)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown)
    print(markdown)
    return results


def _scheme_list(schemes: str | Sequence[str]) -> list[str]:
    if isinstance(schemes, str):
        schemes = SCHEMES if schemes == "all" else [s.strip() for s in schemes.split(",") if s.strip()]
    schemes = list(schemes)
    for scheme in schemes:
        scheme_config_files(scheme)
    return schemes


def _run_arm(
    name: str,
    arm: dict,
    run_dir: str,
    seed: int,
    iterations: int,
    val_interval: int,
    data: str,
    image_size: int,
    test_pairs: list[dict],
    num_classes: int,
) -> dict[str, np.ndarray]:
    """Per-image, per-class test scores of one arm and seed: trained now, or read from a finished earlier run."""
    run = {
        "arm": name,
        "seed": seed,
        "iterations": iterations,
        "training_pairs": len(arm["data"]),
        "validation_pairs": len(arm["val"]),
        "val_interval": val_interval if arm["val"] else None,
        "config_files": [os.path.basename(f) for f in arm["config_files"]],
        "overrides": json.loads(json.dumps(arm["overrides"], sort_keys=True, default=str)),
    }
    scores = _finished_run(run_dir, run)
    if scores is not None:
        return scores
    start = time.perf_counter()
    network = train_segmenter(
        arm["data"],
        run_dir,
        seed=seed,
        iterations=iterations,
        dataset_dir=data,
        image_size=image_size,
        classic_augmentation=arm["classic"],
        val_data=arm["val"],
        val_interval=val_interval if arm["val"] else None,
        config_files=arm["config_files"],
        **arm["overrides"],
    )
    scores = score_segmenter(network, test_pairs, num_classes, image_size)
    _record_run(run_dir, run, scores)
    logger.info(f"{name} seed {seed}: trained in {time.perf_counter() - start:.0f} s")
    return scores


def _load_arm(arm: dict, run_dir: str, data: str, image_size: int):
    return load_trained_segmenter(run_dir, data, image_size, arm["config_files"], **arm["overrides"])


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


def _record_run(run_dir: str, run: dict, scores: dict[str, np.ndarray]) -> None:
    temp = os.path.join(run_dir, "scores.json.tmp")
    with open(temp, "w") as f:
        json.dump({"run": run, "scores": {k: v.tolist() for k, v in scores.items()}}, f)
    os.replace(temp, os.path.join(run_dir, "scores.json"))


def _nan_reduce(function, values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """``np.nanmean`` / ``np.nanmedian`` without the warning for all-NaN slices (they stay NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(values, axis=axis)


def _class_mean(per_image: np.ndarray) -> float:
    """Mean over foreground classes of the per-class mean over images (the paper's "mean")."""
    return float(_nan_reduce(np.nanmean, _nan_reduce(np.nanmean, per_image, axis=0)[1:]))


def score_summary(runs: Sequence[np.ndarray], class_names: Sequence[str]) -> dict:
    """One metric over seeds: per class, the class mean, and the mean and median over test images of each image's
    mean foreground score; each as mean +- std over seeds (``runs``: one ``(N, C)`` per-image array per seed)."""
    per_image = [_nan_reduce(np.nanmean, r[:, 1:], axis=1) for r in runs]
    return {
        "per_class": {
            c: summarise_seeds([float(_nan_reduce(np.nanmean, r[:, i])) for r in runs])._asdict()
            for i, c in enumerate(class_names)
            if i > 0
        },
        "class_mean": summarise_seeds([_class_mean(r) for r in runs])._asdict(),
        "sample_mean": summarise_seeds([float(_nan_reduce(np.nanmean, x)) for x in per_image])._asdict(),
        "sample_median": summarise_seeds([float(_nan_reduce(np.nanmedian, x)) for x in per_image])._asdict(),
        "per_seed_class_mean": [_class_mean(r) for r in runs],
    }


def summarise(per_seed: dict[str, list[dict]], class_names: Sequence[str], reference: str) -> dict:
    """Per arm and metric, :func:`score_summary`, and the paired difference of the class mean to ``reference``."""
    arms = {
        name: {m: score_summary([s[m] for s in runs], class_names) for m in METRICS} for name, runs in per_seed.items()
    }
    for name, arm in arms.items():
        if name != reference:
            arm["difference_to_reference"] = {
                m: paired_difference(arm[m]["per_seed_class_mean"], arms[reference][m]["per_seed_class_mean"])._asdict()
                for m in METRICS
            }
    return arms


def generator_quality(
    networks: Sequence,
    real_pairs: Sequence[dict],
    synthetic_pairs: Sequence[dict],
    class_names: Sequence[str],
    image_size: int,
    synthetic_only_arm: dict | None = None,
) -> dict:
    """FID/KID (first reference network's bottleneck), Real-Only Dice over the reference networks, the
    Synthetic-Only arm's Dice when given, and condition agreement for class-conditional sets."""
    real_only = [score_segmenter(n, synthetic_pairs, len(class_names), image_size)["dice"] for n in networks]
    quality = {
        **synthetic_feature_distances(networks[0], real_pairs, synthetic_pairs, image_size),
        "real_only_dice": score_summary(real_only, class_names),
    }
    if synthetic_only_arm is not None:
        quality["synthetic_only_dice"] = synthetic_only_arm["dice"]
    if any(p.get("condition") is not None for p in synthetic_pairs):
        quality["condition_agreement"] = class_condition_agreement(synthetic_pairs, len(class_names))
    return quality


def _synthesise(
    generator: str,
    guidance: float,
    num_samples: int,
    data: str,
    labelled: int | None,
    seed: int,
    image_size: int,
    out: str,
    knobs: dict | None,
) -> list[dict]:
    """Pairs of the GAUDA generator in ``generator`` at guidance ``w``, for every class set of the labelled masks."""
    output_dir = os.path.join(out, "guidance", f"w{guidance:g}")
    run_workflow(
        str(GAUDA_CONFIGS / "inference.json"),
        workflow_type="infer",
        bundle_root=str(GAUDA_CONFIGS.parent),
        dataset_dir=data,
        num_labelled=labelled,
        seed=seed,
        image_size=image_size,
        ckpt_dir=os.path.abspath(generator),
        output_dir=output_dir,
        guidance=float(guidance),
        num_samples=num_samples,
        progress=False,
        **dict(knobs or {}),
    )
    return load_synthetic_pairs(os.path.join(output_dir, "datalist.json"))


def _score_row(name: str, arm: dict, metric: str, class_names: Sequence[str], reference: str) -> dict:
    row = {
        "arm": name,
        **{c: SeedSummary(**arm[metric]["per_class"][c]) for c in class_names[1:]},
        "class mean": SeedSummary(**arm[metric]["class_mean"]),
        "sample mean": SeedSummary(**arm[metric]["sample_mean"]),
        "sample median": SeedSummary(**arm[metric]["sample_median"]),
    }
    diff = arm.get("difference_to_reference", {}).get(metric)
    if diff is not None:
        gain = " (gain)" if diff["low"] > 0 else " (loss)" if diff["high"] < 0 else ""
        row[f"diff to {reference} [95% CI]"] = f"{diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]{gain}"
    return row


def _quality_row(name: str, quality: dict) -> dict:
    agreement = quality.get("condition_agreement")
    synthetic_only = quality.get("synthetic_only_dice")
    return {
        "set": name,
        "FID": f"{quality['fid']:.3f}",
        "KID": f"{quality['kid']:.4f}",
        "Real-Only Dice": SeedSummary(**quality["real_only_dice"]["class_mean"]),
        "Synthetic-Only Dice": SeedSummary(**synthetic_only["class_mean"]) if synthetic_only else "",
        "exact class set": f"{agreement['exact']:.2f}" if agreement else "",
        "pairs": quality["num_synthetic"],
    }


def to_markdown(results: dict) -> str:
    """The Dice and IoU tables (per class, class mean, sample mean and median, difference to the reference) and the
    generator quality and guidance sweep tables."""
    class_names, reference = results["class_names"], results["reference"]
    diff = f"diff to {reference} [95% CI]"
    columns = ["arm", *class_names[1:], "class mean", "sample mean", "sample median", diff]
    text = (
        f"Test-split scores, {results['labelled'] or 'all'} labelled, {results['iterations']} iterations, "
        f"{results['seeds']} seeds (mean ± std over seeds)\n"
    )
    for metric in METRICS:
        rows = [_score_row(name, arm, metric, class_names, reference) for name, arm in results["arms"].items()]
        text += f"\n{METRIC_NAMES[metric]}\n\n" + markdown_table(rows, columns)
    quality_columns = ["set", "FID", "KID", "Real-Only Dice", "Synthetic-Only Dice", "exact class set", "pairs"]
    if results.get("generator_quality"):
        rows = [_quality_row(name, q) for name, q in results["generator_quality"].items()]
        text += "\nGenerator quality (FID/KID in the reference segmenter's bottleneck features)\n\n"
        text += markdown_table(rows, quality_columns)
    if results.get("guidance_sweep"):
        rows = [{**_quality_row(f"w = {w}", q)} for w, q in results["guidance_sweep"].items()]
        text += "\nGuidance sweep\n\n" + markdown_table(rows, quality_columns)
    return text


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    fire.Fire(evaluate, serialize=lambda results: None)
