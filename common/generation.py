"""The generation run: labelled pairs -> N synthetic pairs each -> confidence filter -> a synthetic data set on disk.

:class:`GenerationRun` is method-agnostic. It plans one job per (labelled pair, sample k) with the name
``"<source id>_s<k>"`` and the seed ``seed + pair_index * num_samples + k`` (recorded in the datalist), hands batches
of jobs to a ``synthesize(images, labels, seeds) -> (images, labels)`` callable, writes every pair with
:class:`common.io.SyntheticDatasetWriter` (skipping pairs an interrupted run already wrote), then runs AugPaint's
filter: a segmenter scores each written pair (:func:`common.filtering.confidence_scores`, on the pair as written to
disk), the top ``keep_fraction`` is kept (:func:`common.filtering.keep_top_fraction`) and the rest is removed and
counted as dropped. Without a segmenter every pair is kept with score null. Last come the contact sheet and the
datalist.

:class:`LatentInpainter` is AugPaint's ``synthesize``: encode the image, keep the class boxes (or label shapes) of the
label, sample the rest of the latent with :class:`common.sampling.LatentInpaintingSampler`, decode; the new pair is
(generated image, source label), both flipped alike inside the boxes when ``flip_boxes`` is on.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.utils import convert_to_tensor, optional_import
from torch import nn

from common.data import pair_transforms
from common.filtering import confidence_scores, keep_top_fraction
from common.io import SyntheticDatasetWriter
from common.latents import masked_image_condition
from common.regions import MASK_MODES, class_boxes, flip_boxes, keep_mask, to_latent_grid
from common.sampling import LatentInpaintingSampler

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["SampleJob", "plan_jobs", "LatentInpainter", "GenerationRun"]

logger = logging.getLogger(__name__)

Synthesize = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SampleJob:
    """One synthetic pair to make: sample ``sample`` of the labelled pair ``pairs[pair_index]``."""

    name: str
    seed: int
    pair_index: int
    sample: int


def source_id(path: str) -> str:
    """File name without its image extension(s), made safe for a pair name (``case 1.nii.gz`` -> ``case_1``)."""
    name = os.path.basename(path)
    for extension in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        if name.lower().endswith(extension):
            name = name[: -len(extension)]
            break
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-") or "pair"


def plan_jobs(pairs: Sequence[Mapping[str, Any]], num_samples: int, seed: int) -> list[SampleJob]:
    """Every (pair, sample) job in a stable order; seed = ``seed + pair_index * num_samples + sample``."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    ids = [source_id(pair["image"]) for pair in pairs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"labelled images share the file name(s) {duplicates}: synthetic pair names would collide")
    return [
        SampleJob(f"{ids[index]}_s{sample}", seed + index * num_samples + sample, index, sample)
        for index in range(len(pairs))
        for sample in range(num_samples)
    ]


