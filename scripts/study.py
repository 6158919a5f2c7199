"""The efficacy study: at which budget and with which settings does each method improve a segmenter?

One command runs a declared plan (``configs/study/<name>.json``, see ``docs/efficacy.md`` for the protocol). Every
cell (a method's setting) is scored on its own, beside the references, and recorded at once in the study's record
(``docs/efficacy/<name>/``: the cell's settings and evaluation results, its contact sheet), which is small enough to
commit: a study resumes from it after an interruption or on another machine, and a recorded cell is never made or
trained again while its settings hold. Within one working folder, generators, synthetic pairs and trained arms are
reused too (``scripts.augment`` and ``scripts.evaluate`` reuse what matches). Three stages, in order:

1. ``selection``: the labelled subset (``selection.labelled`` pairs, split ``seed``) is split once more into a
   selection-training part and a selection-validation part (``selection.fraction``, seeded). Every cell of every
   method trains its generator on the selection-training pairs only, and the shared evaluation scores
   ``real + classic aug + <cell>`` against ``real + classic aug`` on the selection-validation pairs. The cell with the
   highest mean gain is chosen (ties: the first listed). The test split is never read here.
2. ``test``: generators are trained on the whole labelled subset and scored on the test split (``test.seeds``
   seeds): first each method's chosen cell with every arm and its controls; then the chosen cells at every count of
   the learning curve (``test.learning_curve``); then every other cell of the grid (``real + classic aug + <cell>``).
3. ``report``: ``docs/efficacy.md`` (or ``--report``) from the record.
4. ``profiles``: each method's chosen cell as its ``standard`` profile (``bundles/<method>/configs/standard.json``
   and ``standard_inference.json``, used by ``scripts.augment <method> --profile standard``). Not run by default: it
   changes the bundles.

::

    python -m scripts.study configs/study/usgra.json                     # selection, test, report
    python -m scripts.study configs/study/usgra.json --stages "['selection']" --workers 2
    python -m scripts.study configs/study/usgra.json --stages "['profiles']"  # the standard profiles
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from common.bundles import method_bundle
from common.data import load_splits
from common.data.pairs import class_declaration
from common.evaluation import evaluate
from common.evaluation.runs import PROTOCOL_VERSION, files_digest
from common.files import json_ready, read_json, record_matches, write_json
from scripts.augment import augment
from scripts.cli import run_command_line
from scripts.study_report import cell_gain, test_folder, write_report

logger = logging.getLogger("scripts.study")

STAGES = ("selection", "test", "report", "profiles")
# the arms for every other cell: real + classic aug + <cell> beside the references, the comparison that matters
COMPARISON_ARMS = {"controls": False, "synthetic_only": False, "plain_synthetic": False}
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


def chosen_arms(part: Mapping[str, Any]) -> dict[str, bool]:
    """The evaluation's arms for a chosen cell at the grid's labelled count: every arm and the method's controls."""
    return {"controls": True, "synthetic_only": part.get("synthetic_only", False), "plain_synthetic": True}


def _training_key(cell: Mapping[str, Any]) -> str:
    """A folder name for the generator a cell trains: cells with the same profile, training knobs and image size
    share it."""
    training = {"profile": cell.get("profile", "quick"), "train_knobs": cell.get("train_knobs") or {}}
    if cell.get("image_size"):
        training["image_size"] = cell["image_size"]
    return hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:10]


