"""The efficacy study: at which budget and with which settings does each method improve a segmenter?

One command runs a declared plan (``configs/study/<name>.json``, see ``docs/efficacy.md`` for the protocol) and
resumes where it stopped: every generator stage, synthetic pair and trained arm of a finished part is reused
(``scripts.augment`` and ``scripts.evaluate`` reuse what matches). Three stages, in order:

1. ``selection``: the labelled subset (``selection.labelled`` pairs, split ``seed``) is split once more into a
   selection-training part and a selection-validation part (``selection.fraction``, seeded). Every cell of every
   method trains its generator on the selection-training pairs only, and the shared evaluation scores
   ``real + classic aug + <cell>`` against ``real + classic aug`` on the selection-validation pairs. The cell with the
   highest mean gain is chosen (ties: the first listed). The test split is never read here.
2. ``test``: each cell's generator is trained on the whole labelled subset and the evaluation scores every cell, its
   controls, ``real`` and ``real + classic aug`` on the test split (``test.seeds`` seeds); then the chosen cell of
   each method at every count of the learning curve (``test.learning_curve``).
3. ``report``: ``docs/efficacy.md`` (or ``--report``) from what the stages wrote.

::

    python -m scripts.study configs/study/usgra.json                     # all three stages
    python -m scripts.study configs/study/usgra.json --stages "['selection']"
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from common.data import load_splits
from common.data.pairs import class_declaration
from common.evaluation import evaluate
from common.evaluation.arms import CLASSIC, synthetic_set_name
from common.files import read_json, write_json
from scripts.augment import augment
from scripts.cli import run_command_line
from scripts.study_report import classic_gain, write_report

logger = logging.getLogger("scripts.study")

STAGES = ("selection", "test", "report")
DECLARATION_KEYS = ("lateral_pairs", "flips")  # orientation keys a derived datalist keeps


def read_plan(path: str) -> dict[str, Any]:
    """The plan, checked: every method names a list of uniquely named cells."""
    plan = read_json(path)
    if not isinstance(plan, dict) or not plan.get("methods"):
        raise ValueError(f"{path}: a study plan needs 'methods' (method -> its cells); see docs/efficacy.md")
    for method, cells in plan["methods"].items():
        names = [cell.get("name") for cell in cells]
        if not names or None in names or len(set(names)) != len(names):
            raise ValueError(f"{path}: every cell of {method} needs a unique 'name', got {names}")
    return plan


def selection_data(data: str, labelled: int, seed: int, fraction: float, out: str) -> str:
    """A datalist of the labelled subset split into selection-training (``training``) and selection-validation
    (``test``) pairs, the same carve the evaluation makes for validation; written once into ``out``, and refused there
    when it holds other pairs (every set and run of the selection depends on it)."""
    path = os.path.join(out, "datalist.json")
    splits = load_splits(data, seed=seed, num_labelled=labelled, val_fraction=fraction)
    names, declaration = class_declaration(data)
    datalist = {
        "name": f"selection split of {data} ({labelled} labelled, seed {seed}, {fraction} held out)",
        "labels": {str(i): name for i, name in enumerate(names)},
        **{key: declaration[key] for key in DECLARATION_KEYS if key in declaration},
        "training": [{"image": p["image"], "label": p["label"]} for p in splits["train"]],
        "test": [{"image": p["image"], "label": p["label"]} for p in splits["val"]],
    }
    if os.path.isfile(path):
        existing = read_json(path)
        if [existing.get(k) for k in ("training", "test")] != [datalist[k] for k in ("training", "test")]:
            raise ValueError(f"{path} holds another selection split; give the study another --out")
        return path
    write_json(path, datalist)
    return path


def _training_key(cell: Mapping[str, Any]) -> str:
    """A folder name for the generator a cell trains: cells with the same profile, training knobs and image size
    share it."""
    training = {"profile": cell.get("profile", "quick"), "train_knobs": cell.get("train_knobs") or {}}
    if cell.get("image_size"):
        training["image_size"] = cell["image_size"]
    return hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:10]


def make_sets(
    plan: Mapping[str, Any], data: str, labelled: int | None, out: str, cells: Mapping[str, Sequence[Mapping]]
) -> dict[str, str]:
    """The synthetic set of every ``method -> cells``, trained on ``labelled`` pairs of ``data``; by cell label. A cell
    with ``masks_from`` makes images for the masks of that earlier cell (same masks, only the image step differs)."""
    made = {}
    for method, method_cells in cells.items():
        for cell in method_cells:
            knobs = dict(cell.get("knobs", {}))
            if "masks_from" in cell:  # images for the masks another cell made (DiffuseExpand's label_maps)
                source = f"{method}/{cell['masks_from']}"
                if source not in made:
                    raise ValueError(
                        f"cell {method}/{cell['name']}: masks_from '{cell['masks_from']}' must be listed first"
                    )
                knobs["label_maps"] = os.path.join(os.path.dirname(made[source]), "masks")
            made[f"{method}/{cell['name']}"] = augment(
                method,
                data=data,
                labelled=labelled,
                seed=plan.get("seed", 0),
                image_size=cell.get("image_size"),  # None: the bundle's own (the arms' size is the plan's)
                out=os.path.join(out, method, cell["name"]),
                models=os.path.join(out, method, "models_" + _training_key(cell)),
                profile=cell.get("profile", "quick"),
                train_knobs=cell.get("train_knobs"),
                segmenter_knobs=plan.get("segmenter_knobs"),
                allow_outside_paths=True,
                **knobs,
            )
    return made


def run_evaluation(
    plan: Mapping[str, Any], part: Mapping[str, Any], data: str, labelled: int | None, sets: Sequence[str], **options
) -> dict:
    """The shared evaluation of ``sets`` with the plan's budget for this ``part`` (selection or test)."""
    return evaluate(
        data=data,
        labelled=labelled,
        synthetic=list(sets),
        seed=plan.get("seed", 0),
        seeds=part.get("seeds", 5),
        iterations=part.get("iterations", 2000),
        image_size=plan.get("image_size") or 64,
        knobs=plan.get("arm_knobs"),
        allow_outside_paths=True,
        **options,
    )


