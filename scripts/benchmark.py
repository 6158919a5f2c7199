"""Speed and memory of a method's pair maker, measured side by side in one run (DESIGN, "Performance rules").

    python -m scripts.benchmark augpaint                       # DDIM 50 vs 1000 steps, batch 16, random weights
    python -m scripts.benchmark augpaint --steps "[20,50,1000]" --batch_size 32 --repeats 3
    python -m scripts.benchmark gauda                          # DDIM 50 vs DDPM 1000, then 200 training iterations
    python -m scripts.benchmark gauda --generator bundles/gauda/models --knobs "{'bayesian_model': 'mc_dropout'}"
    python -m scripts.benchmark gauda --skip_training --ddpm_steps 250 --num_pairs 16

The networks are the bundle's own definitions (``configs/inference.json``) with random weights: speed does not depend
on what the weights learned. Reports pairs per second, network evaluations per sample (NFE) and peak memory.

``gauda`` measures, in one run: the joint sampler's throughput with DDIM vs DDPM (``--generator`` a trained models
folder, else random weights in a temporary folder), then the downstream training wall time of the GAUDA scheme vs the
baseline scheme at equal iterations on the embedded phantoms, with the paper's overhead (22.6 h / 15.3 h) for context.
``--knobs`` are config ids given to both schemes (e.g. ``ensemble_size``, ``bayesian_model``, ``batch_size``) and
may override the GAUDA ids (``gauda_num_synthetic``, ``guidance``, ...); the GAUDA scheme samples with ``ddim_steps``.
A 1-iteration baseline run first takes the process's one-off costs, so neither timed scheme pays them.
Peak memory on CPU is the process's maximum resident size so far (it never decreases within one run).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser

from common.data import load_splits, pair_transforms, read_class_names
from common.generation import LatentInpainter
from common.sampling import LatentInpaintingSampler, load_joint_sampler, save_untrained_generator
from common.stages import run_workflow

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
GAUDA_CONFIGS = BUNDLES_DIR / "gauda" / "configs"
PAPER_GAUDA_HOURS = (22.6, 15.3)  # Frisch et al.: GAUDA vs baseline training time


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def _labelled_batch(batch_size: int, image_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = load_splits(None)["train"]
    load = pair_transforms(image_size)
    items = [load(dict(pairs[i % len(pairs)])) for i in range(batch_size)]
    images = torch.stack([torch.as_tensor(i["image"]) for i in items]).to(device)
    labels = torch.stack([torch.as_tensor(i["label"]) for i in items]).to(device)
    return images, labels


def augpaint(steps: Sequence[int] = (50, 1000), batch_size: int = 16, repeats: int = 1) -> list[dict]:
    """Throughput of AugPaint's latent inpainting at several DDIM step counts."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / "augpaint" / "configs" / "inference.json"))
    device = parser.get_parsed_content("device")
    image_size = parser.get_parsed_content("image_size")
    autoencoder = parser.get_parsed_content("autoencoder_def").to(device).eval()
    network = parser.get_parsed_content("network_def").to(device).eval()
    scheduler = parser.get_parsed_content("scheduler")
    images, labels = _labelled_batch(batch_size, image_size, device)
    rows = []
    for num_steps in steps:
        maker = LatentInpainter(autoencoder, network, LatentInpaintingSampler(scheduler, num_steps), scale_factor=1.0)
        maker(images[:2], labels[:2], [0, 1])  # warm-up
        start = time.perf_counter()
        for repeat in range(repeats):
            maker(images, labels, list(range(repeat * batch_size, (repeat + 1) * batch_size)))
        seconds = time.perf_counter() - start
        rows.append(
            {
                "method": "augpaint latent inpainting",
                "ddim_steps": num_steps,
                "nfe_per_sample": num_steps,
                "batch_size": batch_size,
                "pairs_per_second": repeats * batch_size / seconds,
                "seconds_per_batch": seconds / repeats,
                "peak_memory_mb": _peak_memory_mb(device),
                "device": str(device),
                "threads": torch.get_num_threads(),
            }
        )
    base = rows[0]["pairs_per_second"]
    for row in rows:
        row["speed_vs_first"] = row["pairs_per_second"] / base
    print(json.dumps(rows, indent=2))
    return rows


