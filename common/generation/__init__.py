"""The generation pipeline: jobs -> a generator -> a filter -> the atomic writer (see :mod:`.run`)."""

from __future__ import annotations

from .jobs import (
    GenerationJob,
    JobBatch,
    jobs_from_class_sets,
    jobs_from_label_maps,
    jobs_from_noise,
    jobs_from_pairs,
    pair_name,
)
from .run import GenerationRun, PairFilter, PairGenerator, load_job_batch

__all__ = [
    "GenerationJob",
    "GenerationRun",
    "JobBatch",
    "PairFilter",
    "PairGenerator",
    "jobs_from_class_sets",
    "jobs_from_label_maps",
    "jobs_from_noise",
    "jobs_from_pairs",
    "load_job_batch",
    "pair_name",
]
