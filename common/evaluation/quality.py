"""Generator quality: how synthetic pairs look to a segmenter trained on real data, and how they agree with their masks.

- FID (MONAI ``FIDMetric``) and KID (:func:`common.metrics.kernel_inception_distance`) between real and synthetic
  images in the bottleneck features of the reference segmenter (DESIGN: "by default the encoder of a segmenter trained
  on the real data"), so nothing is downloaded; the numbers compare sets within one evaluation, not across them.
- Real-Only: the reference segmenters scored on the synthetic pairs (do the masks match the images?).
- Condition agreement of class-conditional sets: how often a mask shows exactly the conditioned classes.
- Diversity: the mean MS-SSIM between the images made from the same source pair or condition (lower: more diverse).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import FIDMetric
from monai.networks.layers import SkipConnection

from common.data import foreground_classes, pair_transforms
from common.metrics import extract_features, kernel_inception_distance, ms_ssim
from common.networks import DeepEnsemble

__all__ = [
    "class_condition_agreement",
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


def _load_images(pairs: Sequence[dict], image_size: int) -> torch.Tensor:
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
    device = next(network.parameters()).device
    real = unet_bottleneck_features(network, _load_images(real_pairs, image_size).to(device))
    fake = unet_bottleneck_features(network, _load_images(synthetic_pairs, image_size).to(device))
    return {
        **result,
        "fid": float(FIDMetric()(fake.double(), real.double())),
        "kid": float(kernel_inception_distance(real, fake)),
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
    return float(ms_ssim(_load_images(first, image_size), _load_images(second, image_size)).mean())
