"""MONAI's ``AdversarialTrainer`` for a VQ autoencoder (VQ-GAN style training).

``AdversarialTrainer`` assumes the generator returns an image and minimises ``reconstruction + adversarial`` loss. A
VQ autoencoder (MONAI ``VQVAE``) returns ``(reconstruction, quantization_loss)`` and its objective also contains the
quantisation (commitment) loss; the adversarial term should be small and may start after a warm-up (Esser et al.,
"Taming Transformers", 2021; the MONAI VQ-GAN tutorial uses weight 0.01). This subclass adds exactly that through the
trainer's own iteration events, so the training step itself stays MONAI's:

- ``GENERATOR_FORWARD_COMPLETED``: the network output is split; the reconstruction becomes the fakes / prediction
  (what the discriminator and the reconstruction loss see) and the quantisation loss is kept.
- ``RECONSTRUCTION_LOSS_COMPLETED``: the reconstruction loss becomes ``pixel + quantization_weight * quantization``
  (the VQ-VAE objective).
- ``GENERATOR_LOSS_COMPLETED``: the adversarial loss is multiplied by ``adversarial_weight``, or by 0 during the first
  ``adversarial_warmup_iterations`` iterations.

The generator therefore minimises ``pixel + quantization_weight * quantization + w(t) * adversarial``. With a
``reconstruction_activation`` (e.g. a softmax over the channels of a mask autoencoder's logits) the activated output is
what the reconstruction loss and the discriminator see, so real one-hot masks are compared with class probabilities. The
discriminator is trained from the first iteration (``AdversarialTrainer`` always updates it), so it already tells
reconstructions from images when its feedback is switched on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.engines import AdversarialTrainer
from monai.utils import AdversarialIterationEvents, AdversarialKeys, CommonKeys

from common.engines.reconstruction import reconstruction_batch

__all__ = ["VQAdversarialTrainer", "vq_adversarial_loss_terms", "PIXEL_LOSS", "QUANTIZATION_LOSS", "ADVERSARIAL_LOSS"]

PIXEL_LOSS = "pixel_loss"  # the reconstruction loss function's value alone
QUANTIZATION_LOSS = "quantization_loss"  # the VQ layer's loss, unweighted
ADVERSARIAL_LOSS = "adversarial_loss"  # the generator's adversarial loss, unweighted


class VQAdversarialTrainer(AdversarialTrainer):
    """``AdversarialTrainer`` for a VQ autoencoder; see the module docstring for what changes.

    Args:
        args, kwargs: the arguments of :class:`monai.engines.AdversarialTrainer` (``g_network`` is the autoencoder,
            ``recon_loss_function(reconstruction, image)``, ``g_loss_function(fake_logits)``,
            ``d_loss_function(real_logits, fake_logits)``); ``prepare_batch`` defaults to
            :func:`~common.engines.reconstruction.reconstruction_batch` (the image is the target).
        quantization_weight: weight of the quantisation loss in the generator objective.
        adversarial_weight: weight of the adversarial loss once the warm-up is over.
        adversarial_warmup_iterations: iterations (from the start of the run) trained without the adversarial term.
        reconstruction_activation: applied to the autoencoder's output before the losses (None: used as it is).
    """

    def __init__(
        self,
        *args: Any,
        quantization_weight: float = 1.0,
        adversarial_weight: float = 0.01,
        adversarial_warmup_iterations: int = 0,
        reconstruction_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        for name, value in (
            ("quantization_weight", quantization_weight),
            ("adversarial_weight", adversarial_weight),
            ("adversarial_warmup_iterations", adversarial_warmup_iterations),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        kwargs.setdefault("prepare_batch", reconstruction_batch)
        super().__init__(*args, **kwargs)
        self.quantization_weight = float(quantization_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.adversarial_warmup_iterations = int(adversarial_warmup_iterations)
        self.reconstruction_activation = reconstruction_activation
        self.add_event_handler(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED, self._split_network_output)
        self.add_event_handler(AdversarialIterationEvents.RECONSTRUCTION_LOSS_COMPLETED, self._add_quantization_loss)
        self.add_event_handler(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED, self._weight_adversarial_loss)

    def current_adversarial_weight(self) -> float:
        """The adversarial weight of the current iteration: 0 during the warm-up, ``adversarial_weight`` after."""
        if self.state.iteration <= self.adversarial_warmup_iterations:
            return 0.0
        return self.adversarial_weight

    def _split_network_output(self, engine: VQAdversarialTrainer) -> None:
        output = engine.state.output
        fakes = output[AdversarialKeys.FAKES]
        if isinstance(fakes, torch.Tensor):  # a plain autoencoder: no quantisation loss
            reconstruction, quantization_loss = fakes, fakes.new_zeros(())
        elif len(fakes) == 2:
            reconstruction, quantization_loss = fakes
        else:
            raise ValueError(
                f"the autoencoder must return a reconstruction or (reconstruction, quantization_loss), "
                f"got a sequence of {len(fakes)} outputs"
            )
        if self.reconstruction_activation is not None:
            reconstruction = self.reconstruction_activation(reconstruction)
        output[AdversarialKeys.FAKES] = output[CommonKeys.PRED] = reconstruction
        output[QUANTIZATION_LOSS] = quantization_loss

    def _add_quantization_loss(self, engine: VQAdversarialTrainer) -> None:
        output = engine.state.output
        output[PIXEL_LOSS] = output[AdversarialKeys.RECONSTRUCTION_LOSS].detach()
        output[AdversarialKeys.RECONSTRUCTION_LOSS] = (
            output[AdversarialKeys.RECONSTRUCTION_LOSS] + self.quantization_weight * output[QUANTIZATION_LOSS]
        )

    def _weight_adversarial_loss(self, engine: VQAdversarialTrainer) -> None:
        output = engine.state.output
        adversarial_loss = output[AdversarialKeys.GENERATOR_LOSS]
        output[ADVERSARIAL_LOSS] = adversarial_loss.detach()
        output[AdversarialKeys.GENERATOR_LOSS] = self.current_adversarial_weight() * adversarial_loss


def vq_adversarial_loss_terms(output: dict[str, Any]) -> dict[str, float]:
    """The loss terms of one :class:`VQAdversarialTrainer` iteration as plain numbers, for ``StatsHandler`` and
    ``TensorBoardStatsHandler`` (``output_transform``): pixel, quantisation and adversarial (unweighted) losses of
    the autoencoder and the discriminator's loss."""
    keys = {
        "pixel": PIXEL_LOSS,
        "quantization": QUANTIZATION_LOSS,
        "adversarial": ADVERSARIAL_LOSS,
        "discriminator": AdversarialKeys.DISCRIMINATOR_LOSS,
    }
    return {name: float(torch.as_tensor(output[key]).detach()) for name, key in keys.items()}