def _sampler_row(generator: str, sampler_id: str, num_steps: int, num_pairs: int, class_sets: list[list[int]]) -> dict:
    """Pairs per second of GAUDA's joint sampler with one scheduler; NFE counted by a hook on the network."""
    config = str(GAUDA_CONFIGS / "inference.json")
    sampler = load_joint_sampler(config, ckpt_dir=generator, num_inference_steps=num_steps, sampler=sampler_id)
    device = sampler.device
    sampler(class_sets[:2], [0, 1])  # warm-up
    evaluated = {"calls": 0, "rows": 0}

    def count(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        evaluated["calls"] += 1
        evaluated["rows"] += args[0].shape[0]

    hook = sampler.network.register_forward_hook(count)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    sampler(class_sets[:num_pairs], list(range(num_pairs)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    hook.remove()
    return {
        "method": "gauda joint sampler",
        "sampler": sampler_id,
        "steps": num_steps,
        "guidance": sampler.sampler.guidance,
        "nfe_per_sample": evaluated["rows"] / num_pairs,  # conditional + null pass per step, batched in one call
        "network_calls_per_batch": evaluated["calls"],
        "num_pairs": num_pairs,
        "pairs_per_second": num_pairs / seconds,
        "seconds_per_batch": seconds,
        "peak_memory_mb": _peak_memory_mb(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _timed_training(scheme_files: list[str], **overrides: Any) -> tuple[float, Any]:
    """Wall time of one downstream training run and its workflow."""
    start = time.perf_counter()
    workflow = run_workflow(scheme_files, **overrides)
    return time.perf_counter() - start, workflow


def gauda(
    iterations: int = 200,
    val_interval: int = 50,
    ddim_steps: int = 50,
    ddpm_steps: int = 1000,
    num_pairs: int = 8,
    generator: str | None = None,
    knobs: dict | None = None,
    skip_training: bool = False,
) -> list[dict]:
    """GAUDA's joint sampler (DDIM vs DDPM pairs per second), then GAUDA vs baseline training time, equal iterations."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="benchmark_gauda_") as scratch:
        generator = generator or save_untrained_generator(f"{scratch}/generator", str(GAUDA_CONFIGS / "inference.json"))
        num_classes = len(read_class_names(None))
        class_sets = [[1 + i % (num_classes - 1)] for i in range(max(num_pairs, 2))]
        for sampler_id, num_steps in (("ddim", ddim_steps), ("ddpm", ddpm_steps)):
            rows.append(_sampler_row(generator, sampler_id, num_steps, num_pairs, class_sets))
        ddpm_speed = rows[1]["pairs_per_second"]
        for row in rows:
            row["speed_vs_ddpm"] = row["pairs_per_second"] / ddpm_speed
        if not skip_training:
            segmentation = str(BUNDLES_DIR / "segmentation" / "configs" / "train.json")
            baseline_files = [segmentation, str(GAUDA_CONFIGS / "train_downstream_baseline.json")]
            budget = {"max_iterations": iterations, "val_interval": val_interval}  # embedded phantoms
            for name, run_budget in (("warmup", {"max_iterations": 1, "val_interval": 1}), ("baseline", budget)):
                folders = {"ckpt_dir": f"{scratch}/{name}", "output_dir": f"{scratch}/{name}"}
                # the warm-up run takes the process's one-off costs, so neither timed scheme pays them
                baseline_seconds, _ = _timed_training(baseline_files, **{**run_budget, **folders, **(knobs or {})})
            gauda_seconds, workflow = _timed_training(
                [*baseline_files, str(GAUDA_CONFIGS / "train_downstream_gauda.json")],
                **{
                    **budget,
                    "ckpt_dir": f"{scratch}/gauda",
                    "output_dir": f"{scratch}/gauda",
                    "generator_ckpt_dir": generator,
                    "ddim_steps": ddim_steps,
                    **(knobs or {}),
                },
            )
            handler = workflow.parser.get_parsed_content("gauda_handler")
            device = torch.device(workflow.parser.get_parsed_content("device"))
            rows.append(
                {
                    "method": "gauda vs baseline downstream training",
                    "iterations": iterations,
                    "val_interval": val_interval,
                    "knobs": knobs or {},
                    "baseline_seconds": baseline_seconds,
                    "gauda_seconds": gauda_seconds,
                    "overhead_ratio": gauda_seconds / baseline_seconds,
                    "synthesis_seconds_total": handler.synthesis_seconds_total,
                    "num_refreshes": handler.num_refreshes,
                    "replaced_total": handler.replaced_total,
                    "paper_reference": "{} h / {} h = {:.2f}x".format(
                        *PAPER_GAUDA_HOURS, PAPER_GAUDA_HOURS[0] / PAPER_GAUDA_HOURS[1]
                    ),
                    "peak_memory_mb": _peak_memory_mb(device),
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                }
            )
    print(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    fire.Fire({"augpaint": augpaint, "gauda": gauda}, serialize=lambda rows: None)
