"""Speed and memory of a method, measured side by side in one run (DESIGN, "Performance rules").

    python -m scripts.benchmark augpaint                      # its generator at every setting its bundle declares
    python -m scripts.benchmark gauda --generator outputs/gauda/phantoms_nall_s0/models --batch_size 16
    python -m scripts.benchmark gauda --iterations 1000 --val_interval 200   # + scheme training time, equal steps

Each method's ``configs/evaluate.json`` declares what to compare: ``benchmark``, settings of its generator (e.g. DDIM
50 vs 1000 steps, DDIM vs DDPM), and ``benchmark_schemes``, schemes whose training time is compared at equal
iterations (e.g. GAUDA's online loop vs its baseline, the paper: 22.6 h / 15.3 h). Without ``--generator`` the bundle is
first trained with its ``smoke_knobs`` (a few iterations) in a temporary folder: speed does not depend on what the
weights learned. Reports pairs per second, network evaluations per sample (NFE: rows the diffusion network saw per
pair, so classifier-free guidance counts twice per step) and peak memory (CUDA: allocated; CPU: the process's maximum
resident size so far, which never decreases within one run). A one-iteration run first takes the process's one-off
costs, so no timed run pays them. Everything runs on the embedded phantoms, unless ``--fid_data`` names the data set
a trained generator learnt from: then each setting's timed images are also scored by FID and KID against that data
set's training images, in the bottleneck features of ``--fid_segmenter`` (a segmenter of the real data, e.g. the
filter's ``<out>/models/model_segmenter.pt``; nothing is downloaded). Every setting draws the same seeds, so the
scores compare samplers on the same noise.

    M=outputs/diffuseexpand/usgra_nerve_vessel_n10_s0/models
    python -m scripts.benchmark diffuseexpand --generator $M --batch_size 64 \
        --fid_data ../shared/data/usgra_nerve_vessel --fid_segmenter $M/model_segmenter.pt
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser

from common.bundles import Bundle, method_bundle
from common.checkpoints import load_network
from common.data import load_splits
from common.evaluation.arms import scheme_arms
from common.evaluation.quality import image_feature_distances, load_images
from common.evaluation.runs import train_segmenter
from common.generation import GenerationRun
from common.stages import add_bundle_to_path, run_workflow
from scripts.cli import run_command_line

PAPER_OVERHEADS = {"gauda": (22.6, 15.3)}  # Frisch et al.: GAUDA vs baseline training hours


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def _smoke_trained(bundle: Bundle, folder: str) -> str:
    """Train ``bundle`` with its smoke knobs into ``folder``; returns the models folder."""
    models = os.path.join(folder, "models")
    knobs = bundle.evaluation.get("smoke_knobs", {}).get("train", {})
    # speed does not depend on the filter, whose segmenter is not trained here
    run_workflow(
        bundle.config("train"), bundle_root=str(bundle.root), ckpt_dir=models, knobs=knobs, filter_segmenter=False
    )
    return models


def _generator_and_run(bundle: Bundle, models: str, knobs: Mapping[str, Any]) -> tuple[Any, GenerationRun]:
    """The bundle's generator and generation run from its inference config, with ``knobs``."""
    config = bundle.config("inference")
    add_bundle_to_path(config)
    parser = ConfigParser()
    parser.read_config(config)
    parser.update({"bundle_root": str(bundle.root), "ckpt_dir": models, "progress": False, **knobs})
    if "filter" in parser:
        parser["filter"] = False  # the generator alone: the filter is not benchmarked
    run = parser.get_parsed_content("generation")
    return run.generator, run


def image_scorer(data: str, segmenter: str) -> Callable[[torch.Tensor], dict]:
    """Scores generated images (B, 1, H, W) in [0, 1]: FID and KID against the training images of ``data`` (at the
    generated size), in the bottleneck features of ``segmenter``."""
    network = load_network(segmenter)
    real_pairs = load_splits(data)["train"]
    real_by_size: dict[int, torch.Tensor] = {}

    def score(images: torch.Tensor) -> dict:
        size = int(images.shape[-1])
        if size not in real_by_size:
            real_by_size[size] = load_images(real_pairs, size)
        distances = image_feature_distances(network, real_by_size[size], images.float().cpu())
        return {**distances, "num_real": len(real_pairs), "num_generated": len(images)}

    return score


