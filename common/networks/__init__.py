"""Networks MONAI lacks: a deep ensemble of segmenters as one module, and the choice between it and MC dropout."""

from common.networks.ensemble import BAYESIAN_MODELS, DeepEnsemble, MemberMeanLoss, bayesian_segmenter

__all__ = ["BAYESIAN_MODELS", "DeepEnsemble", "MemberMeanLoss", "bayesian_segmenter"]
