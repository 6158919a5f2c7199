"""Does augmentation help? Every arm trains the same segmenter with the same budget and seeds, scored on the test split.

    # real, real + classic aug, and for each synthetic set: real + set, real + classic aug + set, its method's controls
    python -m scripts.evaluate --data ../shared/data/usgra_nerve_vessel --labelled 10 --synthetic \\
        "[outputs/augpaint/usgra_nerve_vessel_n10_s0/synthetic,outputs/gauda/usgra_nerve_vessel_n10_s0/synthetic]"

    # a method's online schemes (GAUDA Tables 1-4) beside them, and a sweep of a generator knob
    python -m scripts.evaluate --data ../shared/data/usgra_nerve_vessel --labelled 10 --schemes gauda \\
        --generator outputs/gauda/usgra_nerve_vessel_n10_s0/models --sweep "{'guidance': [0, 1, 3, 5]}"

    # cross-domain: train on one data set (or domain), test on another with the same classes
    python -m scripts.evaluate --data phantoms --test_data phantoms_shifted

The labelled subset is chosen by ``--seed`` exactly as ``scripts.augment`` chose it, and trains every arm: the pairs
the synthetic sets' generators learnt from, so no arm sees labelled pairs another does not. The schemes alone carve
``val_fraction`` of it out for their online decisions. Every arm trains for ``iterations``
iterations with training seeds 0..seeds-1 and keeps its final network; each arm is compared with ``real`` and with
``real + classic aug`` (a scheme with its method's reference schemes) by a paired difference over seeds with a 95 %
interval. The protocol is :func:`common.evaluation.evaluate`; each method declares its controls and schemes in its
bundle's ``configs/evaluate.json``. Writes ``results.json``, ``results.md`` and ``dice_per_class.png`` to ``--out``
(default ``outputs/evaluate/<data>_n<labelled>_s<seed>``) and prints the tables. A run finished by an earlier call is
reused only when everything that shaped it (data files, split, subset, synthetic files, configs, budget) matches.
"""

from __future__ import annotations

import functools
import logging

from common.evaluation import evaluate as run_protocol
from common.evaluation.report import to_markdown
from scripts.cli import run_command_line


@functools.wraps(run_protocol)
def evaluate(*args, **options) -> dict:
    """Run the protocol (:func:`common.evaluation.evaluate`, whose arguments these are), print the tables and return
    the results."""
    results = run_protocol(*args, **options)
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    run_command_line(evaluate, serialize=lambda results: None)