def make_set(plan: Mapping[str, Any], data: str, labelled: int | None, out: str, method: str, cell: Mapping) -> str:
    """The synthetic set of one ``cell`` of ``method`` (its datalist), trained on ``labelled`` pairs of ``data`` (made
    now or reused). A cell with ``masks_from`` makes images for the masks of that cell, which is made first."""
    knobs = dict(cell.get("knobs", {}))
    if "masks_from" in cell:  # images for the masks another cell made (DiffuseExpand's label_maps)
        sources = [c for c in plan["methods"][method] if c["name"] == cell["masks_from"]]
        if not sources or plan["methods"][method].index(sources[0]) > plan["methods"][method].index(cell):
            raise ValueError(f"cell {method}/{cell['name']}: masks_from '{cell['masks_from']}' must be listed first")
        source = make_set(plan, data, labelled, out, method, sources[0])
        knobs["label_maps"] = os.path.join(os.path.dirname(source), "masks")
    return augment(
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


def cell_settings(
    plan: Mapping[str, Any], part: Mapping[str, Any], data: str, labelled: int | None, cell: Mapping, arms: Mapping
) -> dict[str, Any]:
    """Everything that shapes a cell's recorded scores: the protocol, the contents of the training and test pairs,
    the arms' budget and knobs, the generator's settings and the cell itself. A recorded cell is reused only when
    these are equal."""
    splits = load_splits(data, seed=plan.get("seed", 0), num_labelled=labelled, allow_outside_paths=True)
    return json_ready(
        {
            "protocol": PROTOCOL_VERSION,
            "training_pairs": files_digest(splits["train"] + splits["val"]),
            "test_pairs": files_digest(splits["test"]),
            "seed": plan.get("seed", 0),
            "image_size": plan.get("image_size") or 64,
            "seeds": part.get("seeds", 5),
            "iterations": part.get("iterations", 2000),
            "arm_knobs": plan.get("arm_knobs"),
            "segmenter_knobs": plan.get("segmenter_knobs"),
            "arms": arms,
            "cell": cell,
        }
    )


def score_cells(
    plan: Mapping[str, Any],
    part: Mapping[str, Any],
    data: str,
    labelled: int | None,
    folder: str,
    record: str,
    cells: Sequence[tuple[str, Mapping, Mapping]],
    sheets: bool = False,
) -> dict[str, dict]:
    """The evaluation of every ``(method, cell, arms)`` on its own beside the references, by cell label
    (``method/cell``). A cell recorded in ``record`` with the same settings is read back (nothing is made or trained:
    the record carries a study to another machine); any other cell's set is made, scored and recorded at once, so an
    interrupted study loses at most one cell. ``arms`` are the evaluation's options (controls, plain_synthetic, ...),
    updated by the cell's own ``arms`` (e.g. ``synthetic_share``); the references train once per folder and are reused
    by every cell. ``sheets``: keep each set's contact sheet in the record too (``<cell>.png``, ~100 KB)."""
    scored = {}
    for method, cell, arms in cells:
        label = f"{method}/{cell['name']}"
        path = os.path.join(record, method, f"{cell['name']}.json")
        settings = cell_settings(plan, part, data, labelled, cell, arms)
        if record_matches(path, settings, key="settings"):
            scored[label] = read_json(path)["results"]
            logger.info(f"{label}: recorded in {path}")
            continue
        synthetic = make_set(plan, data, labelled, folder, method, cell)
        options = {**arms, **cell.get("arms", {})}  # a cell may set its own, e.g. synthetic_share
        results = run_evaluation(
            plan, part, data, labelled, [synthetic], out=os.path.join(folder, "evaluation"), **options
        )
        write_json(path, {"settings": settings, "results": results})
        sheet = os.path.join(os.path.dirname(synthetic), "contact_sheet.png")
        if sheets and os.path.isfile(sheet):
            shutil.copyfile(sheet, os.path.join(record, method, f"{cell['name']}.png"))
        scored[label] = results
    return scored


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
        workers=plan.get("workers", 1),
        **options,
    )


def select(plan: Mapping[str, Any], out: str, record: str) -> dict[str, str]:
    """Stage 1: each method's chosen cell by its gain on the selection-validation pairs; writes ``selection.json``
    into the record."""
    part = plan.get("selection", {})
    labelled = part.get("labelled", 10)
    data = selection_data(plan["data"], labelled, plan.get("seed", 0), part.get("fraction", 0.2), out)
    cells = [(method, cell, COMPARISON_ARMS) for method, cells in plan["methods"].items() for cell in cells]
    results = score_cells(
        plan, part, data, None, os.path.join(out, "selection"), os.path.join(record, "selection"), cells
    )
    gains = {f"{m}/{c['name']}": cell_gain(results[f"{m}/{c['name']}"], m, c["name"]) for m, c, _ in cells}
    chosen = {}
    for method, cells in plan["methods"].items():
        ranked = sorted(cells, key=lambda cell: -gains[f"{method}/{cell['name']}"]["mean"])  # stable: ties keep order
        chosen[method] = ranked[0]["name"]
        logger.info(f"{method}: chose '{chosen[method]}' ({gains[f'{method}/{chosen[method]}']['mean']:+.3f})")
    write_json(os.path.join(record, "selection.json"), {"chosen": chosen, "gains": gains, "labelled": labelled})
    return chosen


