"""GAUDA's online loop as an Ignite handler (Frisch et al., sec. 3.3): uncertainty-guided synthetic replacement.

At every validation the handler

1. computes the pooled class-wise epistemic uncertainty ``UE_c`` (eq. 8,
   :class:`common.uncertainty.PooledClasswiseUncertainty`) of the Bayesian segmenter on the validation loader:
   deep-ensemble members (:class:`common.networks.DeepEnsemble`) or MC-dropout passes of one network;
2. picks the ``top_k`` foreground classes of highest ``UE_c`` (classes never predicted, ``UE_c`` NaN, are skipped);
3. asks the frozen generator for ``num_synthetic`` pairs conditioned on class sets formed from those classes
   (``class_set_mode``, below), in batches of ``synthesis_batch_size``; this pool replaces the previous one;

and at every training iteration, each sample of the batch whose mask shows one of the chosen (synthesised) classes is
replaced, with probability ``replace_prob``, by a random pool pair conditioned on one of those classes (image and
label together, in ``engine.state.batch`` before the trainer's step runs). No pool exists before the first validation,
so the first epoch trains on real data only; the synthesis after the last epoch is skipped (nothing would use it).

The generator is any pair generator of the generation pipeline (:data:`common.generation.PairGenerator`): it gets a
:class:`common.generation.JobBatch` of seeds and class sets and returns ``(B, 1, H, W)`` images in [0, 1] and
class-index labels of the training size, one pair per class set (e.g. GAUDA's ``gauda.generator.JointLatentGenerator``).

``class_set_mode`` (the paper does not spell out the condition of each synthetic pair):

- ``"observed"`` (default): pair j targets the chosen class ``chosen[j % k]`` and is conditioned on the class set of
  a random training mask showing that class (class sets seen in the training batches so far), so the condition is one
  the generator was trained on; a class no training mask showed so far is asked alone.
- ``"single"``: pair j is conditioned on ``[chosen[j % k]]`` alone.
- ``"together"``: every pair is conditioned on all chosen classes at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import ignite.distributed as idist
import torch
from torch import nn

from common.data import foreground_class_sets
from common.generation import JobBatch, PairGenerator
from common.io import contact_sheet
from common.segmentation import class_metric_names
from common.uncertainty import PooledClasswiseUncertainty, ensemble_predict, mc_dropout_predict

if TYPE_CHECKING:
    from ignite.engine import Engine
    from torch.utils.data import DataLoader
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["GAUDAHandler", "CLASS_SET_MODES", "top_k_uncertain_classes"]

CLASS_SET_MODES = ("observed", "single", "together")
POOL_PICTURE_SIZE = 16  # pairs of the synthetic pool drawn to TensorBoard after each synthesis


def top_k_uncertain_classes(uncertainty: torch.Tensor, k: int) -> list[int]:
    """The ``k`` foreground classes (index >= 1) of highest ``UE_c``, most uncertain first; NaN classes are skipped,
    ties go to the lower class index."""
    scores = uncertainty.detach().cpu().double()
    candidates = [c for c in range(1, scores.numel()) if not torch.isnan(scores[c])]
    return sorted(candidates, key=lambda c: (-float(scores[c]), c))[:k]


def _check_generator_output(images: torch.Tensor, labels: torch.Tensor, num_pairs: int) -> None:
    """The generator must give ``num_pairs`` images ``(B, 1, H, W)`` and labels of the same shape."""
    if images.ndim != 4 or images.shape[:2] != (num_pairs, 1) or labels.shape != images.shape:
        raise ValueError(
            f"the generator must return (B, 1, H, W) images and labels for {num_pairs} class sets, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )


class GAUDAHandler:
    """Uncertainty-guided online synthesis and replacement of training samples (see the module docstring).

    Args:
        generator: a pair generator (``JobBatch`` of seeds and class sets -> images, labels).
        val_data_loader: the validation pairs ``UE_c`` is computed on (only ``image_key`` is read).
        network: a :class:`common.networks.DeepEnsemble` (its members give ``UE_c``) or any network with dropout > 0
            (then ``num_passes`` MC-dropout passes give it). A ``DistributedDataParallel`` wrapper is unwrapped.
        num_classes: classes including background.
        top_k: number of most uncertain classes synthesised for (paper: 5).
        replace_prob: probability p that an eligible training sample is replaced.
        num_synthetic: pairs synthesised at each validation (the pool size).
        synthesis_batch_size: pairs per generator call (memory vs. speed).
        class_set_mode: "observed", "single" or "together" (module docstring).
        num_passes: MC-dropout passes when ``network`` is not an ensemble.
        interval: refresh every ``interval`` training epochs (the segmentation bundle validates every epoch).
        summary_writer: TensorBoard writer for ``UE_c``, the chosen classes, replacement counts, synthesis time and a
            picture of each new synthetic pool (``gauda/synthetic_pool``).
        class_names: names for the TensorBoard tags (index -> name); default ``class_<i>``.
        seed: seeds the replacement draws and the generator (refresh r asks seeds ``seed + r * num_synthetic + j``).
        image_key, label_key: batch keys.
    """

    def __init__(
        self,
        generator: PairGenerator,
        val_data_loader: DataLoader,
        network: nn.Module,
        num_classes: int,
        top_k: int = 5,
        replace_prob: float = 0.5,
        num_synthetic: int = 16,
        synthesis_batch_size: int = 8,
        class_set_mode: str = "observed",
        num_passes: int = 10,
        interval: int = 1,
        summary_writer: SummaryWriter | None = None,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        if class_set_mode not in CLASS_SET_MODES:
            raise ValueError(f"class_set_mode must be one of {CLASS_SET_MODES}, got {class_set_mode!r}")
        if not 0.0 <= replace_prob <= 1.0:
            raise ValueError(f"replace_prob must be in [0, 1], got {replace_prob}")
        if top_k < 1 or num_synthetic < 1 or synthesis_batch_size < 1 or interval < 1:
            raise ValueError("top_k, num_synthetic, synthesis_batch_size and interval must be >= 1")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.generator = generator
        self.val_data_loader = val_data_loader
        self.network = getattr(network, "module", network)
        self.num_classes = num_classes
        self.top_k = top_k
        self.replace_prob = replace_prob
        self.num_synthetic = num_synthetic
        self.synthesis_batch_size = synthesis_batch_size
        self.class_set_mode = class_set_mode
        self.num_passes = num_passes
        self.interval = interval
        self.summary_writer = summary_writer
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self.ue_tags = class_metric_names("gauda/ue_", self.class_names)
        self.seed = seed
        self.image_key, self.label_key = image_key, label_key
        self.random = torch.Generator().manual_seed(seed)
        self.logger = logging.getLogger(__name__)
        # explicit state, refreshed at every validation
        self.uncertainty: torch.Tensor | None = None
        self.chosen_classes: list[int] = []
        self.pool_images: torch.Tensor | None = None
        self.pool_labels: torch.Tensor | None = None
        self.pool_conditions: list[list[int]] = []
        self.pool_by_class: dict[int, list[int]] = {}
        self.observed_class_sets: set[tuple[int, ...]] = set()
        self.num_refreshes = 0
        self.replaced_since_refresh = 0
        self.replaced_total = 0
        self.synthesis_seconds = 0.0  # wall time of the last refresh's synthesis
        self.synthesis_seconds_total = 0.0  # summed over every refresh (the generator's share of a training run)

    def attach(self, engine: Engine) -> None:
        """Replace samples at every iteration start; refresh the pool every ``interval`` epochs."""
        from ignite.engine import Events

        if len(self.val_data_loader) == 0:
            raise ValueError("GAUDAHandler needs validation pairs to compute UE_c (e.g. val_fraction > 0)")
        self.logger = engine.logger
        engine.add_event_handler(Events.ITERATION_STARTED, self.replace_samples)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.refresh)

    # ---- validation side -------------------------------------------------------------------------------------------
    def member_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(M, B, C, *spatial)`` softmax probabilities of the ensemble members or MC-dropout passes."""
        members = getattr(self.network, "members", None)
        if members is not None:
            return ensemble_predict(list(members), images)
        return mc_dropout_predict(self.network, images, self.num_passes)

    def compute_uncertainty(self) -> torch.Tensor:
        """Pooled ``UE_c`` of the validation set, ``(C,)`` float64, NaN for classes never predicted."""
        device = next(self.network.parameters()).device
        pooled = PooledClasswiseUncertainty()
        for batch in self.val_data_loader:
            images = torch.as_tensor(batch[self.image_key]).as_subclass(torch.Tensor)
            pooled.update(self.member_probabilities(images.to(device)))
        if pooled.sums is not None and pooled.counts is not None and idist.get_world_size() > 1:
            pooled.sums, pooled.counts = idist.all_reduce(pooled.sums), idist.all_reduce(pooled.counts)
        uncertainty = pooled.compute()
        if uncertainty.numel() != self.num_classes:
            raise ValueError(f"the network predicts {uncertainty.numel()} classes, expected {self.num_classes}")
        return uncertainty

    def class_sets_for(self, chosen: Sequence[int]) -> list[list[int]]:
        """The condition (class list) of each of the ``num_synthetic`` pairs, per ``class_set_mode``."""
        if self.class_set_mode == "together":
            return [sorted(chosen)] * self.num_synthetic
        sets = []
        for j in range(self.num_synthetic):
            target = chosen[j % len(chosen)]
            if self.class_set_mode == "observed":
                showing = sorted(s for s in self.observed_class_sets if target in s)
                if showing:
                    pick = int(torch.randint(len(showing), (1,), generator=self.random))
                    sets.append(list(showing[pick]))
                    continue
            sets.append([target])
        return sets

    def synthesise(self, class_sets: list[list[int]], classes: Sequence[int] | None = None) -> None:
        """Ask the generator for one pair per class set, in batches, and make them the pool for ``classes`` (the
        synthesised classes; default: every class of the sets): a training sample is eligible for replacement when
        it shows one of them, and then takes a pair whose condition has that class."""
        start = self.seed + self.num_refreshes * self.num_synthetic
        images, labels = [], []
        for first in range(0, len(class_sets), self.synthesis_batch_size):
            chunk = class_sets[first : first + self.synthesis_batch_size]
            seeds = list(range(start + first, start + first + len(chunk)))
            batch_images, batch_labels = self.generator(JobBatch(seeds=seeds, conditions=[list(c) for c in chunk]))
            _check_generator_output(batch_images, batch_labels, len(chunk))
            images.append(batch_images.detach().float().cpu())
            labels.append(batch_labels.detach().float().cpu())
        self.pool_images, self.pool_labels = torch.cat(images), torch.cat(labels)
        self.pool_conditions = [list(s) for s in class_sets]
        targets = {int(c) for s in class_sets for c in s} if classes is None else {int(c) for c in classes}
        self.pool_by_class = {}
        for index, condition in enumerate(self.pool_conditions):
            for c in condition:
                if int(c) in targets:
                    self.pool_by_class.setdefault(int(c), []).append(index)

    def refresh(self, engine: Engine) -> None:
        """``UE_c`` on the validation set, top-k classes, a new synthetic pool (skipped after the last epoch)."""
        self.uncertainty = self.compute_uncertainty()
        self.chosen_classes = top_k_uncertain_classes(self.uncertainty, self.top_k)
        step = engine.state.iteration
        ue_text = ", ".join(
            f"{self.class_names[c]}={float(u):.3g}" for c, u in enumerate(self.uncertainty) if c > 0 and not u.isnan()
        )
        chosen_text = ", ".join(f"{c} ({self.class_names[c]})" for c in self.chosen_classes)
        self.logger.info(
            f"GAUDA epoch {engine.state.epoch}: UE_c {ue_text}; chosen classes [{chosen_text}]; "
            f"{self.replaced_since_refresh} samples replaced since the last refresh ({self.replaced_total} in total)"
        )
        if self.summary_writer is not None:
            for c, value in enumerate(self.uncertainty.tolist()):
                if c > 0 and not math.isnan(value):
                    self.summary_writer.add_scalar(self.ue_tags[c], value, step)
            self.summary_writer.add_scalar("gauda/replaced", self.replaced_since_refresh, step)
            self.summary_writer.add_text("gauda/chosen_classes", chosen_text or "none", step)
        self.replaced_since_refresh = 0
        last_epoch = engine.state.max_epochs is not None and engine.state.epoch >= engine.state.max_epochs
        if last_epoch or not self.chosen_classes:
            return
        start = time.perf_counter()
        self.synthesise(self.class_sets_for(self.chosen_classes), self.chosen_classes)
        self.synthesis_seconds = time.perf_counter() - start
        self.synthesis_seconds_total += self.synthesis_seconds
        self.num_refreshes += 1
        self.logger.info(f"GAUDA: synthesised {self.num_synthetic} pairs in {self.synthesis_seconds:.1f} s")
        if self.summary_writer is not None:
            self.summary_writer.add_scalar("gauda/synthesis_seconds", self.synthesis_seconds, step)
            shown = list(zip(self.pool_images[:POOL_PICTURE_SIZE], self.pool_labels[:POOL_PICTURE_SIZE], strict=True))
            sheet = contact_sheet(shown, self.num_classes)
            self.summary_writer.add_image("gauda/synthetic_pool", sheet, step, dataformats="HWC")

    # ---- training side ---------------------------------------------------------------------------------------------
    def replace_samples(self, engine: Engine) -> None:
        """Replace eligible samples of ``engine.state.batch`` by pool pairs with probability ``replace_prob``."""
        batch = engine.state.batch
        if not isinstance(batch, dict) or self.image_key not in batch or self.label_key not in batch:
            raise ValueError(f"GAUDAHandler needs dict batches with '{self.image_key}' and '{self.label_key}'")
        labels = torch.as_tensor(batch[self.label_key])
        present = foreground_class_sets(labels)
        self.observed_class_sets.update(tuple(row) for row in present)
        if self.pool_images is None or self.pool_labels is None:
            return
        if self.pool_images.shape[1:] != batch[self.image_key].shape[1:]:
            raise ValueError(
                f"synthetic images {tuple(self.pool_images.shape[1:])} do not match the training batch "
                f"{tuple(batch[self.image_key].shape[1:])}"
            )
        images = batch[self.image_key].clone()
        new_labels = batch[self.label_key].clone()
        replaced = 0
        for i, classes in enumerate(present):
            eligible = [c for c in classes if c in self.pool_by_class]
            if not eligible or float(torch.rand((), generator=self.random)) >= self.replace_prob:
                continue
            target = eligible[int(torch.randint(len(eligible), (1,), generator=self.random))]
            candidates = self.pool_by_class[target]
            j = candidates[int(torch.randint(len(candidates), (1,), generator=self.random))]
            images[i] = self.pool_images[j].to(images.device, images.dtype)
            new_labels[i] = self.pool_labels[j].to(new_labels.device, new_labels.dtype)
            replaced += 1
        if replaced:
            batch[self.image_key], batch[self.label_key] = images, new_labels
        self.replaced_since_refresh += replaced
        self.replaced_total += replaced
