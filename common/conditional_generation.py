"""A generation run from noise: N pairs per class set from a class-conditional pair sampler, written to disk.

:class:`ClassConditionalGenerationRun` plans one job per (class set, sample k), named ``c<classes>_s<k>`` (``c1-4_s0``;
``c0_s<k>`` for the empty set, a background-only condition) with seed ``seed + set_index * num_samples + k``, hands
batches to ``sampler(class_sets, seeds) -> (images, labels)`` (e.g. :class:`common.sampling.JointLatentSampler`) and
writes every pair with :class:`common.io.SyntheticDatasetWriter` (atomic; an interrupted run resumes without
duplicates): ``condition`` = the class set, ``source_image`` / ``source_label`` null (sampled from noise), score null.
Then the contact sheet and the datalist. :func:`observed_class_sets` lists the class sets of real masks, the default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.utils import convert_to_tensor, optional_import

from common.data import pair_transforms
from common.io import SyntheticDatasetWriter

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["ClassConditionalGenerationRun", "observed_class_sets"]

logger = logging.getLogger(__name__)

PairSampler = Callable[[Sequence[Sequence[int]], Sequence[int]], tuple[torch.Tensor, torch.Tensor]]


def observed_class_sets(
    pairs: Sequence[Mapping[str, Any]], image_size: int | Sequence[int] = 64, class_map: Mapping | None = None
) -> list[list[int]]:
    """The distinct sets of foreground classes of the masks of ``pairs`` (as loaded at ``image_size``), sorted."""
    found: set[tuple[int, ...]] = set()
    transform = pair_transforms(image_size, keys=("label",), class_map=class_map)
    labels = [{"label": pair["label"]} for pair in pairs]
    for batch in DataLoader(Dataset(labels, transform), batch_size=32, shuffle=False, num_workers=0):
        for label in convert_to_tensor(batch["label"], track_meta=False):
            found.add(tuple(int(c) for c in torch.unique(label).tolist() if c > 0))
    return [list(classes) for classes in sorted(found)]


class ClassConditionalGenerationRun:
    """Sample ``num_samples`` pairs for every class set and write the data set (see the module docstring).

    Args:
        sampler: ``sampler(class_sets, seeds) -> (images (B, 1, H, W) in [0, 1], labels (B, 1, H, W))``.
        class_sets: the conditions, each a list of foreground class indices.
        output_dir: where the data set goes (images/, masks/, contact_sheet.png, datalist.json).
        method: method name recorded in the datalist.
        config: sampling knobs recorded in the datalist; resuming needs the same ones.
        num_samples: pairs per class set.
        seed: base seed; job seeds are ``seed + set_index * num_samples + sample``.
        batch_size: pairs sampled together.
        num_classes: classes incl. background, for the contact sheet's colours.
        progress: tqdm bar over the batches.
    """

    def __init__(
        self,
        sampler: PairSampler,
        class_sets: Sequence[Sequence[int]],
        output_dir: str,
        method: str,
        config: Mapping[str, Any] | None = None,
        num_samples: int = 5,
        seed: int = 0,
        batch_size: int = 8,
        num_classes: int | None = None,
        progress: bool = True,
    ) -> None:
        if not class_sets:
            raise ValueError("no class sets to condition on")
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
        self.sampler = sampler
        self.class_sets = [sorted({int(c) for c in classes}) for classes in class_sets]
        self.output_dir = output_dir
        self.method = method
        self.config = dict(config or {})
        self.jobs = [
            (f"c{'-'.join(map(str, classes)) or '0'}_s{sample}", seed + index * num_samples + sample, classes)
            for index, classes in enumerate(self.class_sets)
            for sample in range(num_samples)
        ]
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.progress = progress and has_tqdm

    def run(self) -> str:
        """Sample and write every pair not on disk yet, then the contact sheet and the datalist; returns its path."""
        writer = SyntheticDatasetWriter(self.output_dir, self.method, self.config)
        pending = [job for job in self.jobs if not writer.done(job[0])]
        logger.info(
            f"{self.method}: {len(self.jobs)} pairs for {len(self.class_sets)} class sets, "
            f"{len(self.jobs) - len(pending)} already written, {len(pending)} to sample in {self.output_dir}"
        )
        batches = [pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)]
        for batch in tqdm(batches, desc="sampling", unit="batch") if self.progress else batches:
            images, labels = self.sampler([classes for _, _, classes in batch], [seed for _, seed, _ in batch])
            images, labels = images.cpu(), labels.cpu()
            for index, (name, seed, classes) in enumerate(batch):
                writer.write_pair(images[index], labels[index], seed=seed, condition=classes, name=name)
        if len(writer):
            writer.write_contact_sheet(self.num_classes or 256)
        return writer.finalize()
