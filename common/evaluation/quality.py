"""Generator quality: how synthetic pairs look to a segmenter trained on real data, and how they agree with their masks.

- FID (MONAI ``FIDMetric``) and KID (:func:`common.metrics.kernel_inception_distance`) between real and synthetic
  images in the bottleneck features of the reference segmenter (DESIGN: "by default the encoder of a segmenter trained
  on the real data"), so nothing is downloaded; the numbers compare sets within one evaluation, not across them.
- Real-Only: the reference segmenters scored on the synthetic pairs (do the masks match the images?).
- Condition agreement of class-conditional sets: how often a mask shows exactly the conditioned classes.
- Laterality, for data with lateral class pairs: how often a synthetic mask has each pair on the sides the real masks
  have it (left lung on the image's right, say), compared by the mean column of the two classes.
- Diversity: the mean MS-SSIM between the images made from the same source pair or condition (lower: more diverse).
- Regenerated share, for inpainting sets (AugPaint): the mean fraction of each image outside the kept region of its
  source mask, i.e. what the generator actually made; near 0 the pairs are near-copies of the real ones (class boxes
  of large structures cover the whole image).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import FIDMetric
from monai.networks.layers import SkipConnection

from common.data import Orientation, foreground_classes, pair_transforms
from common.metrics import extract_features, kernel_inception_distance, ms_ssim
from common.networks import DeepEnsemble
from common.regions import regenerated_fraction

__all__ = [
    "class_condition_agreement",
    "image_feature_distances",
    "lateral_side_agreement",
    "load_images",
    "regenerated_share",
    "sample_diversity",
    "synthetic_feature_distances",
    "unet_bottleneck_features",
]


def _deepest_layer(network: torch.nn.Module) -> torch.nn.Module:
    """The bottom block of a MONAI ``UNet`` (inside its innermost skip connection)."""
    module = network.model
    while True:
        skips = [m for m in module.children() if isinstance(m, SkipConnection)]
        if not skips:
            return module
        module = skips[0].submodule


@torch.no_grad()
def unet_bottleneck_features(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled output of the deepest layer of a MONAI ``UNet`` (the first member of a
    :class:`DeepEnsemble`): (B, channels)."""
    if isinstance(network, DeepEnsemble):
        network = network.members[0]
    captured = []

    def bottleneck(batch: torch.Tensor) -> torch.Tensor:
        network(batch)
        return captured.pop()

    network.eval()
    handle = _deepest_layer(network).register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        return extract_features(bottleneck, images)
    finally:
        handle.remove()


def load_images(pairs: Sequence[dict], image_size: int) -> torch.Tensor:
    """The images of ``pairs`` as the segmenters see them: (N, 1, image_size, image_size) in [0, 1]."""
    load = pair_transforms(image_size, keys=("image",), augment=False)
    return torch.stack([torch.as_tensor(load({"image": p["image"]})["image"]) for p in pairs])


def synthetic_feature_distances(
    network: torch.nn.Module, real_pairs: Sequence[dict], synthetic_pairs: Sequence[dict], image_size: int = 64
) -> dict[str, float]:
    """FID and KID between real and synthetic images in the bottleneck space of a segmenter trained on real data;
    NaN (with the reason) when a set has fewer than two images."""
    result = {"num_real": len(real_pairs), "num_synthetic": len(synthetic_pairs)}
    if min(len(real_pairs), len(synthetic_pairs)) < 2:
        return {**result, "fid": math.nan, "kid": math.nan, "note": "FID/KID need at least two images per set"}
    return {
        **result,
        **image_feature_distances(
            network, load_images(real_pairs, image_size), load_images(synthetic_pairs, image_size)
        ),
    }


def image_feature_distances(network: torch.nn.Module, real: torch.Tensor, synthetic: torch.Tensor) -> dict[str, float]:
    """FID and KID between two batches of images (N, 1, H, W) in [0, 1] in the bottleneck space of ``network``."""
    device = next(network.parameters()).device
    real_features = unet_bottleneck_features(network, real.to(device))
    synthetic_features = unet_bottleneck_features(network, synthetic.to(device))
    return {
        "fid": float(FIDMetric()(synthetic_features.double(), real_features.double())),
        "kid": float(kernel_inception_distance(real_features, synthetic_features)),
    }


def class_condition_agreement(pairs: Sequence[dict], num_classes: int) -> dict:
    """How well a class-conditional generator obeys its condition, from the masks it wrote.

    Returns ``exact``: the fraction of pairs whose mask shows exactly the conditioned foreground classes;
    ``recall``: per class, the fraction of pairs conditioned on it whose mask shows it (NaN if never asked);
    ``num_pairs``: the pairs with a ``condition``.
    """
    load = pair_transforms(None, keys=("label",), augment=False)
    conditioned = [p for p in pairs if p.get("condition") is not None]
    if not conditioned:
        raise ValueError("no pair records the class condition it was generated with")
    asked, shown = np.zeros(num_classes), np.zeros(num_classes)
    exact = 0
    for pair in conditioned:
        present = set(foreground_classes(load({"label": pair["label"]})["label"]))
        condition = {int(c) for c in pair["condition"]}
        exact += present == condition
        for c in condition:
            asked[c] += 1
            shown[c] += c in present
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = shown / asked
    return {"exact": exact / len(conditioned), "recall": recall.tolist(), "num_pairs": len(conditioned)}


