"""``PatchAdversarialLoss`` in the call signatures of MONAI's ``AdversarialTrainer``.

``AdversarialTrainer`` calls ``g_loss_function(fake_logits)`` and ``d_loss_function(real_logits, fake_logits)`` with
whatever the discriminator returns. MONAI's ``PatchDiscriminator`` returns the output of every layer (for feature
matching losses); the patch logits are its last element, and only those enter the adversarial loss (the MONAI
generative tutorials take ``discriminator(x)[-1]`` the same way). Bind the criterion with ``functools.partial``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import PatchAdversarialLoss

__all__ = ["patch_logits", "generator_adversarial_loss", "discriminator_adversarial_loss"]


def patch_logits(discriminator_output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The patch logits of a discriminator output: the tensor itself, or the last layer's output of a list."""
    if isinstance(discriminator_output, torch.Tensor):
        return discriminator_output
    return discriminator_output[-1]


def generator_adversarial_loss(
    fake_logits: torch.Tensor | Sequence[torch.Tensor], adversarial_loss: PatchAdversarialLoss
) -> torch.Tensor:
    """The generator's adversarial loss: its reconstructions should be judged real."""
    return adversarial_loss(patch_logits(fake_logits), target_is_real=True, for_discriminator=False)


def discriminator_adversarial_loss(
    real_logits: torch.Tensor | Sequence[torch.Tensor],
    fake_logits: torch.Tensor | Sequence[torch.Tensor],
    adversarial_loss: PatchAdversarialLoss,
) -> torch.Tensor:
    """The discriminator's loss: the mean of its losses on real images (target real) and reconstructions (target
    fake)."""
    fake = adversarial_loss(patch_logits(fake_logits), target_is_real=False, for_discriminator=True)
    real = adversarial_loss(patch_logits(real_logits), target_is_real=True, for_discriminator=True)
    return 0.5 * (fake + real)
