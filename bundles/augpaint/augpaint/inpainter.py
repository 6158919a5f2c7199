"""AugPaint's pair generator: keep the labelled region of a real pair in latent space and sample the rest.

For each job (a labelled pair and a seed): optionally flip the pair (the paper's sec. 4.4: the structures move to
mirrored positions; only the flips the data set's orientation allows, :func:`common.data.laterality.seeded_flips`),
take its keep mask (the class boxes or the labelled pixels, :func:`common.regions.keep_mask`), encode the image, and
run the shared denoising loop with the known-region hook (:class:`common.sampling.KnownRegionMerge`): at every step
the known latent cells are re-noised to the step's level and merged with the sample (Algorithm 1 of the paper). The
DDIM steps take ``eta``: the paper's Algorithm 1 adds the noise term ``tau_t z`` at every step, read here as DDIM's
``sigma_t`` with ``eta = 1`` (the DDPM posterior variance on the respaced chain); ``eta = 0`` is deterministic DDIM.
The decoded image and the source mask (flipped alike) are the new pair. The conditional variant also feeds the
network the masked image latent and the keep mask (:func:`augpaint.conditioning.masked_image_condition`).

Large structures (lungs, heart and clavicles on a chest X-ray) have class boxes that cover most of the image: box
mode then regenerates only the corners and the pairs are near-copies of the real ones. The generator warns once when
a batch regenerates less than :data:`MIN_REGENERATED` of its latent grid; the evaluation reports the share of every
inpainting set (:func:`common.evaluation.quality.regenerated_share`).
"""

from __future__ import annotations

import logging

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from augpaint.conditioning import masked_image_condition
from common.data.laterality import Orientation, seeded_flips
from common.generation import JobBatch
from common.regions import MASK_MODES, keep_mask, to_latent_grid
from common.sampling import DenoisingLoop, KnownRegionMerge, UNetDenoiser

__all__ = ["MIN_REGENERATED", "LatentInpainter"]

logger = logging.getLogger(__name__)

MIN_REGENERATED = 0.3  # below this share of the latent grid regenerated, the pairs are mostly copies of the sources


class LatentInpainter:
    """Makes a new pair from each labelled pair of a :class:`common.generation.JobBatch` (see the module docstring).

    Args:
        autoencoder: frozen autoencoder with ``encode_stage_2_inputs`` / ``decode_stage_2_outputs`` (MONAI VQVAE).
        network: the diffusion UNet (unconditional, or concat-conditioned when ``conditional``).
        scheduler: the sampling scheduler (a MONAI ``DDIMScheduler`` on the training noise schedule).
        num_inference_steps: DDIM steps.
        eta: DDIM noise weight (1: the paper's Algorithm 1; 0: deterministic DDIM).
        scale_factor: latent scale of training: the LDM works on ``scale_factor * z``.
        mask_mode: "box" (bounding box of every labelled class) or "shape" (the labelled pixels).
        box_margin: pixels added around each box ("box") or dilation of the labelled pixels ("shape").
        flip: flip each pair left-right and/or up-down at random before inpainting (the paper's sec. 4.4), as far as
            ``orientation`` allows (a left-right flip swaps the labels of lateral pairs).
        orientation: the data set's (:func:`common.data.read_orientation`); ``None``: left-right flips only.
        conditional: feed the concat condition ``cat(scaled latent of image * keep, latent keep mask)``.
        progress: tqdm bar over the steps.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        network: nn.Module,
        scheduler: Scheduler,
        num_inference_steps: int = 50,
        eta: float = 1.0,
        scale_factor: float = 1.0,
        mask_mode: str = "box",
        box_margin: int = 0,
        flip: bool = False,
        conditional: bool = False,
        orientation: Orientation | None = None,
        progress: bool = False,
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        for knob, value in (("flip", flip), ("conditional", conditional)):
            if not isinstance(value, bool):
                raise ValueError(f"{knob} must be True or False, got {value!r}")
        if box_margin < 0:
            raise ValueError(f"box_margin must be >= 0 pixels, got {box_margin}")
        self.autoencoder = autoencoder.eval()
        self.network = network.eval()
        self.loop = DenoisingLoop(scheduler, num_inference_steps, eta=eta, progress=progress, description="inpainting")
        self.scale_factor = float(scale_factor)
        self.mask_mode = mask_mode
        self.box_margin = box_margin
        self.flip = flip
        self.orientation = orientation or Orientation()
        self.conditional = conditional
        self._warned = False  # the small-regenerated-share warning is given once per generator

    @torch.no_grad()
    def __call__(self, batch: JobBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """New images in [0, 1] that keep the labelled region of the batch's images, and their labels."""
        if batch.images is None or batch.labels is None:
            raise ValueError("AugPaint makes pairs from labelled pairs: the jobs need source images and labels")
        images, labels = batch.images, batch.labels
        if self.flip:
            images, labels = seeded_flips(images, labels, batch.seeds, self.orientation)
        keep = keep_mask(labels, self.mask_mode, self.box_margin)
        known = self.scale_factor * self.autoencoder.encode_stage_2_inputs(images)
        condition = (
            masked_image_condition(self.autoencoder, images, keep, self.scale_factor) if self.conditional else None
        )
        generators = [torch.Generator(device=images.device).manual_seed(int(s)) for s in batch.seeds]
        latent_keep = to_latent_grid(keep, known.shape[-2:])
        self._check_regenerated(float(1 - latent_keep.mean()))
        hook = KnownRegionMerge(self.loop.scheduler, known, latent_keep)
        denoiser = UNetDenoiser(self.network, condition, mode="concat")
        latents = self.loop(denoiser, generators, known.shape[1:], hooks=[hook], dtype=known.dtype)
        decoded = self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor)
        return decoded.clamp(0.0, 1.0), labels

    def _check_regenerated(self, share: float) -> None:
        """Warn once when the kept region leaves less than :data:`MIN_REGENERATED` of the latent grid to sample."""
        if share >= MIN_REGENERATED or self._warned:
            return
        self._warned = True
        hint = "; --mask_mode shape keeps only the labelled pixels" if self.mask_mode == "box" else ""
        logger.warning(
            f"AugPaint regenerates only {share:.0%} of the latent grid of these pairs ({self.mask_mode} mode, margin "
            f"{self.box_margin}): the labelled structures cover most of the image, so the synthetic pairs will be "
            f"near-copies of the real ones{hint}"
        )