def score_on_test(plan: Mapping[str, Any], out: str, record: str, chosen: Mapping[str, str]) -> None:
    """Stage 2, most telling first: the chosen cells with every arm and control at the selection's labelled count;
    the chosen cells along the learning curve (against the references); then every other cell of the grid (against
    the references)."""
    part = plan.get("test", {})
    grid_count = plan.get("selection", {}).get("labelled", 10)
    chosen_cells = [(m, c) for m, cells in plan["methods"].items() for c in cells if c["name"] == chosen[m]]
    other_cells = [(m, c) for m, cells in plan["methods"].items() for c in cells if c["name"] != chosen[m]]
    steps = [(grid_count, [(m, c, chosen_arms(part)) for m, c in chosen_cells], True)]  # with contact sheets
    for labelled in part.get("learning_curve", []):
        if labelled != grid_count:
            steps.append((labelled, [(m, c, COMPARISON_ARMS) for m, c in chosen_cells], False))
    steps.append((grid_count, [(m, c, COMPARISON_ARMS) for m, c in other_cells], False))
    for labelled, cells, sheets in steps:
        name = test_folder(labelled)
        score_cells(plan, part, plan["data"], labelled, os.path.join(out, "test", name),
                    os.path.join(record, "test", name), cells, sheets)  # fmt: skip


def write_profiles(plan: Mapping[str, Any], record: str, roots: Mapping[str, str] | None = None) -> list[str]:
    """Each method's chosen cell as its ``standard`` profile, layered like ``paper``: ``configs/standard.json`` holds
    the cell's training knobs over the quick defaults, ``configs/standard_inference.json`` its generation knobs (no file
    when it has none). ``roots``: the bundle folder per method (default the repository's). Returns the files written."""
    selection = read_json(os.path.join(record, "selection.json"))
    if selection is None:
        raise FileNotFoundError(f"{record}/selection.json not found: run the selection stage first")
    written = []
    for method, name in selection["chosen"].items():
        cell = next(c for c in plan["methods"][method] if c["name"] == name)
        gain = selection["gains"][f"{method}/{name}"]
        note = (
            f"The standard CPU profile, chosen by the efficacy study (docs/efficacy.md): the cell '{name}' of "
            f"{plan.get('data')}, validation gain over real + classic aug {gain['mean']:+.3f} "
            f"[{gain['low']:+.3f}, {gain['high']:+.3f}]. The quick defaults with these settings."
        )
        configs = os.path.join(roots[method] if roots else str(method_bundle(method).root), "configs")
        for path, knobs in (
            ("standard.json", cell.get("train_knobs", {})),
            ("standard_inference.json", cell.get("knobs", {})),
        ):
            path = os.path.join(configs, path)
            if path.endswith("_inference.json") and not knobs:
                if os.path.isfile(path):
                    os.remove(path)
                continue
            write_json(path, {"profile_sources": {"note": note}, **knobs}, indent=4)
            written.append(path)
    return written


def study(
    plan: str,
    out: str | None = None,
    stages: Sequence[str] = STAGES[:3],
    report: str = "docs/efficacy.md",
    record: str | None = None,
    workers: int = 1,
) -> str:
    """Run the study ``plan`` (a JSON file) into ``out`` (default ``outputs/study/<plan name>``) and write the report.

    Args:
        plan: the plan file, e.g. ``configs/study/usgra.json``.
        out: the study's working folder (generators, synthetic sets, evaluation runs).
        stages: any of "selection", "test", "report", "profiles", run in that order.
        report: the Markdown report to write (its figures go next to it).
        record: the study's record (every scored cell, ``selection.json``, the contact sheets), small enough to commit:
            a study resumes from it on another machine; default ``<report folder>/efficacy/<plan name>``.
        workers: training runs of the evaluation at once (``scripts.evaluate --workers``); not part of the plan, the
            scores do not depend on it.
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    settings = {**read_plan(plan), "workers": workers}
    name = os.path.splitext(os.path.basename(plan))[0]
    out = out or os.path.join("outputs", "study", name)
    record = record or os.path.join(os.path.dirname(report), "efficacy", name)
    os.makedirs(out, exist_ok=True)
    chosen_path = os.path.join(record, "selection.json")
    if "selection" in stages:
        select(settings, out, record)
    if "test" in stages:
        if not os.path.isfile(chosen_path):
            raise FileNotFoundError(f"{chosen_path} not found: run the selection stage first")
        score_on_test(settings, out, record, read_json(chosen_path)["chosen"])
    if "report" in stages:
        write_report(settings, record, report, plan_path=plan)
    if "profiles" in stages:
        for path in write_profiles(settings, record):
            logger.info(f"wrote {path}")
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    run_command_line(study, serialize=lambda _: None)
