"""Ignite engine parts for the generative stages where MONAI's trainers need a small adaptation.

- :class:`VQAdversarialTrainer`: MONAI's ``AdversarialTrainer`` for a VQ autoencoder (its forward returns the
  reconstruction and the quantisation loss) with a weighted, warmed-up adversarial term.
- :func:`generator_adversarial_loss`, :func:`discriminator_adversarial_loss`: ``PatchAdversarialLoss`` in the
  call signatures ``AdversarialTrainer`` expects.
- :class:`ReconstructionLoss`: L1 plus an optional perceptual term that never downloads weights.
- :func:`reconstruction_batch`, :class:`ReconstructionInferer`: run an autoencoder as an image-to-image model in
  MONAI engines (the image is the target; the prediction is the reconstruction).
- :func:`diffusion_prepare_batch`: MONAI's diffusion ``prepare_batch`` matching the scheduler's prediction type.
- :class:`ConditionDropoutPrepareBatch`: the same with the condition dropped at random (classifier-free guidance),
  optionally with class labels for the UNet's class embedding, which :class:`ClassLabelDiffusionInferer` passes on.
- :class:`ProbabilityCrossEntropyLoss`: cross-entropy of class probabilities against one-hot masks (mask autoencoder).
"""

from __future__ import annotations

from common.engines.adversarial_losses import discriminator_adversarial_loss, generator_adversarial_loss
from common.engines.condition_dropout import ClassLabelDiffusionInferer, ConditionDropoutPrepareBatch
from common.engines.diffusion_batch import diffusion_prepare_batch
from common.engines.reconstruction import (
    ProbabilityCrossEntropyLoss,
    ReconstructionInferer,
    ReconstructionLoss,
    reconstruction_batch,
)
from common.engines.vq_adversarial_trainer import VQAdversarialTrainer, vq_adversarial_loss_terms

__all__ = [
    "ClassLabelDiffusionInferer",
    "ConditionDropoutPrepareBatch",
    "ProbabilityCrossEntropyLoss",
    "ReconstructionInferer",
    "ReconstructionLoss",
    "VQAdversarialTrainer",
    "diffusion_prepare_batch",
    "discriminator_adversarial_loss",
    "generator_adversarial_loss",
    "reconstruction_batch",
    "vq_adversarial_loss_terms",
]
