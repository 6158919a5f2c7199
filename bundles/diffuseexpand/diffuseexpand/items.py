"""Training items of DiffuseExpand's stages: each loaded pair becomes a mask sample or an image sample.

Stage I trains one DDPM on both modes (the paper's y1, drawn per item: image with probability ``image_prob``); an
image sample carries its mask as the condition y2 (dropped later for classifier-free guidance,
:class:`common.engines.ConditionDropoutPrepareBatch`), a mask sample the null condition. Stage II's noise-aware
segmenter trains on the same items: its segmentation head on image samples, its mode head on both.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

from diffuseexpand.encoding import IMAGE_MODE, MASK_MODE, PairEncoding

__all__ = ["RandModeItemd"]


class RandModeItemd(RandomizableTransform, MapTransform):
    """``{"image": (1, H, W) in [0, 1], "label": (1, H, W)}`` -> ``image``: the encoded sample of the drawn mode
    (C, H, W) in [-1, 1]; ``condition``: the encoded mask for an image sample, the null condition for a mask sample;
    ``mode``: 0 (mask) or 1 (image); ``label`` is kept (stage II's segmentation target). Plain tensors out (no
    metadata), so items of either mode collate together."""

    def __init__(self, num_classes: int, image_prob: float = 0.5, image_key: str = "image", label_key: str = "label"):
        if not 0.0 <= image_prob <= 1.0:
            raise ValueError(f"image_prob must be in [0, 1], got {image_prob}")
        MapTransform.__init__(self, [image_key, label_key])
        RandomizableTransform.__init__(self, prob=image_prob)
        self.encoding = PairEncoding(num_classes)
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        image = convert_to_tensor(d[self.image_key], dtype=torch.float32, track_meta=False)[None]
        label = convert_to_tensor(d[self.label_key], track_meta=False)[None]
        mask = self.encoding.encode_mask(label)[0]
        if self._do_transform:
            d[self.image_key], d["condition"], mode = self.encoding.encode_image(image)[0], mask, IMAGE_MODE
        else:
            d[self.image_key], d["condition"], mode = mask, self.encoding.null_condition(mask), MASK_MODE
        d["mode"] = torch.tensor(mode, dtype=torch.long)
        return d
