"""The evaluation's numbers and how they are shown: summaries over seeds, Markdown tables, the per-class figure.

Scores of one arm are per image and class for every seed. The summary of a metric reduces images, then classes
(the class mean is the mean over foreground classes of the per-class mean over images), then seeds (mean +- std), and
also gives the mean and median over test images of each image's mean foreground score. Each arm is compared with
its references (``real`` and ``classic``) by the paired difference of the class mean over seeds with a 95 % Student-t
interval; a difference is a gain (or a loss) only when that interval excludes zero.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from common.files import atomic_files
from common.metrics import SeedSummary, markdown_table, paired_difference, summarise_seeds, t_half_width

__all__ = [
    "METRICS",
    "class_mean",
    "format_difference",
    "score_summary",
    "summarise",
    "to_markdown",
    "write_class_figure",
]

METRICS = ("dice", "iou")
METRIC_NAMES = {"dice": "Dice", "iou": "IoU"}
ROLES = {"real": "real", "classic": "classic aug"}


def _nan_reduce(function, values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """``np.nanmean`` / ``np.nanmedian`` without the warning for all-NaN slices (they stay NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(values, axis=axis)


def class_mean(per_image: np.ndarray) -> float:
    """Mean over foreground classes of the per-class mean over images (the papers' "mean")."""
    return float(_nan_reduce(np.nanmean, _nan_reduce(np.nanmean, per_image, axis=0)[1:]))


def score_summary(runs: Sequence[np.ndarray], class_names: Sequence[str]) -> dict:
    """One metric over seeds (``runs``: one ``(N, C)`` per-image array per seed): per class, the class mean, and the
    mean and median over test images of each image's mean foreground score; each as mean +- std over seeds."""
    per_image = [_nan_reduce(np.nanmean, r[:, 1:], axis=1) for r in runs]
    return {
        "per_class": {
            c: summarise_seeds([float(_nan_reduce(np.nanmean, r[:, i])) for r in runs])._asdict()
            for i, c in enumerate(class_names)
            if i > 0
        },
        "class_mean": summarise_seeds([class_mean(r) for r in runs])._asdict(),
        "sample_mean": summarise_seeds([float(_nan_reduce(np.nanmean, x)) for x in per_image])._asdict(),
        "sample_median": summarise_seeds([float(_nan_reduce(np.nanmedian, x)) for x in per_image])._asdict(),
        "per_seed_class_mean": [class_mean(r) for r in runs],
    }


def summarise(
    per_seed: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    class_names: Sequence[str],
    references: Mapping[str, Mapping[str, str]],
) -> dict:
    """Per arm and metric, :func:`score_summary`, and the paired difference of the class mean to each reference arm
    (``references[arm] = {"real": name, "classic": name}``; an arm is not compared with itself)."""
    arms = {
        name: {m: score_summary([s[m] for s in runs], class_names) for m in METRICS} for name, runs in per_seed.items()
    }
    for name, arm in arms.items():
        arm["differences"] = {}
        for role, reference in references.get(name, {}).items():
            if reference == name or reference not in arms:
                continue
            arm["differences"][role] = {
                "reference": reference,
                **{
                    m: paired_difference(
                        arm[m]["per_seed_class_mean"], arms[reference][m]["per_seed_class_mean"]
                    )._asdict()
                    for m in METRICS
                },
            }
    return arms


def format_difference(difference: Mapping | None) -> str:
    """``+0.012 [-0.020, +0.044]``, with "(gain)" or "(loss)" when the interval excludes zero; "" for none."""
    if not difference:
        return ""
    verdict = " (gain)" if difference["low"] > 0 else " (loss)" if difference["high"] < 0 else ""
    return f"{difference['mean']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}]{verdict}"


def _difference_cell(difference: Mapping | None, metric: str) -> str:
    return format_difference(difference[metric] if difference else None)


def _score_row(name: str, arm: Mapping, metric: str, class_names: Sequence[str]) -> dict:
    row = {
        "arm": name,
        **{c: SeedSummary(**arm[metric]["per_class"][c]) for c in class_names[1:]},
        "class mean": SeedSummary(**arm[metric]["class_mean"]),
        "sample mean": SeedSummary(**arm[metric]["sample_mean"]),
        "sample median": SeedSummary(**arm[metric]["sample_median"]),
    }
    for role, label in ROLES.items():
        row[f"vs {label} [95% CI]"] = _difference_cell(arm["differences"].get(role), metric)
    return row


def _sides_cell(laterality: Mapping | None) -> str | None:
    """``0.95 (19/20)``: the synthetic masks keeping the real masks' left and right, of those showing a pair; None
    for data without lateral pairs."""
    if not laterality:
        return None
    if not laterality["checked"]:
        return "n/a (no mask shows a pair)"
    return f"{laterality['fraction']:.2f} ({laterality['kept']}/{laterality['checked']})"


def _quality_row(name: str, quality: Mapping) -> dict:
    agreement = quality.get("condition_agreement")
    laterality = quality.get("laterality")
    synthetic_only = quality.get("synthetic_only_dice")
    return {
        "set": name,
        "FID": quality["fid"] if not math.isnan(quality["fid"]) else f"n/a ({quality['num_synthetic']} pairs)",
        "KID": f"{quality['kid']:.4f}" if not math.isnan(quality["kid"]) else f"n/a ({quality['num_synthetic']} pairs)",
        "Real-Only Dice": SeedSummary(**quality["real_only_dice"]["class_mean"]),
        "Synthetic-Only Dice": SeedSummary(**synthetic_only["class_mean"]) if synthetic_only else "",
        "exact class set": f"{agreement['exact']:.2f}" if agreement else "",
        "sides kept": _sides_cell(laterality),
        "regenerated": f"{quality['regenerated']:.2f}" if quality.get("regenerated") is not None else None,
        "MS-SSIM within source": quality.get("diversity"),
        "pairs": quality["num_synthetic"],
    }


OPTIONAL_COLUMNS = ("sides kept", "regenerated")  # shown when a row has them: lateral pairs, inpainting sets


def _shown(columns: Sequence[str], rows: Sequence[Mapping]) -> list[str]:
    """``columns`` without the optional ones no row has (data without lateral pairs, sets made from noise)."""
    return [c for c in columns if c not in OPTIONAL_COLUMNS or any(row.get(c) is not None for row in rows)]


def to_markdown(results: Mapping) -> str:
    """The Dice and IoU tables (per class, class mean, sample mean and median, difference to each reference) and the
    generator quality and sweep tables."""
    class_names = results["class_names"]
    columns = ["arm", *class_names[1:], "class mean", "sample mean", "sample median"]
    columns += [f"vs {label} [95% CI]" for label in ROLES.values()]
    text = (
        f"Test-split scores on {results['test_data']}: trained on {results['labelled'] or 'all'} labelled pairs of "
        f"{results['data']} (every arm trains on {results['training_pairs']}; a scheme on "
        f"{results.get('scheme_training_pairs', results['training_pairs'])} and {results['validation_pairs']} "
        "validation pairs), "
        f"{results['iterations']} iterations, final network, {results['seeds']} seeds (mean ± std over seeds; "
        "differences are of the class mean, paired over seeds)\n"
    )
    for metric in METRICS:
        rows = [_score_row(name, arm, metric, class_names) for name, arm in results["arms"].items()]
        text += f"\n{METRIC_NAMES[metric]}\n\n" + markdown_table(rows, columns)
    quality_columns = [
        "set",
        "FID",
        "KID",
        "Real-Only Dice",
        "Synthetic-Only Dice",
        "exact class set",
        "sides kept",
        "regenerated",
        "MS-SSIM within source",
        "pairs",
    ]
    if results.get("generator_quality"):
        rows = [_quality_row(name, q) for name, q in results["generator_quality"].items()]
        text += "\nGenerator quality (FID/KID in the reference segmenter's bottleneck features)\n\n"
        text += markdown_table(rows, _shown(quality_columns, rows))
    if results.get("sweep"):
        rows = [_quality_row(f"{value}", q) for value, q in results["sweep"]["sets"].items()]
        text += f"\nSweep of {results['sweep']['knob']} ({results['sweep']['method']})\n\n"
        text += markdown_table(rows, _shown(quality_columns, rows))
    return text


def write_class_figure(results: Mapping, path: str, metric: str = "dice") -> str:
    """Horizontal bars of the per-class and class-mean score of every arm (one group per arm, the first arm on top)
    with 95 % intervals over seeds (``mean +- t * std / sqrt(n)``), written as a PNG to ``path``; the axis ends just
    past the highest bar, so small differences stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    class_names = [*results["class_names"][1:], "class mean"]
    arms = list(results["arms"])
    height = 0.8 / len(class_names)
    figure, axes = plt.subplots(figsize=(9.0, max(3.0, 0.22 * len(arms) * len(class_names) + 1.2)))
    highest = 0.0
    for index, class_name in enumerate(class_names):
        means, errors = [], []
        for arm in arms:
            summary = results["arms"][arm][metric]
            cell = summary["class_mean"] if class_name == "class mean" else summary["per_class"][class_name]
            half = t_half_width(cell["std"], cell["n"])
            means.append(cell["mean"])
            errors.append(0.0 if math.isnan(half) else half)
        highest = max([highest, *(m + e for m, e in zip(means, errors, strict=True) if not math.isnan(m))])
        positions = np.arange(len(arms)) + (index - (len(class_names) - 1) / 2) * height
        label = class_name.split("(")[0].strip() or class_name  # "nerve (inferred ...)" -> "nerve"
        axes.barh(positions, means, height, xerr=errors, capsize=2, label=label)
    axes.set_yticks(np.arange(len(arms)), [textwrap.fill(arm, 48) for arm in arms], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(f"test {METRIC_NAMES[metric]} (mean over seeds, 95 % interval)")
    axes.set_xlim(0, min(1.0, 1.1 * highest + 0.02))
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    with atomic_files(path) as (temp,):
        figure.savefig(temp, format="png", dpi=120)
    plt.close(figure)
    return path
