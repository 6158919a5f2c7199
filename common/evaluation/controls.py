"""Control arms: what a synthetic set must beat before its gain is credited to the generative model.

DESIGN ("Controls"): a control keeps everything but the model. A method names its controls in ``evaluate.json``:

- ``"noise_background"``, ``"real_background"`` (inpainting methods, e.g. AugPaint): for every synthetic pair the same
  source region and mask, on Gaussian noise with the source background's mean and standard deviation, or on another
  labelled real image (cut-and-paste). The kept region is rebuilt from the source mask with the run's ``mask_mode``
  and ``box_margin`` (recorded in the synthetic datalist's ``config``), grown to the latent cells it touches for a
  latent method (``latent_factor`` recorded), and flipped as the pair was when the run flipped its pairs (``flip``,
  from the pair's seed and the orientation the set records, :func:`common.data.laterality.seeded_flips`).
- ``"extra_real_copies"`` (sampling methods, e.g. GAUDA): as many extra training samples as the synthetic set has
  pairs, drawn from the real labelled pairs, so that with classic augmentation the control differs from the
  synthetic arm only in where the extra samples come from.

Every control gives the extra training entries of its arm (:data:`CONTROLS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from common.data import pair_transforms
from common.data.laterality import Orientation, seeded_flips
from common.io import SyntheticDatasetWriter
from common.regions import keep_mask, to_latent_grid

from .provenance import load_synthetic_pairs

__all__ = ["BACKGROUNDS", "CONTROLS", "extra_real_copies", "make_control_set", "paste_on_background"]

BACKGROUNDS = ("noise", "real")
LEGACY_ORIENTATION = {"flips": ["up_down", "left_right"]}  # how sets that do not record their orientation flipped


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
    """Write the inpainting control of a synthetic set to ``output_dir`` and return its datalist path: one control
    pair per synthetic pair that names its source (see the module docstring); ``real_pairs`` are the labelled pairs
    whose images serve as ``"real"`` backgrounds (never the source itself)."""
    with open(synthetic_datalist) as f:
        config = json.load(f).get("config", {})
    mode, margin, factor = config.get("mask_mode", "box"), config.get("box_margin", 0), config.get("latent_factor")
    orientation = Orientation(**config.get("orientation", LEGACY_ORIENTATION))
    load_pair = pair_transforms(image_size, augment=False)
    load_image = pair_transforms(image_size, keys=("image",), augment=False)
    generator = torch.Generator().manual_seed(seed)
    writer = SyntheticDatasetWriter(
        output_dir, method=f"control_{background}", config={"source": synthetic_datalist, "mask_mode": mode}
    )
    real_images = [os.path.abspath(p["image"]) for p in real_pairs]
    for index, entry in enumerate(load_synthetic_pairs(synthetic_datalist)):
        if entry.get("source_image") is None or entry.get("source_label") is None:
            continue
        name = f"control_{index:05d}"
        if writer.done(name):
            continue
        pair = load_pair({"image": entry["source_image"], "label": entry["source_label"]})
        image, label = pair["image"][None], pair["label"][None]
        if config.get("flip"):
            image, label = seeded_flips(image, label, [entry["seed"]], orientation)
        keep = keep_mask(label, mode=mode, margin=margin)
        if factor:
            size = keep.shape[-2:]
            keep = F.interpolate(to_latent_grid(keep, [s // factor for s in size]), size=size, mode="nearest")
        other = None
        if background == "real":
            candidates = [p for p in real_images if p != entry["source_image"]] or real_images
            choice = int(torch.randint(len(candidates), (1,), generator=generator))
            other = load_image({"image": candidates[choice]})["image"]
        control = paste_on_background(image[0], keep[0], background, other, generator)
        writer.write_pair(
            control,
            label[0],
            seed=seed,
            source_image=entry["source_image"],
            source_label=entry["source_label"],
            name=name,
        )
    return writer.finalize()


def _background_control(background: str) -> Callable[..., list[dict]]:
    def control(
        synthetic_datalist: str, output_dir: str, real_pairs: Sequence[dict], image_size: int, seed: int
    ) -> list[dict]:
        datalist = make_control_set(synthetic_datalist, output_dir, background, real_pairs, image_size, seed)
        return [{"image": e["image"], "label": e["label"]} for e in load_synthetic_pairs(datalist)]

    return control


def extra_real_copies(
    synthetic_datalist: str, output_dir: str, real_pairs: Sequence[dict], image_size: int, seed: int
) -> list[dict]:
    """As many real labelled pairs as the synthetic set has pairs, cycling through them in a seeded order."""
    count = len(load_synthetic_pairs(synthetic_datalist))
    order = torch.randperm(len(real_pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [{"image": real_pairs[i]["image"], "label": real_pairs[i]["label"]} for i in (order * count)[:count]]


CONTROLS: dict[str, Callable[..., list[dict]]] = {
    "noise_background": _background_control("noise"),
    "real_background": _background_control("real"),
    "extra_real_copies": extra_real_copies,
}