class LatentInpainter:
    """AugPaint's pair maker: keep the labelled region of a real pair in latent space and sample the rest.

    Args:
        autoencoder: frozen autoencoder with ``encode_stage_2_inputs`` / ``decode_stage_2_outputs`` (MONAI VQVAE).
        network: the diffusion UNet (unconditional, or concat-conditioned when ``conditional``).
        sampler: the DDIM latent inpainting sampler.
        scale_factor: latent scale of training (``latent_scale.json``): the LDM works on ``scale_factor * z``.
        mask_mode: "box" (bounding box of every labelled class) or "shape" (the labelled pixels).
        box_margin: pixels added around each box ("box") or dilation of the labelled pixels ("shape").
        flip_boxes: flip the content of each class box left-right / up-down at random (image and label alike).
        conditional: feed the concat condition ``cat(scaled latent of image * keep, latent keep mask)`` to the
            network, built as in training (:func:`common.latents.masked_image_condition`).
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        network: nn.Module,
        sampler: LatentInpaintingSampler,
        scale_factor: float,
        mask_mode: str = "box",
        box_margin: int = 0,
        flip_boxes: bool = False,
        conditional: bool = False,
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        for knob, value in (("flip_boxes", flip_boxes), ("conditional", conditional)):
            if not isinstance(value, bool):
                raise ValueError(f"{knob} must be True or False, got {value!r}")
        if box_margin < 0:
            raise ValueError(f"box_margin must be >= 0 pixels, got {box_margin}")
        self.autoencoder = autoencoder.eval()
        self.network = network.eval()
        self.sampler = sampler
        self.scale_factor = float(scale_factor)
        self.mask_mode = mask_mode
        self.box_margin = box_margin
        self.flip_boxes = flip_boxes
        self.conditional = conditional

    def keep_region(
        self, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (possibly box-flipped) images and labels and their pixel keep mask (B, 1, H, W)."""
        if self.flip_boxes:
            boxes = class_boxes(labels, self.box_margin)
            flipped = [
                flip_boxes(images[i : i + 1], labels[i : i + 1], boxes[i : i + 1], torch.Generator().manual_seed(s))
                for i, s in enumerate(seeds)
            ]
            images_flipped = torch.cat([image for image, _ in flipped])
            labels_flipped = torch.cat([label for _, label in flipped])
            # flipping moves content only inside its box, so the box union of the source label is still the region
            keep = keep_mask(labels if self.mask_mode == "box" else labels_flipped, self.mask_mode, self.box_margin)
            return images_flipped, labels_flipped, keep
        return images, labels, keep_mask(labels, self.mask_mode, self.box_margin)

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New images in [0, 1] that keep the labelled region of ``images``, and their labels; one per seed."""
        images, labels, keep = self.keep_region(images, labels, seeds)
        known = self.scale_factor * self.autoencoder.encode_stage_2_inputs(images)
        latent_keep = to_latent_grid(keep, known.shape[-2:])
        condition = (
            masked_image_condition(self.autoencoder, images, keep, self.scale_factor) if self.conditional else None
        )
        generators = [torch.Generator(device=images.device).manual_seed(int(s)) for s in seeds]
        latents = self.sampler(self.network, known, latent_keep, generators, condition=condition)
        decoded = self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor)
        return decoded.clamp(0.0, 1.0), labels


class GenerationRun:
    """Make ``num_samples`` synthetic pairs from every labelled pair, filter them and write the data set.

    Args:
        pairs: labelled pairs ``{"image": path, "label": path}`` (the "train" split; never test or unlabelled).
        synthesize: ``synthesize(images, labels, seeds) -> (images, labels)`` on batches (B, 1, H, W) on ``device``.
        output_dir: where the data set goes (images/, masks/, contact_sheet.png, datalist.json).
        method: method name recorded in the datalist.
        config: sampling knobs recorded in the datalist; resuming needs the same ones.
        num_samples: synthetic pairs per labelled pair.
        seed: base seed; job seeds are ``seed + pair_index * num_samples + sample``.
        batch_size: jobs synthesised together.
        image_size: size the pairs are loaded at (and the segmenter scores at).
        device: where synthesis and scoring run.
        segmenter: network giving class logits (B, C, H, W); ``None`` skips the filter (every pair kept, score null).
        keep_fraction: fraction of the pairs the filter keeps (the highest confidence).
        num_classes: number of classes incl. background, for the contact sheet's colours (default: up to 256).
        class_map: raw mask value -> class index of the source masks (see :func:`common.data.pair_transforms`).
        progress: tqdm bars over the batches.
    """

    def __init__(
        self,
        pairs: Sequence[Mapping[str, Any]],
        synthesize: Synthesize,
        output_dir: str,
        method: str,
        config: Mapping[str, Any] | None = None,
        num_samples: int = 5,
        seed: int = 0,
        batch_size: int = 8,
        image_size: int | Sequence[int] = 64,
        device: str | torch.device = "cpu",
        segmenter: nn.Module | None = None,
        keep_fraction: float = 0.5,
        num_classes: int | None = None,
        class_map: Mapping | None = None,
        progress: bool = True,
    ) -> None:
        if not pairs:
            raise ValueError("no labelled pairs to generate from: the labelled training split is empty")
        missing = [p for p in pairs if "label" not in p]
        if missing:
            raise ValueError(f"generation needs labelled pairs; these have no label: {[p['image'] for p in missing]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        self.pairs = list(pairs)
        self.synthesize = synthesize
        self.output_dir = output_dir
        self.method = method
        self.config = dict(config or {})
        self.jobs = plan_jobs(self.pairs, num_samples, seed)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.segmenter = None if segmenter is None else segmenter.eval()
        self.keep_fraction = keep_fraction
        self.num_classes = num_classes
        self.load_source = pair_transforms(image_size, class_map=class_map)
        self.load_synthetic = pair_transforms(image_size)
        self.progress = progress and has_tqdm

    def run(self) -> str:
        """Generate, filter, write the contact sheet and the datalist; returns the datalist path."""
        writer = SyntheticDatasetWriter(self.output_dir, self.method, self.config)
        self.generate(writer)
        self.filter(writer)
        if len(writer):
            writer.write_contact_sheet(self.num_classes or 256)
        return writer.finalize()

    def generate(self, writer: SyntheticDatasetWriter) -> None:
        """Write every planned pair that is not on disk yet, batch by batch."""
        # the filter runs only once every pair is written: a run that dropped pairs has finished generating
        pending = [] if writer.dropped else [job for job in self.jobs if not writer.done(job.name)]
        done = len(self.jobs) - len(pending)
        logger.info(
            f"{self.method}: {len(self.jobs)} pairs from {len(self.pairs)} labelled pairs, {done} already written, "
            f"{len(pending)} to generate in {self.output_dir}"
        )
        batches = [pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)]
        for batch in tqdm(batches, desc="generating", unit="batch") if self.progress else batches:
            sources = [self._load(self.load_source, self.pairs[job.pair_index]) for job in batch]
            images = torch.stack([source["image"] for source in sources]).to(self.device)
            labels = torch.stack([source["label"] for source in sources]).to(self.device)
            new_images, new_labels = self.synthesize(images, labels.long(), [job.seed for job in batch])
            new_images, new_labels = new_images.cpu(), new_labels.cpu()
            for index, job in enumerate(batch):
                source = self.pairs[job.pair_index]
                writer.write_pair(
                    new_images[index],
                    new_labels[index],
                    seed=job.seed,
                    source_image=os.path.abspath(source["image"]),
                    source_label=os.path.abspath(source["label"]),
                    name=job.name,
                )

    def filter(self, writer: SyntheticDatasetWriter) -> None:
        """Score the written pairs with the segmenter and remove all but the top ``keep_fraction`` of the run.

        The fraction is of all planned pairs; a run interrupted while removing resumes with the same kept set, since
        the pairs removed first were outside it.
        """
        if self.segmenter is None:
            logger.info(f"{self.method}: no segmenter checkpoint given, filter skipped: all {len(writer)} pairs kept")
            return
        order = {job.name: index for index, job in enumerate(self.jobs)}
        names = sorted(writer.names, key=lambda name: order.get(name, len(order)))
        scores = self.score(writer, names)
        num_kept = len(keep_top_fraction(torch.zeros(len(self.jobs)), self.keep_fraction)[0])
        kept, dropped = keep_top_fraction(scores, min(1.0, num_kept / len(names))) if names else ([], [])
        for index in dropped:
            writer.remove(names[index])
        logger.info(
            f"{self.method}: confidence filter kept {len(kept)} pairs (top {self.keep_fraction:.0%}), "
            f"dropped {writer.dropped} in total"
        )

    @torch.no_grad()
    def score(self, writer: SyntheticDatasetWriter, names: Sequence[str]) -> torch.Tensor:
        """Confidence score of each named pair as written (recorded with ``set_score``); NaN when unlabelled."""
        paths = {pair["name"]: pair for pair in writer.pairs()}
        scores = []
        batches = [names[i : i + self.batch_size] for i in range(0, len(names), self.batch_size)]
        for batch in tqdm(batches, desc="scoring", unit="batch") if self.progress else batches:
            items = [self._load(self.load_synthetic, paths[name]) for name in batch]
            images = torch.stack([item["image"] for item in items]).to(self.device)
            labels = torch.stack([item["label"] for item in items]).to(self.device)
            probabilities = torch.softmax(self.segmenter(images), dim=1)
            batch_scores = confidence_scores(probabilities, labels.long()).cpu()
            for name, value in zip(batch, batch_scores.tolist(), strict=True):
                writer.set_score(name, value)
            scores.append(batch_scores)
        return torch.cat(scores) if scores else torch.zeros(0)

    @staticmethod
    def _load(transform: Callable, pair: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        item = transform({"image": pair["image"], "label": pair["label"]})
        return {key: convert_to_tensor(item[key], track_meta=False) for key in ("image", "label")}
