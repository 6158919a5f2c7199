"""The efficacy study's report: ``docs/efficacy.md`` from the study's record (see :mod:`scripts.study`).

Tables: the selection (every cell's gain over ``real + classic aug`` on the selection-validation pairs, the chosen
one marked); the test split at the selection's labelled count (the references, every cell with its generator's quality,
the chosen cells' controls; the per-class Dice of the chosen cells); the learning curve (the chosen cells at every
labelled count). Figures: the gain over classic augmentation with its 95 % interval against the labelled count and, for
the cells that declare a relative generator ``budget``, against that budget; the chosen cells' contact sheets (kept in
the record). Parts not run yet are said to be missing, never filled in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.evaluation.arms import CLASSIC, REAL
from common.evaluation.report import format_difference
from common.files import atomic_files, read_json
from common.metrics import SeedSummary, markdown_table, paired_difference

__all__ = ["budget_trend", "cell_gain", "headline_section", "test_folder", "write_report"]

BEGIN, END = "<!-- study results: begin -->", "<!-- study results: end -->"
GOAL = 0.05  # issue 14: real + classic + synthetic beats real + classic by this much mean foreground Dice


def test_folder(labelled: int | None) -> str:
    """The test stage's folder for a labelled count (``n10``; ``nall`` for the whole training split)."""
    return f"n{labelled if labelled else 'all'}"


def _dice(arm: Mapping | None) -> SeedSummary | str:
    return SeedSummary(**arm["dice"]["class_mean"]) if arm else ""


def _cell_arm(results: Mapping, method: str, cell: str) -> Mapping | None:
    """``real + classic aug + <cell>`` (the evaluation names a set after its method and its run folder, the cell)."""
    return results["arms"].get(f"{CLASSIC} + {method} ({cell})")


def _classic_gain(arm: Mapping | None) -> Mapping | None:
    return arm["differences"].get("classic", {}).get("dice") if arm else None


def cell_gain(results: Mapping | None, method: str, cell: str) -> Mapping | None:
    """The paired Dice difference of ``real + classic aug + <cell>`` to ``real + classic aug`` (mean, 95 % CI);
    None when the cell was not evaluated."""
    return _classic_gain(_cell_arm(results, method, cell)) if results else None


def _recorded(record: str, *parts: str) -> Mapping | None:
    """The evaluation results a cell's record entry holds (``record/<stage...>/<method>/<cell>.json``), or None."""
    entry = read_json(os.path.join(record, *parts[:-1], f"{parts[-1]}.json"))
    return entry["results"] if entry else None


def _selection_section(plan: Mapping, record: str, selection: Mapping | None) -> str:
    """Every recorded cell's gain on the selection-validation pairs; the chosen ones once the selection is complete."""
    rows, missing = [], []
    for method, cells in plan["methods"].items():
        for cell in cells:
            results = _recorded(record, "selection", method, cell["name"])
            if results is None:
                missing.append(f"{method} ({cell['name']})")
                continue
            quality = results.get("generator_quality", {}).get(f"{method} ({cell['name']})", {})
            rows.append(
                {
                    "method": method,
                    "cell": cell["name"],
                    "validation gain [95% CI]": format_difference(cell_gain(results, method, cell["name"])),
                    "FID": f"{quality['fid']:.1f}" if "fid" in quality else "",
                    "pairs": quality.get("num_synthetic", ""),
                    "chosen": "yes" if selection and selection["chosen"][method] == cell["name"] else "",
                }
            )
    labelled = plan.get("selection", {}).get("labelled", 10)
    text = f"\n### Selection ({labelled} labelled pairs, scored on the selection-validation pairs)\n\n"
    if not rows:
        return text + "Not run yet.\n"
    text += markdown_table(rows, ["method", "cell", "validation gain [95% CI]", "FID", "pairs", "chosen"])
    return text + (f"\nNot run yet: {', '.join(missing)}.\n" if missing else "")


