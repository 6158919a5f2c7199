"""Ignite handlers: GAUDA's uncertainty-guided synthetic replacement, the Adaptive Sampling baseline, TensorBoard
pictures of what a stage has learnt and progress (rate, time left) of a run."""

from common.handlers.adaptive_sampling import AdaptiveSamplingHandler, sample_class_sets
from common.handlers.gauda import GAUDAHandler, top_k_uncertain_classes
from common.handlers.pictures import (
    ProgressLogger,
    TensorBoardPicture,
    first_items,
    generator_picture,
    reconstruction_picture,
)

__all__ = [
    "AdaptiveSamplingHandler",
    "GAUDAHandler",
    "ProgressLogger",
    "TensorBoardPicture",
    "first_items",
    "generator_picture",
    "reconstruction_picture",
    "sample_class_sets",
    "top_k_uncertain_classes",
]
