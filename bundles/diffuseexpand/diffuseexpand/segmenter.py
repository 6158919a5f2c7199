"""DiffuseExpand's stage II: a noise-aware segmenter that guides sampling (the paper's L_SII).

It sees noisy samples ``x_t`` at random ``t`` (a MONAI ``DiffusionModelUNet``, so ``t`` enters through its timestep
embedding) and has two heads in one output: ``num_classes`` per-pixel segmentation logits, trained with Dice +
cross-entropy on image samples only, and one more channel whose spatial mean is the mode logit (image vs mask),
trained with binary cross-entropy on both. Its log-likelihoods are the classifier guidance of stage III.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.losses import DiceCELoss
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import Scheduler
from torch import nn

__all__ = ["NoiseAwareSegmenter", "NoiseAwareSegmenterLoss", "NoisySamplesPrepareBatch", "split_heads"]


def split_heads(output: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(segmentation logits (B, K, H, W), mode logit (B,))`` of the segmenter's output; the mode logit is > 0 for
    "image"."""
    return output[:, :num_classes], output[:, num_classes].mean(dim=(-2, -1))


class NoiseAwareSegmenter(nn.Module):
    """``segmenter(x_t, timesteps) -> (B, num_classes + 1, H, W)``: segmentation logits, then the mode channel.

    Args:
        num_classes: classes of the masks, background included.
        in_channels: channels of a sample (:class:`diffuseexpand.encoding.PairEncoding`).
        channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups: of the MONAI
            ``DiffusionModelUNet`` it is built on.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 16,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=self.num_classes + 1,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timesteps=timesteps)

    def mask_log_likelihood(
        self, x: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """``sum over pixels log softmax(logits / temperature)[mask]`` (B,): log p(y2 | x_t) of the paper's Lemma 3.3
        (the temperature in place of a gradient scale)."""
        logits, _ = split_heads(self(x, timesteps), self.num_classes)
        log_p = torch.log_softmax(logits / temperature, dim=1)
        return log_p.gather(1, mask.long()).flatten(1).sum(dim=1)

    def mode_log_likelihood(self, x: torch.Tensor, timesteps: torch.Tensor, image: bool) -> torch.Tensor:
        """``log p(y1 | x_t)`` (B,) of the mode ``image`` (True) or mask (False) under the mode head."""
        _, logit = split_heads(self(x, timesteps), self.num_classes)
        return nn.functional.logsigmoid(logit if image else -logit)


class NoiseAwareSegmenterLoss(nn.Module):
    """Dice + cross-entropy of the segmentation head on image samples plus ``mode_weight`` times the binary
    cross-entropy of the mode head on all samples; ``target`` is ``cat(label, mode map)`` (B, 2, H, W) as
    :class:`NoisySamplesPrepareBatch` builds it."""

    def __init__(self, num_classes: int, mode_weight: float = 1.0) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.mode_weight = float(mode_weight)
        self.segmentation = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, mode_logit = split_heads(output, self.num_classes)
        label, mode = target[:, :1], target[:, 1, 0, 0]
        loss = self.mode_weight * nn.functional.binary_cross_entropy_with_logits(mode_logit, mode.float())
        images = mode > 0.5
        if images.any():
            loss = loss + self.segmentation(logits[images], label[images])
        return loss


class NoisySamplesPrepareBatch(PrepareBatch):
    """The segmenter's batch: the encoded samples noised to random timesteps (the network's input, with the
    timesteps as a keyword argument) and the target ``cat(label, mode map)``."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        samples = torch.as_tensor(batchdata["image"]).to(device, non_blocking=non_blocking)
        label = torch.as_tensor(batchdata["label"]).to(device, non_blocking=non_blocking).float()
        mode = torch.as_tensor(batchdata["mode"]).to(device).float().view(-1, 1, 1, 1).expand_as(label)
        timesteps = torch.randint(0, self.scheduler.num_train_timesteps, (samples.shape[0],), device=samples.device)
        noisy = self.scheduler.add_noise(samples, torch.randn_like(samples), timesteps)
        return noisy, torch.cat([label, mode], dim=1), (), {"timesteps": timesteps}
