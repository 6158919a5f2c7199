"""Adaptive Sampling (AS), the class-balancing baseline of GAUDA (Frisch et al., after Gopal, ICML 2016).

Gopal's adaptive sampling draws training examples from a non-uniform distribution that favours the classes the model
currently gets wrong, updated as training goes. Here, after every validation:

- class weight ``w_c <- (1 - momentum) * w_c + momentum * (1 - score_c)`` for every foreground class c that a
  validation mask shows, where ``score_c`` is its validation Dice; a class no validation mask shows keeps its weight
  (MONAI's ``MeanDice`` reports 0 for it, which would read as "always wrong"), as does a class scored NaN; all
  weights start at 1;
- sample weight = the largest weight of the foreground classes its mask shows (a background-only mask gets the
  smallest class weight), normalised and mixed with the uniform distribution (``uniform_mix``) so every sample stays
  reachable;
- the weights of the ``torch.utils.data.WeightedRandomSampler`` of the training loader are overwritten in place; the
  sampler draws its indices when the loader starts an epoch, so give it ``num_samples = epoch_length * batch_size``
  for the new weights to apply from the next epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from common.data import foreground_classes, pair_transforms

if TYPE_CHECKING:
    from ignite.engine import Engine
    from torch.utils.data import WeightedRandomSampler
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["AdaptiveSamplingHandler", "sample_class_sets"]


def sample_class_sets(
    pairs: Sequence[Mapping], num_classes: int, class_map: Mapping | None = None, label_key: str = "label"
) -> list[list[int]]:
    """The foreground classes each pair's mask shows (read from its file at full size), in datalist order."""
    load = pair_transforms(None, keys=(label_key,), class_map=class_map)
    sets = []
    for pair in pairs:
        label = torch.as_tensor(load({label_key: pair[label_key]})[label_key]).long()
        sets.append([c for c in foreground_classes(label) if c < num_classes])
    return sets


class AdaptiveSamplingHandler:
    """Re-weight a ``WeightedRandomSampler`` from per-class validation scores; attach it to the evaluator.

    Args:
        sampler: the training loader's sampler (one weight per training sample).
        sample_classes: foreground classes of each training sample (:func:`sample_class_sets`).
        metric_names: the evaluator metrics holding the validation score of classes 1..C-1, in class order
            (e.g. ``common.segmentation.class_metric_names("val_dice_", class_names[1:])``).
        validation_classes: the foreground classes of each validation mask (:func:`sample_class_sets` of the
            validation pairs); only the classes they show are scored. None scores every class.
        momentum: how far each update moves the class weights towards ``1 - score`` (1 = latest scores only).
        uniform_mix: share of the uniform distribution in the sample weights.
        summary_writer: TensorBoard writer for the class weights (``as/weight_<metric>``).
    """

    def __init__(
        self,
        sampler: WeightedRandomSampler,
        sample_classes: Sequence[Sequence[int]],
        metric_names: Sequence[str],
        validation_classes: Sequence[Sequence[int]] | None = None,
        momentum: float = 0.5,
        uniform_mix: float = 0.1,
        summary_writer: SummaryWriter | None = None,
    ) -> None:
        if len(sample_classes) != len(sampler.weights):
            raise ValueError(f"{len(sample_classes)} class sets for a sampler of {len(sampler.weights)} weights")
        if not 0.0 < momentum <= 1.0 or not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"momentum must be in (0, 1] and uniform_mix in [0, 1], got {momentum}, {uniform_mix}")
        self.sampler = sampler
        self.sample_classes = [list(s) for s in sample_classes]
        self.metric_names = list(metric_names)
        all_classes = range(1, len(self.metric_names) + 1)
        self.scored_classes = set(
            all_classes if validation_classes is None else (c for s in validation_classes for c in s)
        )
        self.momentum = momentum
        self.uniform_mix = uniform_mix
        self.summary_writer = summary_writer
        self.class_weights = torch.ones(len(self.metric_names) + 1, dtype=torch.float64)  # index 0: background, unused
        self.logger = logging.getLogger(__name__)
        self.update_sampler()

    def attach(self, engine: Engine) -> None:
        """Update the weights whenever the evaluator completes a validation run."""
        from ignite.engine import Events

        self.logger = engine.logger
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        missing = [name for name in self.metric_names if name not in engine.state.metrics]
        if missing:
            raise KeyError(f"AdaptiveSamplingHandler: the evaluator has no metric(s) {missing}")
        self.update([float(engine.state.metrics[name]) for name in self.metric_names])
        weights = self.class_weights[1:].tolist()
        text = ", ".join(f"{n}={w:.3f}" for n, w in zip(self.metric_names, weights, strict=True))
        self.logger.info(f"Adaptive Sampling class weights: {text}")
        if self.summary_writer is not None:
            for name, weight in zip(self.metric_names, weights, strict=True):
                self.summary_writer.add_scalar(f"as/weight_{name}", weight, engine.state.epoch)

    def update(self, scores: Sequence[float]) -> None:
        """Move the class weights towards ``1 - score`` of classes 1..C-1 and push the sample weights to the sampler."""
        if len(scores) != len(self.metric_names):
            raise ValueError(f"{len(scores)} scores for {len(self.metric_names)} classes")
        for c, score in enumerate(scores, start=1):
            if c in self.scored_classes and not math.isnan(score):
                error = min(max(1.0 - score, 0.0), 1.0)
                self.class_weights[c] = (1 - self.momentum) * self.class_weights[c] + self.momentum * error
        self.update_sampler()

    def sample_weights(self) -> torch.Tensor:
        """Sampling probability of every training sample (sums to 1)."""
        foreground = self.class_weights[1:]
        floor = float(foreground.min()) if len(foreground) else 1.0
        raw = torch.tensor(
            [max((float(self.class_weights[c]) for c in s), default=floor) for s in self.sample_classes],
            dtype=torch.float64,
        ).clamp_min(1e-6)
        return (1 - self.uniform_mix) * raw / raw.sum() + self.uniform_mix / len(raw)

    def update_sampler(self) -> None:
        """Overwrite the sampler's weights in place."""
        self.sampler.weights.copy_(self.sample_weights().to(self.sampler.weights.dtype))
