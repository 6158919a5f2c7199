"""The efficacy study's report: ``docs/efficacy.md`` from what :mod:`scripts.study` wrote.

Tables: the selection (every cell's gain over ``real + classic aug`` on the selection-validation pairs, the chosen
one marked); the test split at the selection's labelled count (every cell and its controls, with its generator's
quality; the per-class Dice of the chosen cells); the learning curve (the chosen cells at every labelled count).
Figures: the gain over classic augmentation with its 95 % interval against the labelled count and, for the cells that
declare a relative generator ``budget``, against that budget; the chosen cells' contact sheets, copied next to the
report. Parts not run yet are said to be missing, never filled in.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.evaluation.arms import CLASSIC, REAL
from common.evaluation.report import format_difference
from common.files import atomic_files, read_json
from common.metrics import SeedSummary, markdown_table

__all__ = ["classic_gain", "write_report"]

BEGIN, END = "<!-- study results: begin -->", "<!-- study results: end -->"


def _dice(arm: Mapping | None) -> SeedSummary | str:
    return SeedSummary(**arm["dice"]["class_mean"]) if arm else ""


def classic_gain(arm: Mapping) -> Mapping | None:
    """An arm's paired Dice difference to ``real + classic aug``."""
    return arm["differences"].get("classic", {}).get("dice")


def _set_arm(results: Mapping, set_name: str) -> Mapping | None:
    return results["arms"].get(f"{CLASSIC} + {set_name}")


def _set_name(results: Mapping, method: str, cell: str) -> str | None:
    """The evaluation's name of the set of ``method``'s ``cell`` (its run folder is the cell's name)."""
    name = f"{method} ({cell})"
    return name if _set_arm(results, name) else None


def _cell_gain(results: Mapping, method: str, cell: str) -> Mapping | None:
    """The Dice difference of ``real + classic aug + <cell>`` to ``real + classic aug``; None when not evaluated."""
    name = _set_name(results, method, cell)
    return classic_gain(_set_arm(results, name)) if name else None


def _selection_section(plan: Mapping, out: str) -> str:
    selection = read_json(os.path.join(out, "selection.json"))
    if selection is None:
        return "\n### Selection\n\nNot run yet.\n"
    rows = []
    for method, cells in plan["methods"].items():
        for cell in cells:
            gain = selection["gains"].get(f"{method}/{cell['name']}")
            chosen = selection["chosen"][method] == cell["name"]
            rows.append(
                {
                    "method": method,
                    "cell": cell["name"],
                    "validation gain [95% CI]": format_difference(gain),
                    "chosen": "yes" if chosen else "",
                }
            )
    return (
        f"\n### Selection ({selection['labelled']} labelled pairs, scored on the selection-validation pairs)\n\n"
        + markdown_table(rows, ["method", "cell", "validation gain [95% CI]", "chosen"])
    )


def _grid_section(plan: Mapping, results: Mapping | None, labelled: Any) -> str:
    title = f"\n### Test split, every cell ({labelled} labelled pairs)\n\n"
    if results is None:
        return title + "Not run yet.\n"
    rows = [
        {"arm": name, "Dice": _dice(results["arms"].get(name)), "vs real + classic aug [95% CI]": ""}
        for name in (REAL, CLASSIC)
    ]
    for method, cells in plan["methods"].items():
        for cell in cells:
            name = _set_name(results, method, cell["name"])
            if name is None:
                continue
            arm = _set_arm(results, name)
            quality = results.get("generator_quality", {}).get(name, {})
            regenerated = quality.get("regenerated")
            rows.append(
                {
                    "arm": f"{CLASSIC} + {name}",
                    "Dice": _dice(arm),
                    "vs real + classic aug [95% CI]": format_difference(classic_gain(arm)),
                    "FID": f"{quality['fid']:.1f}" if "fid" in quality else "",
                    "Real-Only Dice": f"{quality['real_only_dice']['class_mean']['mean']:.3f}" if quality else "",
                    "regenerated": f"{regenerated:.2f}" if regenerated is not None else "",
                }
            )
            for control, control_arm in results["arms"].items():
                if control.startswith(f"{CLASSIC} + {name} control:"):
                    rows.append(
                        {
                            "arm": f"... {control}",
                            "Dice": _dice(control_arm),
                            "vs real + classic aug [95% CI]": format_difference(classic_gain(control_arm)),
                        }
                    )
    columns = ["arm", "Dice", "vs real + classic aug [95% CI]", "FID", "Real-Only Dice", "regenerated"]
    return title + markdown_table(rows, columns)