def _cell_rows(results: Mapping, method: str, cell: str) -> list[dict]:
    """A cell's row (Dice, gain, generator quality) and those of its controls."""
    name = f"{method} ({cell})"
    arm = _cell_arm(results, method, cell)
    quality = results.get("generator_quality", {}).get(name, {})
    regenerated = quality.get("regenerated")
    rows = [
        {
            "arm": f"{CLASSIC} + {name}",
            "Dice": _dice(arm),
            "vs real + classic aug [95% CI]": format_difference(_classic_gain(arm)),
            "FID": f"{quality['fid']:.1f}" if "fid" in quality else "",
            "Real-Only Dice": f"{quality['real_only_dice']['class_mean']['mean']:.3f}" if quality else "",
            "regenerated": f"{regenerated:.2f}" if regenerated is not None else "",
        }
    ]
    for other, other_arm in results["arms"].items():
        if other.startswith(f"{CLASSIC} + {name} control:") or other == f"{REAL} + {name}":
            rows.append(
                {
                    "arm": f"... {other}",
                    "Dice": _dice(other_arm),
                    "vs real + classic aug [95% CI]": format_difference(_classic_gain(other_arm)),
                }
            )
    return rows


def _grid_section(plan: Mapping, grid: Mapping[str, Mapping | None], labelled: Any) -> str:
    """The references and every recorded cell on the test split at the grid's labelled count."""
    title = f"\n### Test split, every cell ({labelled} labelled pairs)\n\n"
    scored = {label: results for label, results in grid.items() if results}
    if not scored:
        return title + "Not run yet.\n"
    references = next(iter(scored.values()))
    rows = [
        {"arm": name, "Dice": _dice(references["arms"].get(name)), "vs real + classic aug [95% CI]": ""}
        for name in (REAL, CLASSIC)
    ]
    missing = []
    for method, cells in plan["methods"].items():
        for cell in cells:
            results = scored.get(f"{method}/{cell['name']}")
            if results is None:
                missing.append(f"{method} ({cell['name']})")
            else:
                rows.extend(_cell_rows(results, method, cell["name"]))
    columns = ["arm", "Dice", "vs real + classic aug [95% CI]", "FID", "Real-Only Dice", "regenerated"]
    text = title + markdown_table(rows, columns)
    text += (
        "\nEach cell is scored against the references trained in the same working folder (the rows above, from "
        "its first cell); a cell's gain is paired with its own references.\n"
    )
    return text + (f"\nNot run yet: {', '.join(missing)}.\n" if missing else "")


def _versus_control(results: Mapping, method: str, cell: str) -> tuple[str, Mapping] | None:
    """The paired Dice difference of ``real + classic aug + <cell>`` to its strongest control (the control arm with
    the highest mean Dice), with that control's name; None without controls."""
    prefix = f"{CLASSIC} + {method} ({cell}) control: "
    controls = {name: arm for name, arm in results["arms"].items() if name.startswith(prefix)}
    arm = _cell_arm(results, method, cell)
    if not controls or arm is None:
        return None
    name, control = max(controls.items(), key=lambda item: item[1]["dice"]["class_mean"]["mean"])
    difference = paired_difference(arm["dice"]["per_seed_class_mean"], control["dice"]["per_seed_class_mean"])
    return name[len(prefix) :], difference._asdict()


def headline_section(grid: Mapping, chosen: Mapping[str, str]) -> str:
    """The question of issue 14 per method: does its chosen cell beat classic augmentation by the goal, with an
    interval above zero, and its own strongest control?"""
    rows = []
    for method, cell in chosen.items():
        results = grid.get(f"{method}/{cell}")
        if not results:
            continue
        gain, control = cell_gain(results, method, cell), _versus_control(results, method, cell)
        met = gain["mean"] >= GOAL and gain["low"] > 0 and control is not None and control[1]["low"] > 0
        rows.append(
            {
                "method (chosen cell)": f"{method} ({cell})",
                CLASSIC: _dice(results["arms"].get(CLASSIC)),
                "+ synthetic": _dice(_cell_arm(results, method, cell)),
                "gain [95% CI]": format_difference(gain),
                "vs strongest control [95% CI]": f"{format_difference(control[1])} ({control[0]})" if control else "",
                "goal met": "yes" if met else "no",
            }
        )
    if not rows:
        return ""
    columns = ["method (chosen cell)", CLASSIC, "+ synthetic", "gain [95% CI]", "vs strongest control [95% CI]"]
    return (
        f"\n### Headline: the chosen cells on the test split\n\nThe goal: real + classic + synthetic beats real + "
        f"classic by >= {GOAL} mean foreground Dice with a 95 % interval above zero, and beats the method's strongest "
        f"control (interval above zero).\n\n" + markdown_table(rows, [*columns, "goal met"])
    )


