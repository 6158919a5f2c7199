"""DiffuseExpand's stage III: a mask from noise, then the image given the mask, both on the shared loop.

1. Mask mode (y1 = 0, null mask condition), guided towards "mask" by the noise-aware segmenter's mode head with
   scale ``mode_scale``; the sample is decoded to a class-index mask (:class:`diffuseexpand.encoding.PairEncoding`).
2. Image mode (y1 = 1) conditioned on that mask (y2, concatenated): classifier-free guidance of weight ``guidance``
   (one network, the condition dropped in training) plus classifier guidance from the segmenter's log-likelihood of
   the mask, ``scale * grad log softmax(logits / temperature)[mask]`` (the paper's Lemma 3.3 puts the temperature
   ``tau`` in place of the scale ``s``: ``scale = 1, temperature = tau``; the classic form is ``temperature = 1``,
   ``scale = s``).

Jobs that bring a label map (:func:`common.generation.jobs_from_label_maps`) skip step 1: the image is made for that
mask. Each pair's noise comes from its own seed, for both steps. The schedulers are any of the project's (the
bundle's image step: SDE-DPM-Solver++, :mod:`common.sampling.dpm_solver`); the mask step may have its own
(``mask_scheduler``; the bundle's default is the stochastic DDPM over every training step: on the quick models the
deterministic solvers leave masks with noisy foreground, see the bundle's docs). Classifier guidance needs an
epsilon-predicting network.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from common.generation import JobBatch
from common.sampling import DenoisingLoop, UNetDenoiser
from common.sampling.denoisers import ClassifierFreeDenoiser, ClassifierGuidedDenoiser
from diffuseexpand.encoding import IMAGE_MODE, MASK_MODE, NULL_CONDITION, PairEncoding
from diffuseexpand.segmenter import NoiseAwareSegmenter

__all__ = ["DiffuseExpandGenerator"]


class DiffuseExpandGenerator:
    """New (image, mask) pairs from noise (see the module docstring).

    Args:
        network: the stage I DDPM (``DiffusionModelUNet`` with ``num_class_embeds=2`` and the mask condition
            concatenated to its input).
        segmenter: the stage II :class:`NoiseAwareSegmenter`; None samples without classifier guidance (``scale``
            and ``mode_scale`` must then be 0), e.g. the pictures of stage I's training.
        scheduler: the sampling scheduler on the training noise schedule (epsilon prediction).
        mask_scheduler, mask_inference_steps: the mask step's scheduler and steps (default: ``scheduler`` and
            ``num_inference_steps``).
        num_classes: classes of the masks, background included.
        image_size: (H, W) of the samples.
        num_inference_steps: steps of each of the two chains.
        guidance: classifier-free guidance weight w of the image step (0 = the conditional model alone).
        scale: classifier guidance scale s of the image step (0 = none).
        temperature: tau dividing the segmenter's logits in the image step's guidance.
        mode_scale: scale of the mode head's guidance of the mask step (0 = none).
        progress: tqdm bars over the steps.
    """

    def __init__(
        self,
        network: nn.Module,
        segmenter: NoiseAwareSegmenter | None,
        scheduler: Scheduler,
        num_classes: int,
        image_size: int | tuple[int, int],
        num_inference_steps: int = 20,
        guidance: float = 1.0,
        scale: float = 1.0,
        temperature: float = 1.0,
        mode_scale: float = 1.0,
        mask_scheduler: Scheduler | None = None,
        mask_inference_steps: int | None = None,
        progress: bool = False,
    ) -> None:
        mask_scheduler = mask_scheduler or scheduler
        if any(getattr(s, "prediction_type", "epsilon") != "epsilon" for s in (scheduler, mask_scheduler)):
            raise ValueError("classifier guidance needs an epsilon-predicting network (prediction_type 'epsilon')")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if segmenter is None and (scale or mode_scale):
            raise ValueError("classifier guidance (scale, mode_scale > 0) needs the noise-aware segmenter")
        self.network = network.eval()
        self.segmenter = segmenter.eval() if segmenter is not None else None
        self.scheduler = scheduler
        self.encoding = PairEncoding(num_classes)
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.mask_scheduler = mask_scheduler
        mask_steps = mask_inference_steps or num_inference_steps
        self.mask_loop = DenoisingLoop(mask_scheduler, mask_steps, progress=progress, description="masks")
        self.image_loop = DenoisingLoop(scheduler, num_inference_steps, progress=progress, description="images")
        self.guidance, self.scale, self.temperature, self.mode_scale = guidance, scale, temperature, mode_scale

    def _modes(self, mode: int, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), mode, dtype=torch.long, device=device)

    def masks(self, generators: list[torch.Generator]) -> torch.Tensor:
        """Step 1: class-index masks (B, 1, H, W) from noise."""
        device = generators[0].device
        shape = (self.encoding.channels, *self.size)
        null = torch.full((len(generators), *shape), NULL_CONDITION, device=device)
        unguided = UNetDenoiser(self.network, null, "concat", class_labels=self._modes(MASK_MODE, len(null), device))
        denoiser = ClassifierGuidedDenoiser(
            unguided,
            lambda x, t: self.segmenter.mode_log_likelihood(x, t, image=False),
            self.mode_scale,
            self.mask_scheduler.alphas_cumprod,
        )
        return self.encoding.decode_mask(self.mask_loop(denoiser, generators, shape))

    def images(self, labels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Step 2: images (B, 1, H, W) in [0, 1] for the masks ``labels``."""
        condition = self.encoding.encode_mask(labels)
        modes = self._modes(IMAGE_MODE, len(labels), labels.device)
        unguided = ClassifierFreeDenoiser(
            self.network, condition, self.guidance, null_value=NULL_CONDITION, mode="concat", class_labels=modes
        )
        denoiser = ClassifierGuidedDenoiser(
            unguided,
            lambda x, t: self.segmenter.mask_log_likelihood(x, t, labels, self.temperature),
            self.scale,
            self.scheduler.alphas_cumprod,
        )
        return self.encoding.decode_image(self.image_loop(denoiser, generators, condition.shape[1:]))

    @torch.no_grad()
    def __call__(self, batch: JobBatch) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.network.parameters()).device
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in batch.seeds]
        labels = self.masks(generators) if batch.labels is None else batch.labels.long()
        return self.images(labels, generators), labels
