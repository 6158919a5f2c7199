"""Speed and memory of a method's pair maker, measured side by side in one run (DESIGN, "Performance rules").

    python -m scripts.benchmark augpaint                       # DDIM 50 vs 1000 steps, batch 16, random weights
    python -m scripts.benchmark augpaint --steps "[20,50,1000]" --batch_size 32 --repeats 3

The networks are the bundle's own definitions (``configs/inference.json``) with random weights: speed does not depend
on what the weights learned. Reports pairs per second, network evaluations per sample (NFE) and peak memory.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import torch
from monai.bundle import ConfigParser

from common.data import load_splits, pair_transforms
from common.generation import LatentInpainter
from common.sampling import LatentInpaintingSampler

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


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


if __name__ == "__main__":
    fire.Fire({"augpaint": augpaint}, serialize=lambda rows: None)
