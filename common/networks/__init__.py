"""Networks MONAI lacks: a deep ensemble of segmenters as one module."""

from common.networks.ensemble import DeepEnsemble, MemberMeanLoss

__all__ = ["DeepEnsemble", "MemberMeanLoss"]
