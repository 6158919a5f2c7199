"""The evaluation protocol: train the same segmenter on real, real + augmentation and real + synthetic data, score it.

DESIGN ("Evaluation protocol"): every arm trains ``bundles/segmentation`` with the same step budget and seeds on the
same labelled subset, is scored on the held-out test split, and is compared to real-only by a paired difference
over seeds with a 95 % interval.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.networks.layers import SkipConnection

from common import augmentation
from common.data import chain_transforms, pair_transforms
from common.metrics import extract_features, frechet_distance, kernel_inception_distance, per_class_scores
from common.networks import DeepEnsemble
from common.stages import run_workflow

logger = logging.getLogger(__name__)

__all__ = [
    "LeakageError",
    "SEGMENTATION_CONFIG",
    "check_provenance",
    "class_condition_agreement",
    "load_synthetic_pairs",
    "load_trained_segmenter",
    "score_segmenter",
    "synthetic_feature_distances",
    "train_segmenter",
    "unet_bottleneck_features",
]

SEGMENTATION_CONFIG = str(Path(__file__).resolve().parents[1] / "bundles" / "segmentation" / "configs" / "train.json")


class LeakageError(ValueError):
    """A synthetic set was made from a mask outside the labelled subset or from a test-split image."""


def load_synthetic_pairs(datalist_path: str) -> list[dict]:
    """The kept pairs of a synthetic datalist, with every path made absolute."""
    with open(datalist_path) as f:
        entries = json.load(f)["training"]
    root = os.path.dirname(os.path.abspath(datalist_path))
    keys = ("image", "label", "source_image", "source_label")
    return [
        {**e, **{k: os.path.normpath(os.path.join(root, e[k])) for k in keys if e.get(k) is not None}} for e in entries
    ]


def check_provenance(datalist_path: str, labelled: Sequence[dict], test: Sequence[dict]) -> None:
    """Refuse a synthetic set that used a mask outside ``labelled`` or any image of ``test``, naming the pairs."""
    allowed_labels = {os.path.realpath(p["label"]) for p in labelled}
    test_files = {os.path.realpath(p[k]) for p in test for k in ("image", "label") if k in p}
    problems = []
    for entry in load_synthetic_pairs(datalist_path):
        source_label, source_image = entry.get("source_label"), entry.get("source_image")
        if source_label is not None and os.path.realpath(source_label) not in allowed_labels:
            problems.append(f"{entry['image']}: its mask {source_label} is not in the labelled subset")
        if source_image is not None and os.path.realpath(source_image) in test_files:
            problems.append(f"{entry['image']}: its source image {source_image} is in the test split")
    if problems:
        raise LeakageError(
            f"{datalist_path}: {len(problems)} synthetic pair(s) leak data outside the labelled training subset:\n  "
            + "\n  ".join(problems)
        )


def train_segmenter(
    train_data: Sequence[dict],
    work_dir: str,
    seed: int,
    iterations: int,
    dataset_dir: str | None,
    image_size: int = 64,
    classic_augmentation: bool = False,
    val_data: Sequence[dict] = (),
    val_interval: int | None = None,
    config_files: Sequence[str] = (),
    **overrides,
) -> torch.nn.Module:
    """Train ``bundles/segmentation`` (with ``config_files`` layered over it, e.g. a GAUDA downstream scheme) on
    ``train_data`` for a fixed budget and return the network it saved to ``work_dir/model.pt``. ``bundle_root``
    defaults to the segmentation bundle's; pass the layered bundle's when its configs read files under it.

    Without ``val_data`` the final network is saved; with it, the bundle validates every ``val_interval`` iterations
    (default: once, at the end) and saves the best one by validation Dice.
    """
    if classic_augmentation:
        overrides["train#preprocessing"] = chain_transforms(
            [pair_transforms(image_size, augment=True), augmentation.classic_augmentation()]
        )
    overrides.setdefault("bundle_root", os.path.dirname(os.path.dirname(SEGMENTATION_CONFIG)))
    run_workflow(
        [SEGMENTATION_CONFIG, *config_files],
        dataset_dir=dataset_dir,
        image_size=image_size,
        seed=seed,
        max_iterations=iterations,
        val_interval=val_interval or iterations,
        ckpt_dir=work_dir,
        ckpt_name="model.pt",
        output_dir=os.path.join(work_dir, "logs"),
        **{"train#dataset#data": list(train_data), "validate#dataset#data": list(val_data)},
        **overrides,
    )
    return load_trained_segmenter(work_dir, dataset_dir, image_size, config_files, **overrides)


def load_trained_segmenter(
    run_dir: str,
    dataset_dir: str | None,
    image_size: int = 64,
    config_files: Sequence[str] = (),
    **overrides,
) -> torch.nn.Module:
    """The network :func:`train_segmenter` wrote to ``run_dir`` (``model.pt``), rebuilt from the ``network_def`` of
    the same layered configs and overrides, in eval mode."""
    parser = ConfigParser()
    parser.read_config([SEGMENTATION_CONFIG, *config_files])
    parser.update({"dataset_dir": dataset_dir, "image_size": image_size, **overrides})
    network = parser.get_parsed_content("network_def")
    checkpoint = os.path.join(run_dir, "model.pt")
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return network.eval()


@torch.no_grad()
def score_segmenter(
    network: torch.nn.Module,
    pairs: Sequence[dict],
    num_classes: int,
    image_size: int = 64,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per-image, per-class Dice and IoU of ``network`` on ``pairs`` at the model's input size.

    Returns ``{"dice": (N, C), "iou": (N, C)}`` (background included as column 0; NaN where a class is absent from
    both prediction and reference).
    """
    device = next(network.parameters()).device
    load = pair_transforms(image_size, augment=False)
    network.eval()
    dice, iou = [], []
    for start in range(0, len(pairs), batch_size):
        items = [load(dict(p)) for p in pairs[start : start + batch_size]]
        images = torch.stack([torch.as_tensor(i["image"]) for i in items]).to(device)
        labels = torch.stack([torch.as_tensor(i["label"]) for i in items]).to(device)
        pred = network(images).argmax(dim=1, keepdim=True)
        scores = per_class_scores(pred, labels, num_classes)
        dice.append(scores["dice"].cpu().numpy())
        iou.append(scores["iou"].cpu().numpy())
    return {"dice": np.concatenate(dice), "iou": np.concatenate(iou)}


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
    :class:`DeepEnsemble`): (B, channels), a feature space that needs no download (DESIGN: FID/KID "by default the
    encoder of a segmenter trained on the real data")."""
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


def synthetic_feature_distances(
    network: torch.nn.Module, real_pairs: Sequence[dict], synthetic_pairs: Sequence[dict], image_size: int = 64
) -> dict[str, float]:
    """FID and KID between real and synthetic images in the bottleneck space of a segmenter trained on real data."""
    device = next(network.parameters()).device
    load = pair_transforms(image_size, keys=("image",), augment=False)

    def features(pairs: Sequence[dict]) -> torch.Tensor:
        images = torch.stack([torch.as_tensor(load({"image": p["image"]})["image"]) for p in pairs])
        return unet_bottleneck_features(network, images.to(device))

    real, fake = features(real_pairs), features(synthetic_pairs)
    return {
        "fid": float(frechet_distance(real, fake)),
        "kid": float(kernel_inception_distance(real, fake)),
        "num_real": len(real_pairs),
        "num_synthetic": len(synthetic_pairs),
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
        label = torch.as_tensor(load({"label": pair["label"]})["label"])
        present = {int(c) for c in torch.unique(label.long())} - {0}
        condition = {int(c) for c in pair["condition"]}
        exact += present == condition
        for c in condition:
            asked[c] += 1
            shown[c] += c in present
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = shown / asked
    return {"exact": exact / len(conditioned), "recall": recall.tolist(), "num_pairs": len(conditioned)}
