"""Does augmentation help? Every arm trains the same segmenter with the same budget and seeds, scored on the test split.

    # real, real + classic aug, and for each synthetic set: real + set, real + classic aug + set, its method's controls
    python -m scripts.evaluate --data ../shared/data/usgra_nerve_vessel --labelled 10 --synthetic \\
        "[outputs/augpaint/usgra_nerve_vessel_n10_s0/synthetic,outputs/gauda/usgra_nerve_vessel_n10_s0/synthetic]"

    # a method's online schemes (GAUDA Tables 1-4) beside them, and a sweep of a generator knob
    python -m scripts.evaluate --data ../shared/data/usgra_nerve_vessel --labelled 10 --schemes gauda \\
        --generator outputs/gauda/usgra_nerve_vessel_n10_s0/models --sweep "{'guidance': [0, 1, 3, 5]}"

    # cross-domain: train on one data set (or domain), test on another with the same classes
    python -m scripts.evaluate --data phantoms --test_data phantoms_shifted

The labelled subset is chosen by ``--seed`` exactly as ``scripts.augment`` chose it; ``val_fraction`` of it is carved
out for validation (the schemes' online decisions), the rest trains every arm. Every arm trains for ``iterations``
iterations with training seeds 0..seeds-1 and keeps its final network; each arm is compared with ``real`` and with
``real + classic aug`` (a scheme with its method's reference schemes) by a paired difference over seeds with a 95 %
interval. The protocol is :func:`common.evaluation.evaluate`; each method declares its controls and schemes in its
bundle's ``configs/evaluate.json``. Writes ``results.json``, ``results.md`` and ``dice_per_class.png`` to ``--out``
(default ``outputs/evaluate/<data>_n<labelled>_s<seed>``) and prints the tables. A run finished by an earlier call is
reused only when everything that shaped it (data files, split, subset, synthetic files, configs, budget) matches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire

from common.evaluation import evaluate as run_protocol
from common.evaluation.report import to_markdown


def evaluate(
    data: str | None = None,
    labelled: int | None = None,
    synthetic: str | Sequence[str] = (),
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
    knobs: Mapping[str, Any] | None = None,
    scheme_knobs: Mapping[str, Any] | None = None,
    sweep: Mapping[str, Sequence[Any]] | None = None,
    sweep_samples: int = 20,
    generator_knobs: Mapping[str, Any] | None = None,
    test_data: str | None = None,
    out: str | None = None,
) -> dict:
    """Run the protocol, print the tables and return the results.

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
        val_fraction: part of the labelled subset carved out for validation (none of it trains any arm).
        image_size: model input size; test masks are scored at this size.
        controls: add the controls each synthetic set's method declares.
        synthetic_only: add an arm per synthetic set trained on its pairs alone (the Synthetic-Only score).
        knobs: config ids for every arm's segmenter, e.g. ``"{'channels': [8, 16, 32, 64], 'batch_size': 16}"``.
        scheme_knobs: config ids for every scheme arm, e.g. ``"{'bayesian_model': 'mc_dropout'}"``.
        sweep: ``{knob: [values]}``: synthesise ``sweep_samples`` pairs per job set for each value from the
            generator and report their quality (e.g. GAUDA's guidance, Fig. 5).
        sweep_samples: pairs per job and value of the sweep.
        generator_knobs: config ids for the sweep's generation runs.
        test_data: score on this data set's test split instead (cross-domain); it must have the same classes.
        out: folder for results, controls, sweep sets and runs.
    """
    data_name = "phantoms" if data in (None, "phantoms") else Path(str(data)).resolve().name
    out = out or os.path.join("outputs", "evaluate", f"{data_name}_n{labelled if labelled else 'all'}_s{seed}")
    results = run_protocol(
        data=data,
        labelled=labelled,
        synthetic=[synthetic] if isinstance(synthetic, str) else list(synthetic),
        schemes=schemes,
        generator=generator,
        seed=seed,
        seeds=seeds,
        iterations=iterations,
        val_interval=val_interval,
        val_fraction=val_fraction,
        image_size=image_size,
        controls=controls,
        synthetic_only=synthetic_only,
        knobs=knobs,
        scheme_knobs=scheme_knobs,
        sweep=sweep,
        sweep_samples=sweep_samples,
        generator_knobs=generator_knobs,
        test_data=test_data,
        out=out,
    )
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    fire.Fire(evaluate, serialize=lambda results: None)
