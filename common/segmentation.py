"""Helpers of the downstream segmentation bundle (``bundles/segmentation``) for what its JSON cannot express.

The bundle trains the segmenter every augmentation method is judged by; these functions name its per-class metrics,
list the images to segment at inference, and write predicted class-index maps as PNG files at the input's size (or
hand them to MONAI Label, which writes them itself).
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize
from monai.utils import ImageMetaKey, MetaKeys
from PIL import Image

from common.data import load_splits, read_datalist
from common.data.readers import image_file_stem, is_image_file
from common.files import atomic_files

__all__ = [
    "MonaiLabelClassMapd",
    "SaveMaskd",
    "at_input_size",
    "class_metric_names",
    "image_entries",
    "inference_datalist",
    "uint8_class_map",
]


def class_metric_names(prefix: str, class_names: Sequence[str]) -> list[str]:
    """Metric keys such as ``val_dice_blood_vessel`` for ``class_names``: the name up to any parenthesis, with
    runs of other characters than letters and digits turned into ``_`` (TensorBoard tags stay readable)."""
    names = []
    for index, name in enumerate(class_names):
        slug = re.sub(r"[^0-9A-Za-z]+", "_", str(name).split("(")[0]).strip("_").lower()
        names.append(prefix + (slug or f"class_{index}"))
    if len(set(names)) != len(names):
        raise ValueError(f"class names {list(class_names)} give duplicate metric names {names}")
    return names


def inference_datalist(input_dir: str | None, dataset_dir: str | None = None) -> list[dict]:
    """The images to segment: every image file in ``input_dir`` (sorted, masks not needed), or, without
    ``input_dir``, the test split of ``dataset_dir`` (``None`` = the embedded phantoms)."""
    if input_dir is None:
        return load_splits(dataset_dir)["test"]
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"input_dir {input_dir} is not a folder")
    files = sorted(f for f in os.listdir(input_dir) if is_image_file(f))
    if not files:
        raise FileNotFoundError(f"input_dir {input_dir} holds no image file (png, jpg, bmp, tif, nii, nii.gz)")
    return [{"image": os.path.abspath(os.path.join(input_dir, f))} for f in files]


def image_entries(datalist: str | Sequence[str | Mapping], datalist_key: str = "training") -> list[dict]:
    """``[{"image": path}, ...]`` from a list of paths or of dicts with an ``image`` key (labels are dropped, so
    images without masks work), or from a Decathlon datalist JSON file (its ``datalist_key`` list: "training",
    "validation" or "test"; relative paths are resolved against the file's folder)."""
    if isinstance(datalist, str):
        if not os.path.isfile(datalist):
            raise FileNotFoundError(f"datalist {datalist} does not exist")
        lists = read_datalist(datalist, allow_outside_paths=True)  # inference only reads the images it segments
        if datalist_key not in lists:
            raise ValueError(f"datalist_key must be one of {sorted(lists)}, got {datalist_key!r}")
        return image_entries(lists[datalist_key])
    entries = []
    for entry in datalist:
        image = entry if isinstance(entry, str) else entry.get("image") if isinstance(entry, Mapping) else None
        if not isinstance(image, str):
            raise ValueError(f"datalist entry {entry!r} is neither an image path nor a dict with an 'image' path")
        entries.append({"image": image})
    return entries


def at_input_size(mask: torch.Tensor, meta: Mapping) -> torch.Tensor:
    """A class-index map (1, h, w) resized (nearest neighbour) to the size of the file it was predicted from, read
    from the image's ``spatial_shape`` (rows, columns) metadata; as it is when that is missing."""
    mask = torch.as_tensor(mask).detach().cpu()
    if MetaKeys.SPATIAL_SHAPE not in meta:
        return mask
    size = [int(s) for s in np.asarray(meta[MetaKeys.SPATIAL_SHAPE]).reshape(-1)[:2]]
    return torch.as_tensor(Resize(spatial_size=size, mode="nearest-exact")(mask.float()))


def uint8_class_map(mask: torch.Tensor, what: str) -> np.ndarray:
    """A class-index map (1, H, W) as a uint8 array (H, W); ``what`` names it in the error when it is not one."""
    if mask.ndim != 3 or mask.shape[0] != 1:
        raise ValueError(f"{what}: expected a (1, H, W) class-index map, got shape {tuple(mask.shape)}")
    values = torch.as_tensor(mask)[0].round().numpy()
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"{what}: class indices {values.min()}..{values.max()} do not fit uint8")
    return values.astype(np.uint8)


class MonaiLabelClassMapd(MapTransform):
    """The predicted class map as MONAI Label writes it (PNG or NIfTI): (1, h, w) class indices become a uint8 array
    at the input file's size without channel axis, in (columns, rows) order.

    MONAI Label's writer hands a 2D array to ITK transposed (it keeps ITK's x, y order), so a (rows, columns) map
    would come out transposed, and a channel axis gives a 1-pixel-wide PNG. After the bundle's transforms MONAI Label
    also resizes ``pred`` to the image's ``spatial_shape`` (its ``Restored``); that shape is set to the map's, so the
    map passes unchanged. Nothing is written to disk here: MONAI Label writes the result where it keeps its labels.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, np.ndarray]:
        d = dict(data)
        meta = getattr(d[self.image_key], "meta", {})
        for key in self.key_iterator(d):
            d[key] = np.ascontiguousarray(uint8_class_map(at_input_size(d[key], meta), "pred").T)
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(d[key].shape)
        return d


class SaveMaskd(MapTransform):
    """Write a predicted class-index map (1, H, W) as an 8-bit PNG ``<output_dir>/<image stem>.png`` whose pixel
    value is the class index.

    With ``original_size=True`` the map is resized back (nearest neighbour) to the size of the file it was predicted
    from, read from the image's ``spatial_shape`` (rows, columns) metadata; otherwise it keeps the model's input size.
    Files are written under a temporary name and renamed, so a mask is never half-written; two inputs with the same
    stem in one run are an error rather than a silent overwrite.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        image_key: str = "image",
        original_size: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = output_dir
        self.image_key = image_key
        self.original_size = original_size
        self._written: dict[str, str] = {}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        meta = getattr(d[self.image_key], "meta", {})
        source = str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, ""))
        if not source:
            raise ValueError(f"'{self.image_key}' carries no file name in its metadata; cannot name the mask")
        for key in self.key_iterator(d):
            self.write(at_input_size(d[key], meta) if self.original_size else torch.as_tensor(d[key]).cpu(), source)
        return d

    def write(self, mask: torch.Tensor, source: str) -> str:
        """Write ``mask`` (1, H, W) of class indices for the image file ``source``; returns the PNG path."""
        values = uint8_class_map(mask, source)
        name = image_file_stem(source)
        if self._written.get(name, source) != source:
            raise ValueError(f"{source} and {self._written[name]} would both be written to {name}.png")
        self._written[name] = source
        path = os.path.join(self.output_dir, f"{name}.png")
        with atomic_files(path) as (temp,):
            Image.fromarray(values).save(temp, format="PNG")
        return path
