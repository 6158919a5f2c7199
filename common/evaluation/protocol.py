"""The evaluation protocol: does augmentation help? One function, for every method.

:func:`evaluate` takes a data set and a labelled subset (chosen by ``seed`` exactly as ``scripts.augment`` chose it),
carves the validation pairs out of it, checks every synthetic set's provenance, builds the arms
(:mod:`common.evaluation.arms`), trains and scores every arm with every training seed (:mod:`common.evaluation.runs`),
summarises and compares them (:mod:`common.evaluation.report`) and measures generator quality
(:mod:`common.evaluation.quality`). ``test_data`` scores on another data set's test split (cross-domain: train on
one domain, test on another). Results go to ``results.json``, ``results.md`` and ``dice_per_class.png`` in ``out``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.bundles import find_methods, method_bundle
from common.checkpoints import load_network
from common.data import (
    Orientation,
    load_splits,
    read_class_names,
    read_orientation,
    resolve_dataset,
    validate_dataset,
    validate_pairs,
)
from common.files import atomic_files, read_json, write_json
from common.stages import profile_files, run_workflow

from .arms import REAL, Arm, scheme_arms, standard_arms, synthetic_arms, synthetic_set_name
from .provenance import check_provenance, load_synthetic_pairs, synthetic_datalist, synthetic_method
from .quality import (
    class_condition_agreement,
    lateral_side_agreement,
    regenerated_share,
    sample_diversity,
    synthetic_feature_distances,
)
from .report import score_summary, summarise, to_markdown, write_class_figure
from .runs import finished_run, score_segmenter, train_run

__all__ = ["EvaluationData", "build_arms", "evaluate", "parse_schemes", "write_results"]

logger = logging.getLogger(__name__)


def parse_schemes(schemes: str | Sequence[str]) -> dict[str, list[str]]:
    """``"gauda"`` (every scheme of the method) or ``"gauda:baseline,gauda:gauda"`` -> ``{method: [scheme, ...]}``."""
    items = [s.strip() for s in schemes.split(",")] if isinstance(schemes, str) else [str(s) for s in schemes]
    chosen: dict[str, list[str]] = {}
    for item in filter(None, items):
        method, _, scheme = item.partition(":")
        bundle = method_bundle(method)
        declared = list(bundle.evaluation.get("schemes", {}))
        if not declared:
            raise ValueError(f"method '{method}' declares no schemes")
        chosen.setdefault(method, [])
        chosen[method] += declared if scheme in ("", "all") else [scheme]
    return chosen


def _paths(value: str | Sequence[str]) -> list[str]:
    """A list of paths from a list, or from a command line's ``a``, ``a,b`` or ``[a,b]`` (fire leaves an unquoted
    list of paths a string)."""
    if not isinstance(value, str):
        return [str(v) for v in value]
    return [p.strip().strip("'\"") for p in value.strip().strip("[]").split(",") if p.strip().strip("'\"")]


def _run_dir(out: str, arm: str, seed: int) -> str:
    slug = "".join(c if c.isalnum() or c in "-." else "_" for c in arm).strip("_")
    return os.path.join(out, "runs", slug, f"seed{seed}")


def _generator_quality(networks: Sequence, sets: EvaluationData, datalist: str, image_size: int) -> dict[str, Any]:
    """FID/KID (first reference network's bottleneck), Real-Only Dice over the reference networks, diversity and,
    for class-conditional sets, condition agreement; for data with lateral pairs, their sides against the real
    labelled masks'; for inpainting sets (their datalist's generation settings say so), the share regenerated."""
    pairs = load_synthetic_pairs(datalist)
    class_names = sets.class_names
    real_only = [score_segmenter(n, pairs, len(class_names), image_size)["dice"] for n in networks]
    quality = {
        **synthetic_feature_distances(networks[0], sets.real_images, pairs, image_size),
        "real_only_dice": score_summary(real_only, class_names),
        "diversity": sample_diversity(pairs, image_size),
    }
    if any(p.get("condition") is not None for p in pairs):
        quality["condition_agreement"] = class_condition_agreement(pairs, len(class_names))
    if sets.orientation.lateral_pairs:
        quality["laterality"] = lateral_side_agreement(sets.labelled, pairs, sets.orientation)
    share = regenerated_share(pairs, read_json(datalist)["config"])
    if share is not None:
        quality["regenerated"] = share
    return quality


def _sweep_sets(
    method: str,
    generator: str,
    knob: str,
    values: Sequence[Any],
    samples: int,
    data: str,
    labelled: int | None,
    seed: int,
    image_size: int,
    out: str,
    generator_knobs: Mapping[str, Any],
) -> dict[str, str]:
    """One synthetic set per value of ``knob`` from the trained generator of ``method`` (its inference config); the
    datalist of each, by name."""
    bundle = method_bundle(method)
    sets = {}
    for value in values:
        output_dir = os.path.join(out, "sweep", method, f"{knob}_{value}")
        run_workflow(
            [bundle.config("inference"), *profile_files(str(bundle.root), "quick", part="inference")],
            workflow_type="infer",
            bundle_root=str(bundle.root),
            dataset_dir=data,
            num_labelled=labelled,
            seed=seed,
            image_size=image_size,
            ckpt_dir=os.path.abspath(generator),
            output_dir=output_dir,
            num_samples=samples,
            progress=False,
            **{**dict(generator_knobs), knob: value},
        )
        sets[f"{knob} = {value}"] = os.path.join(output_dir, "datalist.json")
    return sets


def evaluate(
    data: str | None = None,
    labelled: int | None = None,
    synthetic: Sequence[str] = (),
    schemes: str | Sequence[str] = (),
    generator: str | Mapping[str, str] | None = None,
    seed: int = 0,
    seeds: int = 3,
    iterations: int = 1000,
    val_interval: int = 200,
    val_fraction: float = 0.2,
    image_size: int = 64,
    controls: bool = True,
    synthetic_only: bool = True,
    plain_synthetic: bool = True,
    synthetic_share: float | None = None,
    knobs: Mapping[str, Any] | None = None,
    scheme_knobs: Mapping[str, Any] | None = None,
    sweep: Mapping[str, Sequence[Any]] | None = None,
    sweep_samples: int = 20,
    generator_knobs: Mapping[str, Any] | None = None,
    test_data: str | None = None,
    allow_outside_paths: bool = False,
    workers: int = 1,
    out: str | None = None,
) -> dict[str, Any]:
    """Run the protocol and return the results (also written to ``out``).

    Args:
        data: data set folder or datalist JSON; default the embedded phantoms.
        labelled: size of the labelled subset (None: the whole training split).
        synthetic: one or more synthetic sets (a folder with datalist.json, or the datalist itself).
        schemes: method schemes to add as arms: ``gauda`` (all of its schemes) or ``gauda:baseline,gauda:gauda``.
        generator: the models folder of a trained generator (``scripts.augment`` writes ``<out>/models``), for the
            schemes that need one and for the sweep; a dict ``{method: folder}`` when several methods are involved.
        seed: the split seed; must be the ``--seed`` the synthetic sets and the generator were made with.
        seeds: training seeds per arm (0..seeds-1).
        iterations: training iterations of every arm.
        val_interval: iterations between validations (the schemes' online decisions happen there).
        val_fraction: part of the labelled subset carved out as the schemes' validation pairs (their online
            decisions); it trains no scheme arm. Every other arm trains on the whole labelled subset, the pairs the
            synthetic sets' generators learnt from.
        image_size: model input size; test masks are scored at this size.
        controls: add the controls each synthetic set's method declares.
        synthetic_only: add an arm per synthetic set trained on its pairs alone (the Synthetic-Only score).
        plain_synthetic: add ``real + <set>`` (without classic augmentation) beside ``real + classic aug + <set>``;
            False trains the latter alone, the comparison that matters, at half the cost.
        synthetic_share: the share of each synthetic set in its arms' training lists (the real pairs are repeated
            to reach it; controls alike); default None: real and synthetic pairs listed once each.
        knobs: config ids for every arm's segmenter, e.g. ``"{'channels': [8, 16, 32, 64], 'batch_size': 16}"``.
        scheme_knobs: config ids for every scheme arm, e.g. ``"{'bayesian_model': 'mc_dropout'}"``.
        sweep: ``{knob: [values]}``: synthesise ``sweep_samples`` pairs per job set for each value from the
            generator and report their quality (e.g. GAUDA's guidance, Fig. 5).
        sweep_samples: pairs per job and value of the sweep.
        generator_knobs: config ids for the sweep's generation runs.
        test_data: score on this data set's test split instead (cross-domain); it must have the same classes.
        allow_outside_paths: accept datalists whose paths leave their folder.
        workers: training runs at once, each in its own process with its share of the CPU threads; the scores do not
            depend on it (small networks use two threads poorly: on a 2-core CPU two 1-thread runs of 2000 iterations
            train at 12.6 and 8.2 it/s together, one 2-thread run at 16-20 it/s).
        out: folder for results, controls, sweep sets and runs; default
            ``outputs/evaluate/<data set>_n<labelled>_s<seed>``.
    """
    out = out or default_out(data, labelled, seed)
    sets = EvaluationData.load(data, labelled, seed, val_fraction, test_data, allow_outside_paths)
    chosen_schemes = parse_schemes(schemes) if schemes else {}
    generators = _generators(generator, chosen_schemes, sweep)
    datalists = [synthetic_datalist(s) for s in _paths(synthetic)]
    check_set_names(datalists)
    for datalist in datalists:
        check_synthetic_set(datalist, sets)
    os.makedirs(out, exist_ok=True)
    options = {
        "controls": controls,
        "synthetic_only": synthetic_only,
        "plain_synthetic": plain_synthetic,
        "synthetic_share": synthetic_share,
        "knobs": knobs,
        "scheme_knobs": scheme_knobs,
    }
    arms = build_arms(sets, datalists, chosen_schemes, generators, out, image_size, seed, **options)
    per_seed = run_arms(arms, sets, out, seeds, iterations, val_interval, image_size, workers)
    results: dict[str, Any] = {
        "data": sets.data,
        "test_data": sets.test_source,
        "labelled": labelled,
        "training_pairs": len(sets.labelled),
        "scheme_training_pairs": len(sets.train),
        "validation_pairs": len(sets.validation),
        "iterations": iterations,
        "seeds": seeds,
        "synthetic_share": synthetic_share,
        "class_names": sets.class_names,
        "arms": summarise(per_seed, sets.class_names, {arm.name: arm.references for arm in arms}),
    }
    if datalists or sweep:
        networks = [
            load_network(os.path.join(_run_dir(out, REAL, s), "model.pt"), image_size=image_size) for s in range(seeds)
        ]
        results["generator_quality"] = {
            synthetic_set_name(d): _set_quality(d, results["arms"], networks, sets, image_size) for d in datalists
        }
    if sweep:
        results["sweep"] = _sweep(
            sweep, generators, sweep_samples, generator_knobs, networks, sets, labelled, seed, image_size, out
        )
    write_results(results, out)
    return results


def run_arms(
    arms: Sequence[Arm],
    sets: EvaluationData,
    out: str,
    seeds: int,
    iterations: int,
    val_interval: int,
    image_size: int,
    workers: int = 1,
) -> dict[str, list[dict]]:
    """Per arm, the per-image test scores of every training seed: read from a finished run, or trained now, by
    ``workers`` processes at once (each with its share of the CPU threads)."""
    logger.info(
        f"{len(arms)} arms x {seeds} seeds, {iterations} iterations, {len(sets.labelled)} training pairs (schemes: "
        f"{len(sets.train)} and {len(sets.validation)} for validation), {len(sets.test)} test pairs of "
        f"{sets.test_source}"
    )
    jobs = {
        (arm.name, s): (arm, _run_dir(out, arm.name, s), s, iterations, val_interval, sets.data, image_size, sets.test,
                        len(sets.class_names))
        for arm in arms
        for s in range(seeds)
    }  # fmt: skip
    scores = {
        (arm.name, s): finished_run(arm, _run_dir(out, arm.name, s), s, iterations, val_interval, image_size, sets.test)
        for arm in arms
        for s in range(seeds)
    }
    todo = [key for key, found in scores.items() if found is None]
    if workers > 1 and len(todo) > 1:
        threads = max(1, torch.get_num_threads() // workers)
        logger.info(f"training {len(todo)} runs, {workers} at a time ({threads} thread(s) each)")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_setup, initargs=(threads,)) as pool:
            futures = {key: pool.submit(train_run, *jobs[key]) for key in todo}
            scores.update({key: future.result() for key, future in futures.items()})
    else:
        scores.update({key: train_run(*jobs[key]) for key in todo})
    return {arm.name: [scores[(arm.name, s)] for s in range(seeds)] for arm in arms}


def _worker_setup(threads: int) -> None:
    """A training worker: its share of the CPU threads, and the log lines of the calling process."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


@dataclass
class EvaluationData:
    """What an evaluation trains and scores on: the labelled subset split into training and validation pairs, the
    test pairs (another data set's for a cross-domain test), the class names, and the real images and masks that
    synthetic sets are checked and compared against."""

    data: str
    test_source: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    own_test: list[dict]
    class_names: list[str]
    real_images: list[dict]
    real_masks: list[str]
    orientation: Orientation

    @property
    def labelled(self) -> list[dict]:
        return self.train + self.validation

    @classmethod
    def load(
        cls,
        data: str | None,
        labelled: int | None,
        seed: int,
        val_fraction: float,
        test_data: str | None,
        allow_outside_paths: bool = False,
    ) -> EvaluationData:
        """The data of an evaluation, every file of it (and of the other data set's) checked before training."""
        data = resolve_dataset(data)
        test_source = resolve_dataset(test_data) if test_data is not None else data
        class_names = read_class_names(data)
        if test_data is not None and read_class_names(test_source) != class_names:
            raise ValueError(f"{test_source} has other classes than {data}: a cross-domain test needs the same classes")
        options = {"allow_outside_paths": allow_outside_paths}
        splits = validate_dataset(data, labelled, seed, val_fraction, **options)
        test = validate_dataset(test_source, **options)["test"] if test_data is not None else splits["test"]
        if not test:
            raise ValueError(f"{test_source} has no test split to score on")
        return cls(
            data,
            test_source,
            splits["train"],
            splits["val"],
            test,
            splits["test"],
            class_names,
            splits["train"] + splits["val"] + splits["unlabelled"],
            [p["label"] for p in load_splits(data, **options)["train"]],
            read_orientation(data),
        )


def check_synthetic_set(datalist: str, sets: EvaluationData) -> None:
    """Before training: the set's provenance (:func:`check_provenance`), its files (read as training reads them) and
    its size (an empty set is an error; FID / KID need two pairs and are reported n/a below that)."""
    check_provenance(datalist, sets.labelled, sets.own_test, sets.real_masks)
    pairs = load_synthetic_pairs(datalist)
    if not pairs:
        raise ValueError(f"{datalist} holds no pair: there is nothing to add to the real pairs")
    validate_pairs(pairs, len(sets.class_names))
    if len(pairs) < 2:
        logger.warning(f"{datalist}: {len(pairs)} pair: FID and KID need two, they are reported n/a")


def check_set_names(datalists: Sequence[str]) -> None:
    """Refuse synthetic sets that would share an arm name (their results would overwrite each other)."""
    names: dict[str, list[str]] = {}
    for datalist in datalists:
        names.setdefault(synthetic_set_name(datalist), []).append(datalist)
    shared = {name: paths for name, paths in names.items() if len(paths) > 1}
    if shared:
        raise ValueError(
            f"synthetic sets would share an arm name (<method> (<folder>)): {shared}; give each its own folder name"
        )


def build_arms(
    sets: EvaluationData,
    datalists: Sequence[str],
    schemes: Mapping[str, Sequence[str]],
    generators: Mapping[str, str],
    out: str,
    image_size: int,
    seed: int,
    controls: bool = True,
    synthetic_only: bool = True,
    plain_synthetic: bool = True,
    synthetic_share: float | None = None,
    knobs: Mapping[str, Any] | None = None,
    scheme_knobs: Mapping[str, Any] | None = None,
) -> list[Arm]:
    """The standard arms, the arms of every synthetic set (with its method's controls) and the schemes asked for;
    ``knobs`` go to every arm's segmenter, ``scheme_knobs`` to the schemes'."""
    methods = find_methods()
    # every arm but the schemes trains on all labelled pairs: the pairs the synthetic sets' generators learnt from
    arms: list[Arm] = standard_arms(sets.labelled)
    for datalist in datalists:
        method = methods.get(synthetic_method(datalist))
        arms += synthetic_arms(
            datalist, method, sets.labelled, out, image_size, seed, controls, synthetic_only, plain_synthetic,
            synthetic_share,
        )  # fmt: skip
    for arm in arms:
        arm.overrides = dict(knobs or {})
    for method, names in schemes.items():
        scheme_overrides = {**dict(knobs or {}), **dict(scheme_knobs or {})}
        arms += scheme_arms(
            methods[method], names, sets.train, sets.validation, generators.get(method), scheme_overrides
        )
    return arms


def default_out(data: str | None, labelled: int | None, seed: int) -> str:
    """``outputs/evaluate/<data set>_n<labelled>_s<seed>``: one folder per data set, subset and split seed."""
    data_name = "phantoms" if data in (None, "phantoms") else Path(str(data)).resolve().name
    return os.path.join("outputs", "evaluate", f"{data_name}_n{labelled if labelled else 'all'}_s{seed}")


def _set_quality(
    datalist: str, arms: Mapping[str, Any], networks: Sequence, sets: EvaluationData, image_size: int
) -> dict[str, Any]:
    quality = _generator_quality(networks, sets, datalist, image_size)
    synthetic_only = arms.get(f"synthetic only: {synthetic_set_name(datalist)}")
    if synthetic_only is not None:
        quality["synthetic_only_dice"] = synthetic_only["dice"]
    return quality


def _sweep(
    sweep: Mapping[str, Sequence[Any]],
    generators: Mapping[str, str],
    samples: int,
    generator_knobs: Mapping[str, Any] | None,
    networks: Sequence,
    sets: EvaluationData,
    labelled: int | None,
    seed: int,
    image_size: int,
    out: str,
) -> dict[str, Any]:
    """Generator quality of one synthetic set per value of the swept knob."""
    ((knob, values),) = sweep.items()
    method = _sweep_method(generators)
    made = _sweep_sets(
        method, generators[method], knob, values, samples, sets.data, labelled, seed, image_size, out,
        generator_knobs or {},
    )  # fmt: skip
    quality = {name: _generator_quality(networks, sets, path, image_size) for name, path in made.items()}
    return {"method": method, "knob": knob, "sets": quality}


def write_results(results: Mapping[str, Any], out: str) -> None:
    """``results.json``, ``results.md`` and ``dice_per_class.png`` in ``out``."""
    write_json(os.path.join(out, "results.json"), results)
    with atomic_files(os.path.join(out, "results.md")) as (temp,), open(temp, "w") as f:
        f.write(to_markdown(results))
    write_class_figure(results, os.path.join(out, "dice_per_class.png"))


def _generators(
    generator: str | Mapping[str, str] | None, schemes: Mapping[str, Sequence[str]], sweep: Mapping | None
) -> dict[str, str]:
    """``{method: generator folder}``; a plain path belongs to the one method whose schemes or sweep need it."""
    if generator is None or isinstance(generator, Mapping):
        return dict(generator or {})
    candidates = sorted(schemes) or sorted(m for m, b in find_methods().items() if b.evaluation.get("generator_id"))
    if len(candidates) != 1:
        raise ValueError(f"--generator is a folder but more than one method could use it ({candidates}): give a dict")
    return {candidates[0]: generator}


def _sweep_method(generators: Mapping[str, str]) -> str:
    if len(generators) != 1:
        raise ValueError(f"a sweep needs exactly one trained generator (--generator), got {sorted(generators)}")
    return next(iter(generators))