def generator_row(
    bundle: Bundle,
    models: str,
    name: str,
    knobs: Mapping[str, Any],
    batch_size: int,
    repeats: int,
    score: Callable[[torch.Tensor], dict] | None = None,
) -> dict:
    """Pairs per second of the bundle's generator at one setting, NFE counted by a hook on its network; with
    ``score``, also its scores of the timed images."""
    generator, run = _generator_and_run(bundle, models, knobs)
    jobs = [run.jobs[i % len(run.jobs)] for i in range(batch_size)]
    batch = run.job_batch(jobs)
    generator(run.job_batch(jobs[:2]))  # warm-up
    rows = {"calls": 0, "rows": 0}

    def count(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        rows["calls"] += 1
        rows["rows"] += args[0].shape[0]

    hook = generator.network.register_forward_hook(count)
    device = run.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    images = [generator(batch)[0] for _ in range(repeats)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    hook.remove()
    scores = score(torch.cat(images)) if score else {}
    return {
        "method": bundle.name,
        "setting": name,
        "knobs": dict(knobs),
        "batch_size": batch_size,
        "nfe_per_sample": rows["rows"] / (repeats * batch_size),
        "pairs_per_second": repeats * batch_size / seconds,
        "seconds_per_batch": seconds / repeats,
        "peak_memory_mb": _peak_memory_mb(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
        **scores,
    }


def scheme_rows(bundle: Bundle, models: str, iterations: int, val_interval: int, knobs: Mapping, folder: str) -> list:
    """Training wall time of the bundle's ``benchmark_schemes`` at equal iterations on the embedded phantoms."""
    names = bundle.evaluation.get("benchmark_schemes", [])
    if not names:
        return []
    splits = load_splits(None, val_fraction=0.2)
    arms = scheme_arms(bundle, names, splits["train"], splits["val"], models, knobs)
    train_segmenter(arms[0], os.path.join(folder, "warmup"), 0, 1, 1, None, 64)
    seconds = {}
    for arm in arms:
        start = time.perf_counter()
        train_segmenter(arm, os.path.join(folder, arm.name.replace(": ", "_")), 0, iterations, val_interval, None, 64)
        seconds[arm.name] = time.perf_counter() - start
    reference = arms[0].name
    rows = []
    for name, value in seconds.items():
        row = {"method": bundle.name, "scheme": name, "iterations": iterations, "val_interval": val_interval}
        row.update({"seconds": value, "reference": reference, "ratio_to_reference": value / seconds[reference]})
        row["knobs"] = dict(knobs)
        if bundle.name in PAPER_OVERHEADS:
            hours = PAPER_OVERHEADS[bundle.name]
            row["paper_reference"] = f"{hours[0]} h / {hours[1]} h = {hours[0] / hours[1]:.2f}x"
        rows.append(row)
    return rows


def benchmark(
    method: str,
    generator: str | None = None,
    batch_size: int = 8,
    repeats: int = 1,
    iterations: int = 0,
    val_interval: int = 50,
    knobs: dict | None = None,
    scheme_knobs: dict | None = None,
    settings: Sequence[str] | None = None,
    fid_data: str | None = None,
    fid_segmenter: str | None = None,
) -> list[dict]:
    """Measure ``method``'s generator at each setting of its bundle's ``benchmark`` list (``knobs`` apply to all;
    ``settings`` picks some by name) and, with ``iterations > 0``, the training time of its ``benchmark_schemes``;
    prints and returns the rows.

    Args:
        method: a method bundle (``augpaint``, ``gauda``, ...).
        generator: the trained models folder to time (e.g. ``outputs/gauda/phantoms_nall_s0/models``); default a
            generator trained with the bundle's ``smoke_knobs`` in a temporary folder (speed does not need weights).
        batch_size: pairs generated per timed call.
        repeats: timed calls per setting (the rate is over all of them).
        iterations: > 0 also times the training of the bundle's ``benchmark_schemes`` for this many iterations.
        val_interval: validation interval of those scheme runs.
        knobs: generator config ids applied to every setting, e.g. ``"{'num_inference_steps': 20}"``.
        scheme_knobs: config ids of the scheme runs (network sizes, ensemble size, ...).
        settings: the names of the declared settings to time (default all), e.g. ``"['DDIM 50']"``.
        fid_data: with ``generator`` and ``fid_segmenter``, the data set the generator learnt from (its classes
            configure the generator): each setting's timed images get FID and KID against its training images
            (repeats of one batch count once per repeat).
        fid_segmenter: a segmenter checkpoint of that data set whose bottleneck is the feature space.
    """
    if (fid_data is None) != (fid_segmenter is None) or (fid_data and not generator):
        raise ValueError("FID needs all three: --generator (trained), --fid_data and --fid_segmenter")
    bundle = method_bundle(method)
    declared = bundle.evaluation.get("benchmark", [{"name": "default", "knobs": {}}])
    chosen = [entry for entry in declared if settings is None or entry["name"] in settings]
    with tempfile.TemporaryDirectory(prefix=f"benchmark_{method}_") as scratch:
        models = generator or _smoke_trained(bundle, scratch)
        score = image_scorer(fid_data, fid_segmenter) if fid_data else None
        data = {"dataset_dir": fid_data} if fid_data else {}  # the generator's classes are that data set's
        rows = [
            generator_row(
                bundle, models, entry["name"], {**data, **entry["knobs"], **(knobs or {})}, batch_size, repeats, score
            )
            for entry in chosen
        ]
        for row in rows:
            row["speed_vs_first"] = row["pairs_per_second"] / rows[0]["pairs_per_second"]
        if iterations > 0:
            rows += scheme_rows(bundle, models, iterations, val_interval, scheme_knobs or {}, scratch)
    print(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    run_command_line(benchmark, serialize=lambda rows: None)