def _chosen_section(plan: Mapping, grid: Mapping, chosen: Mapping[str, str], record: str, folder: str) -> str:
    """Per-class Dice of the references and the chosen cells; links to their contact sheets in the record."""
    scored = {m: grid.get(f"{m}/{c}") for m, c in chosen.items() if grid.get(f"{m}/{c}")}
    if not scored:
        return ""
    classes = next(iter(scored.values()))["class_names"][1:]
    rows = []
    for method, results in scored.items():
        names = ([REAL, CLASSIC] if not rows else []) + [f"{CLASSIC} + {method} ({chosen[method]})"]
        rows.extend(
            {"arm": name, **{c: f"{results['arms'][name]['dice']['per_class'][c]['mean']:.3f}" for c in classes}}
            for name in names
        )
    text = "\n### Per-class Dice of the chosen cells\n\n" + markdown_table(rows, ["arm", *classes])
    grid_folder = test_folder(plan.get("selection", {}).get("labelled", 10))
    for method in scored:
        sheet = os.path.join(record, "test", grid_folder, method, f"{chosen[method]}.png")
        if os.path.isfile(sheet):
            link = os.path.relpath(sheet, folder)
            text += f"\n{method} ({chosen[method]}), the first pairs of its test-stage set:\n\n![{method}]({link})\n"
    return text


def _curve_section(plan: Mapping, record: str, chosen: Mapping[str, str], folder: str) -> str:
    """The chosen cells at every labelled count of the learning curve, and the figure of their gains."""
    counts = plan.get("test", {}).get("learning_curve", [])
    rows, series = [], {}
    for method, cell in chosen.items():
        for labelled in counts:
            results = _recorded(record, "test", test_folder(labelled), method, cell)
            if results is None:
                continue
            gain = cell_gain(results, method, cell)
            series.setdefault(f"{method} ({cell})", []).append((labelled or 0, gain))
            rows.append(
                {
                    "method": f"{method} ({cell})",
                    "labelled": labelled or "all",
                    REAL: _dice(results["arms"].get(REAL)),
                    CLASSIC: _dice(results["arms"].get(CLASSIC)),
                    "+ synthetic": _dice(_cell_arm(results, method, cell)),
                    "gain [95% CI]": format_difference(gain),
                }
            )
    if not rows:
        return "Not run yet.\n"
    text = markdown_table(rows, ["method", "labelled", REAL, CLASSIC, "+ synthetic", "gain [95% CI]"])
    figure = _write_gain_figure(series, os.path.join(folder, "efficacy_curve.png"), "labelled pairs (0: all)")
    if figure:
        text += "\n![gain over classic augmentation against the labelled count](efficacy_curve.png)\n"
    return text