def _curve(plan: Mapping, out: str, chosen: Mapping[str, str]) -> dict[str, dict[Any, Mapping]]:
    """Per method, per labelled count: the gain of its chosen cell over classic augmentation."""
    counts = plan.get("test", {}).get("learning_curve", [])
    curve: dict[str, dict[Any, Mapping]] = {method: {} for method in chosen}
    for labelled in counts:
        results = read_json(
            os.path.join(out, "test", f"n{labelled if labelled else 'all'}", "evaluation", "results.json")
        )
        if results is None:
            continue
        for method, cell in chosen.items():
            gain = _cell_gain(results, method, cell)
            if gain is not None:
                curve[method][labelled] = gain
    return curve


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


def _budget_series(plan: Mapping, results: Mapping | None) -> dict[str, list[tuple[float, Mapping]]]:
    """Per method, ``(budget, gain)`` of its cells that declare a relative generator ``budget``."""
    series: dict[str, list[tuple[float, Mapping]]] = {}
    for method, cells in plan["methods"].items():
        for cell in cells:
            gain = _cell_gain(results, method, cell["name"]) if results and "budget" in cell else None
            if gain is not None:
                series.setdefault(method, []).append((float(cell["budget"]), gain))
    return series


def _chosen_section(results: Mapping | None, chosen: Mapping[str, str], out: str, grid_count: Any, folder: str) -> str:
    """Per-class Dice of the references and the chosen cells; their contact sheets copied into ``folder``."""
    if results is None:
        return ""
    classes = results["class_names"][1:]
    names = [REAL, CLASSIC] + [
        f"{CLASSIC} + {name}" for m, c in chosen.items() if (name := _set_name(results, m, c)) is not None
    ]
    rows = [
        {"arm": name, **{c: f"{results['arms'][name]['dice']['per_class'][c]['mean']:.3f}" for c in classes}}
        for name in names
    ]
    text = "\n### Per-class Dice of the chosen cells\n\n" + markdown_table(rows, ["arm", *classes])
    for method, cell in chosen.items():
        sheet = os.path.join(out, "test", f"n{grid_count}", method, cell, "synthetic", "contact_sheet.png")
        if os.path.isfile(sheet):
            copy = f"efficacy_{method}_contact_sheet.png"
            shutil.copyfile(sheet, os.path.join(folder, copy))
            text += (
                f"\n{method} ({cell}), the first pairs of its test-stage set:\n\n![{method} contact sheet]({copy})\n"
            )
    return text


def write_report(plan: Mapping, out: str, report: str, plan_path: str) -> str:
    """Write the study's results between the report's result markers (the plan text around them is kept; a new
    report gets a heading). Returns ``report``."""
    selection = read_json(os.path.join(out, "selection.json"))
    grid_count = plan.get("selection", {}).get("labelled", 10)
    grid = read_json(os.path.join(out, "test", f"n{grid_count}", "evaluation", "results.json"))
    text = f"{BEGIN}\n\n## Results\n\nPlan `{plan_path}`, study folder `{out}`.\n"
    folder = os.path.dirname(os.path.abspath(report))
    text += _selection_section(plan, out) + _grid_section(plan, grid, grid_count)
    if selection is not None:
        text += _chosen_section(grid, selection["chosen"], out, grid_count, folder)
    budget = _write_gain_figure(_budget_series(plan, grid), os.path.join(folder, "efficacy_budget.png"), "budget")
    if budget:
        text += "\n![gain over classic augmentation against the generator budget](efficacy_budget.png)\n"
    text += "\n### Learning curve (the chosen cells)\n\n"
    if selection is None:
        text += "Not run yet.\n"
    else:
        curve = _curve(plan, out, selection["chosen"])
        counts = plan.get("test", {}).get("learning_curve", [])
        rows = [
            {
                "method": f"{method} ({selection['chosen'][method]})",
                **{f"n = {n or 'all'}": format_difference(by_count.get(n)) for n in counts},
            }
            for method, by_count in curve.items()
        ]
        text += markdown_table(rows, ["method", *[f"n = {n or 'all'}" for n in counts]])
        series = {m: [(n or 0, d) for n, d in by_count.items()] for m, by_count in curve.items()}
        figure = _write_gain_figure(series, os.path.join(folder, "efficacy_curve.png"), "labelled pairs (0: all)")
        if figure:
            text += "\n![gain over classic augmentation against the labelled count](efficacy_curve.png)\n"
    text += f"\n{END}\n"
    existing = Path(report).read_text() if os.path.isfile(report) else "# Efficacy study\n\n"
    if BEGIN in existing and END in existing:
        existing = existing[: existing.index(BEGIN)] + existing[existing.index(END) + len(END) + 1 :]
    with atomic_files(report) as (temp,), open(temp, "w") as f:
        f.write(existing.rstrip("\n") + "\n\n" + text)
    return report
