"""The generation pipeline every method runs: jobs -> a generator -> a filter -> the atomic writer.

:class:`GenerationRun` takes a method's jobs (:mod:`common.generation.jobs`), hands them in batches to its generator
and writes each pair with :class:`common.io.SyntheticDatasetWriter` (atomic; an interrupted run resumes without
duplicates, skipping the jobs whose pair is on disk). A pair records its seed, the real files it came from
(``source_image`` / ``source_label``, absolute paths, or null) and its condition. Once every pair is written the
filter, if any, scores them as written and keeps, relabels or drops them
(:class:`common.filtering.ConfidenceFilter`, :class:`common.filtering.DiceFilter`); a run whose filter has dropped
pairs does not generate them again. Last come the contact sheet and the datalist.

A generator is any callable ``generator(batch: JobBatch) -> (images, labels)`` giving (B, 1, H, W) images in [0, 1]
and class-index labels, one pair per job, sample ``i`` depending only on ``batch.seeds[i]`` and its inputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from monai.utils import convert_to_tensor, optional_import

from common.data import pair_transforms
from common.generation.jobs import GenerationJob, JobBatch
from common.io import SyntheticDatasetWriter

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["GenerationRun", "PairFilter", "PairGenerator", "load_job_batch"]

logger = logging.getLogger(__name__)

PairGenerator = Callable[[JobBatch], tuple[torch.Tensor, torch.Tensor]]


class PairFilter(Protocol):
    """Keeps, relabels or drops the written pairs ``names`` of a run that planned ``planned`` pairs."""

    def apply(self, writer: SyntheticDatasetWriter, names: Sequence[str], planned: int) -> None: ...


class GenerationRun:
    """Make the pair of every job, filter them and write the data set (see the module docstring).

    Args:
        jobs: the pairs to make, e.g. :func:`common.generation.jobs_from_pairs`.
        generator: ``generator(JobBatch) -> (images, labels)``.
        output_dir: where the data set goes (images/, masks/, contact_sheet.png, datalist.json).
        method: method name recorded in the datalist.
        config: sampling knobs recorded in the datalist; resuming needs the same ones.
        batch_size: jobs generated together.
        image_size: size the source pairs are loaded at.
        device: where generation runs (source tensors are moved there).
        pair_filter: a :class:`PairFilter`, or None to keep every pair (score null).
        num_classes: classes incl. background, for the contact sheet's colours (default: up to 256).
        class_map: raw mask value -> class index of the source masks (see :func:`common.data.pair_transforms`).
        progress: tqdm bar over the batches.
    """

    def __init__(
        self,
        jobs: Sequence[GenerationJob],
        generator: PairGenerator,
        output_dir: str,
        method: str,
        config: Mapping[str, Any] | None = None,
        batch_size: int = 8,
        image_size: int | Sequence[int] = 64,
        device: str | torch.device = "cpu",
        pair_filter: PairFilter | None = None,
        num_classes: int | None = None,
        class_map: Mapping | None = None,
        progress: bool = True,
    ) -> None:
        if not jobs:
            raise ValueError("no jobs to generate: the method planned no pairs")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError("two jobs have the same name: their pairs would overwrite each other")
        self.jobs = list(jobs)
        self.generator = generator
        self.output_dir = output_dir
        self.method = method
        self.config = dict(config or {})
        self.batch_size = batch_size
        self.image_size = image_size
        self.device = torch.device(device)
        self.pair_filter = pair_filter
        self.num_classes = num_classes
        self.class_map = class_map
        self.progress = progress and has_tqdm
        self._loaders: dict[tuple[str, ...], Callable] = {}

    def run(self) -> str:
        """Generate, filter, write the contact sheet and the datalist; returns the datalist path."""
        writer = SyntheticDatasetWriter(self.output_dir, self.method, self.config)
        self.generate(writer)
        if self.pair_filter is None:
            logger.info(f"{self.method}: no filter, all {len(writer)} pairs kept")
        else:
            order = {job.name: index for index, job in enumerate(self.jobs)}
            names = sorted(writer.names, key=lambda name: order.get(name, len(order)))
            self.pair_filter.apply(writer, names, len(self.jobs))
        if len(writer):
            writer.write_contact_sheet(self.num_classes or 256)
        return writer.finalize()

    def generate(self, writer: SyntheticDatasetWriter) -> None:
        """Write every job's pair that is not on disk yet, batch by batch."""
        # the filter runs only once every pair is written: a run that dropped pairs has finished generating
        pending = [] if writer.dropped else [job for job in self.jobs if not writer.done(job.name)]
        logger.info(
            f"{self.method}: {len(self.jobs)} pairs planned, {len(self.jobs) - len(pending)} already written, "
            f"{len(pending)} to generate in {self.output_dir}"
        )
        batches = [pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)]
        for jobs in tqdm(batches, desc=f"{self.method}: generating", unit="batch") if self.progress else batches:
            images, labels = self.generator(self.job_batch(jobs))
            images, labels = images.detach().cpu(), labels.detach().cpu()
            if images.shape[0] != len(jobs) or labels.shape[0] != len(jobs):
                raise ValueError(
                    f"the generator gave {images.shape[0]} images and {labels.shape[0]} labels for {len(jobs)} jobs"
                )
            for index, job in enumerate(jobs):
                source = job.source or {}
                writer.write_pair(
                    images[index],
                    labels[index],
                    seed=job.seed,
                    source_image=os.path.abspath(source["image"]) if "image" in source else None,
                    source_label=os.path.abspath(source["label"]) if "label" in source else None,
                    condition=job.condition,
                    name=job.name,
                )

    def job_batch(self, jobs: Sequence[GenerationJob]) -> JobBatch:
        """The generator's input for ``jobs``: seeds, loaded sources (on the device) and conditions."""
        return load_job_batch(jobs, self.image_size, self.device, self.class_map, self._loaders)


def load_job_batch(
    jobs: Sequence[GenerationJob],
    image_size: int | Sequence[int],
    device: str | torch.device = "cpu",
    class_map: Mapping | None = None,
    loaders: dict[tuple[str, ...], Callable] | None = None,
) -> JobBatch:
    """A generator's input for ``jobs``: their seeds, conditions and sources loaded with :func:`pair_transforms` at
    ``image_size`` onto ``device`` (``loaders`` caches the transforms by source keys across calls)."""
    batch = JobBatch(seeds=[job.seed for job in jobs])
    if any(job.condition is not None for job in jobs):
        batch.conditions = [list(job.condition or ()) for job in jobs]
    sources = [job.source for job in jobs]
    if all(source is None for source in sources):
        return batch
    if any(source is None for source in sources) or len({tuple(sorted(s)) for s in sources}) > 1:
        raise ValueError("the jobs of a batch must all have sources with the same keys, or none")
    keys = tuple(sorted(sources[0]))  # type: ignore[arg-type]
    loaders = {} if loaders is None else loaders
    if keys not in loaders:
        loaders[keys] = pair_transforms(image_size, keys=keys, class_map=class_map)
    loaded = [loaders[keys](dict(source)) for source in sources]  # type: ignore[arg-type]
    device = torch.device(device)
    for key, attribute in (("image", "images"), ("label", "labels")):
        if key in keys:
            stacked = torch.stack([convert_to_tensor(item[key], track_meta=False) for item in loaded])
            setattr(batch, attribute, stacked.to(device) if key == "image" else stacked.long().to(device))
    return batch
