"""Ignite handlers: GAUDA's uncertainty-guided synthetic replacement and the Adaptive Sampling baseline."""

from common.handlers.adaptive_sampling import AdaptiveSamplingHandler, sample_class_sets
from common.handlers.gauda import GAUDAHandler, top_k_uncertain_classes

__all__ = ["AdaptiveSamplingHandler", "GAUDAHandler", "sample_class_sets", "top_k_uncertain_classes"]