def sample_diversity(pairs: Sequence[dict], image_size: int = 64, max_pairs_per_group: int = 6) -> float:
    """Mean MS-SSIM over the pairs of images made from the same source pair (or the same condition, for sets made
    from noise); at most ``max_pairs_per_group`` images of each group. NaN when no group has two images."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for pair in pairs:
        key = pair.get("source_image") or str(pair.get("condition"))
        groups[key].append(pair)
    first, second = [], []
    for members in groups.values():
        for a, b in itertools.combinations(members[:max_pairs_per_group], 2):
            first.append(a)
            second.append(b)
    if not first:
        return math.nan
    return float(ms_ssim(load_images(first, image_size), load_images(second, image_size)).mean())


def _side_signs(pairs: Sequence[dict], orientation: Orientation, lone_only: bool = True) -> np.ndarray:
    """(N, 3 P) side signs of each mask, three per lateral pair p: [3 p] +1 where the pair's first class lies right
    of (a higher mean column than) its second, -1 where left of it, 0 where the mask does not show both; [3 p + 1]
    and [3 p + 2] the first and the second class (only when shown without the other if ``lone_only``): +1 right of
    the image's centre, -1 left of it, else 0."""
    load = pair_transforms(None, keys=("label",), augment=False)
    signs = np.zeros((len(pairs), 3 * len(orientation.lateral_pairs)), dtype=int)
    for row, pair in enumerate(pairs):
        label = torch.as_tensor(load({"label": pair["label"]})["label"])[0]
        columns = torch.arange(label.shape[-1], dtype=torch.float64)
        centre = (label.shape[-1] - 1) / 2
        for index, classes in enumerate(orientation.lateral_pairs):
            masks = [(label == c).double() for c in classes]
            means = [(m * columns).sum() / m.sum() if m.sum() > 0 else None for m in masks]
            both = None not in means
            if both:
                signs[row, 3 * index] = 1 if means[0] > means[1] else -1
            for side, mean in enumerate(means):
                if mean is not None and not (both and lone_only):
                    signs[row, 3 * index + 1 + side] = int(np.sign(float(mean) - centre))
    return signs


def lateral_side_agreement(
    real_pairs: Sequence[dict], synthetic_pairs: Sequence[dict], orientation: Orientation
) -> dict[str, Any]:
    """Whether synthetic masks keep the real masks' left and right.

    For each lateral pair, the side of one class against the other in masks showing both, and the side of the image's
    centre each class lies on in masks showing it alone, are checked against the sides most real masks show (the
    centre side from every real mask showing the class). A synthetic mask showing at least one class of a pair whose
    real side is known is checked, and keeps laterality when every side it shows is the real one. Returns
    ``fraction`` (of the checked masks; NaN when none is checked), ``checked``, ``kept`` and ``real_sides`` (per
    pair: +1 its first class on the image's right of its second, -1 on its left, 0 never seen together in the real
    masks).
    """
    real = _side_signs(real_pairs, orientation, lone_only=False)
    real_sides = np.sign(real.sum(axis=0))
    synthetic = _side_signs(synthetic_pairs, orientation)
    known = real_sides != 0
    shown = (synthetic != 0) & known
    checked = shown.any(axis=1)
    kept = checked & ((synthetic == real_sides) | ~shown).all(axis=1)
    return {
        "fraction": float(kept.sum() / checked.sum()) if checked.any() else math.nan,
        "checked": int(checked.sum()),
        "kept": int(kept.sum()),
        "real_sides": real_sides[0::3].astype(int).tolist(),
    }


def regenerated_share(pairs: Sequence[dict], config: Mapping[str, Any]) -> float | None:
    """Mean fraction of each synthetic image an inpainting set regenerated: outside the keep mask (its config's
    ``mask_mode`` and ``box_margin``) of the pair's source mask at the set's ``image_size``, on the latent grid when
    the config records ``latent_factor`` (a flip moves the kept region, not its size). None for sets without
    ``mask_mode`` or source masks (made from noise: all of each image is new)."""
    sources = [p["source_label"] for p in pairs if p.get("source_label")]
    if "mask_mode" not in config or not sources:
        return None
    size = int(config["image_size"])
    load = pair_transforms(size, keys=("label",), augment=False)
    masks = {path: load({"label": path})["label"] for path in set(sources)}
    labels = torch.stack([masks[path] for path in sources]).long()
    factor = config.get("latent_factor")
    latent_size = (size // int(factor),) * 2 if factor else None
    share = regenerated_fraction(labels, config["mask_mode"], int(config.get("box_margin") or 0), latent_size)
    return float(share.mean())
