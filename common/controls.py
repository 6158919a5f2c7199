"""Controls for inpainting methods: the same kept regions and masks on a background that no generative model made.

DESIGN ("Controls"): a gain is credited to a generative model only when it beats a control that keeps everything but
the model. For an inpainting method (AugPaint) the control keeps, for every synthetic pair, the same source region and
mask and replaces the generated background by either Gaussian noise with the source background's mean and standard
deviation (``"noise"``) or another labelled real image (``"real"``: cut-and-paste).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from common.data import pair_transforms
from common.io import SyntheticDatasetWriter
from common.regions import keep_mask, to_latent_grid

logger = logging.getLogger(__name__)

__all__ = ["BACKGROUNDS", "make_control_set", "paste_on_background"]

BACKGROUNDS = ("noise", "real")


def paste_on_background(
    image: torch.Tensor,
    keep: torch.Tensor,
    background: str,
    other_image: torch.Tensor | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """``image`` where ``keep`` is 1, the control background elsewhere; all tensors (1, H, W) in [0, 1]."""
    if background == "noise":
        outside = image[keep < 0.5]
        mean, std = (outside.mean(), outside.std()) if outside.numel() > 1 else (image.mean(), image.std())
        fill = (mean + std * torch.randn(image.shape, generator=generator)).clamp(0.0, 1.0)
    elif background == "real":
        if other_image is None:
            raise ValueError("a 'real' background needs another image")
        fill = other_image
    else:
        raise ValueError(f"unknown control background '{background}'; choose one of {BACKGROUNDS}")
    return keep * image + (1.0 - keep) * fill


def make_control_set(
    synthetic_datalist: str,
    output_dir: str,
    background: str,
    real_pairs: Sequence[dict],
    image_size: int | Sequence[int] = 64,
    seed: int = 0,
) -> str:
    """Write the control of a synthetic set to ``output_dir`` and return its datalist path.

    One control pair per synthetic pair that names its source; the kept region is rebuilt from the source mask with
    the generation run's own ``mask_mode`` and ``box_margin`` (recorded in the synthetic datalist's ``config``) and,
    for a latent method (``latent_factor`` recorded), grown to the latent cells it touches, which is the region the
    latent sampler keeps.
    ``real_pairs`` are the labelled pairs whose images serve as ``"real"`` backgrounds (never the source itself).
    """
    with open(synthetic_datalist) as f:
        synthetic = json.load(f)
    config = synthetic.get("config", {})
    if config.get("flip_boxes"):
        logger.warning("the synthetic set flipped its kept boxes; the control keeps them unflipped")
    mode, margin, factor = config.get("mask_mode", "box"), config.get("box_margin", 0), config.get("latent_factor")
    root = os.path.dirname(os.path.abspath(synthetic_datalist))
    load_pair = pair_transforms(image_size, augment=False)
    load_image = pair_transforms(image_size, keys=("image",), augment=False)
    generator = torch.Generator().manual_seed(seed)
    writer = SyntheticDatasetWriter(
        output_dir, method=f"control_{background}", config={"source": synthetic_datalist, "mask_mode": mode}
    )
    real_images = [os.path.abspath(p["image"]) for p in real_pairs]
    for index, entry in enumerate(synthetic["training"]):
        if entry.get("source_image") is None or entry.get("source_label") is None:
            continue
        name = f"control_{index:05d}"
        if writer.done(name):
            continue
        source = {k: _resolve(entry[f"source_{k}"], root) for k in ("image", "label")}
        pair = load_pair({"image": source["image"], "label": source["label"]})
        keep = keep_mask(pair["label"][None], mode=mode, margin=margin)
        if factor:
            size = keep.shape[-2:]
            keep = F.interpolate(to_latent_grid(keep, [s // factor for s in size]), size=size, mode="nearest")
        keep = keep[0]
        other = None
        if background == "real":
            candidates = [p for p in real_images if p != source["image"]] or real_images
            choice = int(torch.randint(len(candidates), (1,), generator=generator))
            other = load_image({"image": candidates[choice]})["image"]
        image = paste_on_background(pair["image"], keep, background, other, generator)
        writer.write_pair(
            image, pair["label"], seed=seed, source_image=source["image"], source_label=source["label"], name=name
        )
    return writer.finalize()


def _resolve(path: str, root: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))