def _write_gain_figure(series: Mapping[str, Sequence[tuple[float, Mapping]]], path: str, x_label: str) -> str | None:
    """Gain over classic augmentation with its 95 % interval against ``x`` per series; None when nothing to plot."""
    if not any(series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        points = sorted(points, key=lambda point: point[0])
        if not points:
            continue
        means = [d["mean"] for _, d in points]
        errors = [[d["mean"] - d["low"] for _, d in points], [d["high"] - d["mean"] for _, d in points]]
        axis.errorbar([x for x, _ in points], means, yerr=errors, marker="o", capsize=3, label=label)
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_xlabel(x_label)
    axis.set_ylabel("Dice gain over real + classic aug")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _budget_series(plan: Mapping, grid: Mapping[str, Mapping | None]) -> dict[str, list[tuple[float, Mapping]]]:
    """Per method, ``(budget, gain)`` of its cells that declare a relative generator ``budget``."""
    series: dict[str, list[tuple[float, Mapping]]] = {}
    for method, cells in plan["methods"].items():
        for cell in cells:
            gain = cell_gain(grid.get(f"{method}/{cell['name']}"), method, cell["name"])
            if "budget" in cell and gain is not None:
                series.setdefault(method, []).append((float(cell["budget"]), gain))
    return series


def budget_trend(points: Sequence[tuple[float, float]], target: float = GOAL) -> dict[str, float | None] | None:
    """The least-squares line of the gain against log2 of the budget: the gain at budget 1, its change per doubling,
    and the budget at which the line reaches ``target`` (an extrapolation; None when the line does not rise). None
    for fewer than two budgets."""
    if len({budget for budget, _ in points}) < 2:
        return None
    per_doubling, at_one = np.polyfit(np.log2([budget for budget, _ in points]), [gain for _, gain in points], 1)
    reaches = float(2.0 ** ((target - at_one) / per_doubling)) if per_doubling > 0 else None
    return {"at_one": float(at_one), "per_doubling": float(per_doubling), "reaches_target": reaches}


def _budget_section(series: Mapping[str, Sequence[tuple[float, Mapping]]]) -> str:
    """Per method, the gain at each budget and the fitted trend, with the extrapolated budget of the goal."""
    rows = []
    for method, points in series.items():
        trend = budget_trend([(budget, gain["mean"]) for budget, gain in points])
        if trend is None:
            reaches = ""
        elif trend["reaches_target"] is None:
            reaches = "never (the gain does not rise with the budget)"
        else:
            reaches = f"{trend['reaches_target']:.3g} x quick (extrapolated)"
        rows.append(
            {
                "method": method,
                **{f"x{budget:g}": format_difference(gain) for budget, gain in sorted(points, key=lambda p: p[0])},
                "change per doubling": f"{trend['per_doubling']:+.3f}" if trend else "",
                f"budget for +{GOAL:.2f}": reaches,
            }
        )
    if not rows:
        return ""
    budgets = sorted({f"x{budget:g}" for points in series.values() for budget, _ in points}, key=lambda b: float(b[1:]))
    text = "\n### Gain against the generator budget (test split)\n\n" + markdown_table(
        rows, ["method", *budgets, "change per doubling", f"budget for +{GOAL:.2f}"]
    )
    return text + (
        "\nThe trend is a least-squares line of the mean gain against log2 of the budget (training iterations relative "
        "to the quick profile); the budget where it reaches the goal is an extrapolation from few points, not a "
        "measurement.\n"
    )


def write_report(plan: Mapping, record: str, report: str, plan_path: str) -> str:
    """Write the study's results from its ``record`` between the report's result markers (the plan text around them
    is kept; a new report gets a heading). Returns ``report``."""
    selection = read_json(os.path.join(record, "selection.json"))
    grid_count = plan.get("selection", {}).get("labelled", 10)
    grid = {
        f"{method}/{cell['name']}": _recorded(record, "test", test_folder(grid_count), method, cell["name"])
        for method, cells in plan["methods"].items()
        for cell in cells
    }
    folder = os.path.dirname(os.path.abspath(report))
    text = f"{BEGIN}\n\n## Results\n\nPlan `{plan_path}`, record `{os.path.relpath(record, folder)}`.\n"
    text += headline_section(grid, selection["chosen"]) if selection else ""
    text += _selection_section(plan, record, selection) + _grid_section(plan, grid, grid_count)
    if selection is not None:
        text += _chosen_section(plan, grid, selection["chosen"], record, folder)
    series = _budget_series(plan, grid)
    text += _budget_section(series)
    if _write_gain_figure(series, os.path.join(folder, "efficacy_budget.png"), "budget (x quick)"):
        text += "\n![gain over classic augmentation against the generator budget](efficacy_budget.png)\n"
    text += "\n### Learning curve (the chosen cells)\n\n"
    text += _curve_section(plan, record, selection["chosen"], folder) if selection else "Not run yet.\n"
    text += f"\n{END}\n"
    existing = Path(report).read_text() if os.path.isfile(report) else "# Efficacy study\n\n"
    if BEGIN in existing and END in existing:
        existing = existing[: existing.index(BEGIN)] + existing[existing.index(END) + len(END) + 1 :]
    with atomic_files(report) as (temp,), open(temp, "w") as f:
        f.write(existing.rstrip("\n") + "\n\n" + text)
    return report
