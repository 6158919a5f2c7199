"""Joint image + mask latents and class conditions for a class-conditional LDM on (image, mask) pairs (GAUDA).

Two frozen autoencoders encode a pair: the image autoencoder the grey image (1, H, W), the mask autoencoder the one-hot
mask (K, H, W) (:func:`one_hot_pair_transforms`). Their latents have the same spatial size and are scaled separately,
each by ``1 / std`` of its own training latents (:func:`common.latents.latent_scale_factor`), then concatenated on the
channel axis: ``cat(s_image * z_image, s_mask * z_mask)`` is what the LDM models (:func:`joint_training_items`), and
:func:`split_joint_latent` undoes the concatenation before decoding.

The condition of a pair is the multi-hot vector of the foreground classes present in its mask, shaped (1, K) per
item so that MONAI's ``DiffusionModelUNet`` takes it as a cross-attention context of one token
(:func:`class_condition`); entry ``c`` is 1 when class ``c`` is present and the background entry 0 is always 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import AsDiscreted, Compose
from monai.utils import convert_to_tensor
from torch import nn

from common.data import Orientation, chain_transforms, foreground_class_sets, pair_transforms
from common.latents import encode_dataset

__all__ = [
    "class_condition",
    "encode_pairs",
    "joint_training_items",
    "one_hot_pair_transforms",
    "split_joint_latent",
]


def one_hot_pair_transforms(
    image_size: int | Sequence[int],
    num_classes: int,
    augment: bool = False,
    class_map: Mapping | None = None,
    orientation: Orientation | None = None,
) -> Compose:
    """:func:`common.data.pair_transforms` with the label as a one-hot float mask (K, H, W), the mask autoencoder's
    input; ``augment`` moves image and mask alike, with the flips ``orientation`` allows (lateral pairs swapped before
    the one-hot encoding)."""
    return chain_transforms(
        [
            pair_transforms(image_size, augment=augment, class_map=class_map, orientation=orientation),
            AsDiscreted(keys="label", to_onehot=num_classes),
        ]
    )


def class_condition(class_sets: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """Multi-hot conditions (B, 1, K) of ``class_sets`` (foreground class indices 1..K-1 each)."""
    condition = torch.zeros(len(class_sets), 1, num_classes)
    for index, classes in enumerate(class_sets):
        bad = [c for c in classes if not 1 <= int(c) < num_classes]
        if bad:
            raise ValueError(
                f"class set {list(classes)} holds {bad}: conditions are foreground classes 1..{num_classes - 1}"
            )
        condition[index, 0, [int(c) for c in classes]] = 1.0
    return condition


@torch.no_grad()
def encode_pairs(
    image_autoencoder: nn.Module,
    mask_autoencoder: nn.Module,
    pairs: Sequence[Mapping[str, Any]],
    transform: Compose,
    device: str | torch.device,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Encode every pair once with both frozen autoencoders (latents kept on the CPU).

    ``transform`` is :func:`one_hot_pair_transforms` without augmentation. Returns one dict per pair: ``"image"``:
    image latent, ``"label"``: mask latent (same spatial size), ``"classes"``: its foreground classes.
    """
    images = encode_dataset(image_autoencoder, pairs, transform, device, batch_size)
    masks = encode_dataset(mask_autoencoder, pairs, transform, device, batch_size, key="label")
    if images and images[0]["image"].shape[1:] != masks[0]["label"].shape[1:]:
        raise ValueError(
            f"image latents {tuple(images[0]['image'].shape)} and mask latents {tuple(masks[0]['label'].shape)} "
            "must have the same spatial size: give both autoencoders the same downsampling"
        )
    classes = []
    for batch in DataLoader(Dataset(list(pairs), transform), batch_size=batch_size, shuffle=False, num_workers=0):
        classes.extend(foreground_class_sets(convert_to_tensor(batch["label"], track_meta=False).argmax(dim=1)))
    return [
        {"image": image["image"], "label": mask["label"], "classes": found}
        for image, mask, found in zip(images, masks, classes, strict=True)
    ]


def joint_training_items(
    encoded: Sequence[Mapping[str, Any]], image_scale: float, mask_scale: float, num_classes: int
) -> list[dict[str, torch.Tensor]]:
    """The LDM's training items: ``"image"``: ``cat(image_scale * z_image, mask_scale * z_mask)`` and
    ``"condition"``: the multi-hot vector (1, K) of the pair's classes."""
    return [
        {
            "image": torch.cat([image_scale * item["image"], mask_scale * item["label"]], dim=0),
            "condition": class_condition([item["classes"]], num_classes)[0],
        }
        for item in encoded
    ]


def split_joint_latent(latent: torch.Tensor, image_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image part, mask part) of joint latents (B, C_image + C_mask, h, w)."""
    return latent[:, :image_channels], latent[:, image_channels:]