def gain_over_classic(results: Mapping, datalist: str) -> dict:
    """The paired difference of ``real + classic aug + <set>`` to ``real + classic aug`` (mean Dice, 95 % CI)."""
    return classic_gain(results["arms"][f"{CLASSIC} + {synthetic_set_name(datalist)}"])


def select(plan: Mapping[str, Any], out: str) -> dict[str, str]:
    """Stage 1: each method's chosen cell by its gain on the selection-validation pairs; writes ``selection.json``."""
    chosen_path = os.path.join(out, "selection.json")
    part = plan.get("selection", {})
    labelled = part.get("labelled", 10)
    data = selection_data(plan["data"], labelled, plan.get("seed", 0), part.get("fraction", 0.2), out)
    sets = make_sets(plan, data, None, os.path.join(out, "selection"), plan["methods"])
    results = run_evaluation(
        plan, part, data, None, list(sets.values()), controls=False, synthetic_only=False, plain_synthetic=False,
        out=os.path.join(out, "selection", "evaluation"),
    )  # fmt: skip
    gains = {label: gain_over_classic(results, path) for label, path in sets.items()}
    chosen = {}
    for method, cells in plan["methods"].items():
        ranked = sorted(cells, key=lambda cell: -gains[f"{method}/{cell['name']}"]["mean"])  # stable: ties keep order
        chosen[method] = ranked[0]["name"]
        logger.info(f"{method}: chose '{chosen[method]}' ({gains[f'{method}/{chosen[method]}']['mean']:+.3f})")
    write_json(chosen_path, {"chosen": chosen, "gains": gains, "labelled": labelled, "data": data})
    return chosen


def score_on_test(plan: Mapping[str, Any], out: str, chosen: Mapping[str, str]) -> None:
    """Stage 2: every cell at the selection's labelled count, then the chosen cells along the learning curve."""
    part = plan.get("test", {})
    grid_count = plan.get("selection", {}).get("labelled", 10)
    counts = part.get("learning_curve", [grid_count])
    for labelled in [grid_count, *[n for n in counts if n != grid_count]]:
        cells = (
            plan["methods"]
            if labelled == grid_count
            else {m: [c for c in cells if c["name"] == chosen[m]] for m, cells in plan["methods"].items()}
        )
        folder = os.path.join(out, "test", f"n{labelled if labelled else 'all'}")
        sets = make_sets(plan, plan["data"], labelled, folder, cells)
        run_evaluation(
            plan, part, plan["data"], labelled, list(sets.values()), out=os.path.join(folder, "evaluation"),
            synthetic_only=part.get("synthetic_only", False),
        )  # fmt: skip


def study(
    plan: str,
    out: str | None = None,
    stages: Sequence[str] = STAGES,
    report: str = "docs/efficacy.md",
) -> str:
    """Run the study ``plan`` (a JSON file) into ``out`` (default ``outputs/study/<plan name>``) and write the report.

    Args:
        plan: the plan file, e.g. ``configs/study/usgra.json``.
        out: the study's folder (generators, synthetic sets, evaluations, ``selection.json``).
        stages: any of "selection", "test", "report", run in that order.
        report: the Markdown report to write (its figures go next to it).
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    settings = read_plan(plan)
    out = out or os.path.join("outputs", "study", os.path.splitext(os.path.basename(plan))[0])
    os.makedirs(out, exist_ok=True)
    chosen_path = os.path.join(out, "selection.json")
    if "selection" in stages:
        select(settings, out)
    if "test" in stages:
        if not os.path.isfile(chosen_path):
            raise FileNotFoundError(f"{chosen_path} not found: run the selection stage first")
        score_on_test(settings, out, read_json(chosen_path)["chosen"])
    if "report" in stages:
        write_report(settings, out, report, plan_path=plan)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    run_command_line(study, serialize=lambda _: None)
