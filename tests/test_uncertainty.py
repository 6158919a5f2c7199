"""Uncertainty statistics against hand-computed cases (GAUDA eq. 8, pixel entropy, UnIACorN's normalised entropy)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from common.uncertainty import (
    PooledClasswiseUncertainty,
    classwise_uncertainty,
    ensemble_predict,
    mc_dropout_predict,
    mean_probabilities,
    normalised_mean_entropy,
    pixel_entropy,
    pixel_variance,
    pooled_classwise_uncertainty,
)


def two_members_two_classes() -> torch.Tensor:
    """(M=2, B=1, C=2, H=1, W=2): pixel 0 members (0.8, 0.2) and (0.6, 0.4); pixel 1 (0.1, 0.9) and (0.5, 0.5)."""
    member_a = torch.tensor([[0.8, 0.1], [0.2, 0.9]])  # (C, W) of the single row
    member_b = torch.tensor([[0.6, 0.5], [0.4, 0.5]])
    return torch.stack([member_a, member_b])[:, None, :, None, :].double()


def test_mean_and_population_variance():
    probs = two_members_two_classes()
    mean = mean_probabilities(probs)
    # pixel 0: (0.7, 0.3); pixel 1: (0.3, 0.7)
    assert mean.shape == (1, 2, 1, 2)
    torch.testing.assert_close(mean[0, :, 0], torch.tensor([[0.7, 0.3], [0.3, 0.7]], dtype=torch.float64))
    # population variance of two values p, q is ((p - q) / 2)^2: pixel 0 (0.2/2)^2 = 0.01, pixel 1 (0.4/2)^2 = 0.04
    variance = pixel_variance(probs)
    torch.testing.assert_close(variance[0, :, 0], torch.tensor([[0.01, 0.04], [0.01, 0.04]], dtype=torch.float64))


def test_pixel_entropy_natural_log_and_normalised():
    probs = two_members_two_classes()
    # both pixels have mean (0.7, 0.3) up to order: H = -(0.7 ln 0.7 + 0.3 ln 0.3) = 0.610864
    entropy = pixel_entropy(probs)
    assert entropy.shape == (1, 1, 2)
    torch.testing.assert_close(entropy, torch.full((1, 1, 2), 0.6108643020548935, dtype=torch.float64))
    # divided by ln 2 = 0.693147: 0.881291
    normalised = pixel_entropy(probs, normalise=True)
    torch.testing.assert_close(normalised, torch.full((1, 1, 2), 0.8812908992306927, dtype=torch.float64))
    # the image's normalised mean entropy is the mean of its pixels
    torch.testing.assert_close(normalised_mean_entropy(probs), torch.tensor([0.8812908992306927], dtype=torch.float64))


def test_entropy_of_certain_and_uniform_pixels():
    # one member; pixel 0 certain (1, 0, 0) -> 0 (not NaN); pixel 1 uniform over 3 classes -> ln 3, normalised 1
    probs = torch.tensor([[1.0, 1 / 3], [0.0, 1 / 3], [0.0, 1 / 3]])[None, None, :, None, :]
    torch.testing.assert_close(pixel_entropy(probs)[0, 0], torch.tensor([0.0, math.log(3)]))
    torch.testing.assert_close(pixel_entropy(probs, normalise=True)[0, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(normalised_mean_entropy(probs), torch.tensor([0.5]))


def test_classwise_uncertainty_is_mean_variance_over_pixels_predicted_as_c():
    probs = two_members_two_classes()
    # pixel 0 is predicted class 0 (mean 0.7) with Var[p_0] = 0.01; pixel 1 is predicted class 1 with Var[p_1] = 0.04
    ue = classwise_uncertainty(probs)
    assert ue.shape == (1, 2)
    torch.testing.assert_close(ue, torch.tensor([[0.01, 0.04]], dtype=torch.float64))


def test_classwise_uncertainty_uses_only_pixels_predicted_as_c():
    # C=3, 1 row of 3 pixels, two members:
    # pixel 0: (0.9, 0.1, 0.0) and (0.5, 0.3, 0.2) -> mean (0.7, 0.2, 0.1), predicted 0; Var p_0 = 0.04
    # pixel 1: (0.2, 0.8, 0.0) and (0.0, 0.6, 0.4) -> mean (0.1, 0.7, 0.2), predicted 1; Var p_1 = 0.01
    # pixel 2: (0.3, 0.7, 0.0) and (0.3, 0.3, 0.4) -> mean (0.3, 0.5, 0.2), predicted 1; Var p_1 = 0.04
    # UE_0 = 0.04, UE_1 = (0.01 + 0.04) / 2 = 0.025; class 2 is never predicted -> NaN
    # (class 2 varies a lot, Var p_2 = 0.01 / 0.04 / 0.04, but that must not count)
    member_a = torch.tensor([[0.9, 0.2, 0.3], [0.1, 0.8, 0.7], [0.0, 0.0, 0.0]])
    member_b = torch.tensor([[0.5, 0.0, 0.3], [0.3, 0.6, 0.3], [0.2, 0.4, 0.4]])
    probs = torch.stack([member_a, member_b])[:, None, :, None, :].double()
    ue = classwise_uncertainty(probs)
    torch.testing.assert_close(ue[0, :2], torch.tensor([0.04, 0.025], dtype=torch.float64))
    assert torch.isnan(ue[0, 2])


def test_pooled_uncertainty_pools_pixels_not_images():
    # image A: 1 pixel predicted class 1 with Var p_1 = 0.04 (members (0.1, 0.9) and (0.5, 0.5))
    # image B: 3 pixels predicted class 1, members agree -> Var 0
    # per image UE_1 = 0.04 and 0; pooled UE_1 = (0.04 + 0 + 0 + 0) / 4 = 0.01 (not the image mean 0.02)
    image_a = torch.tensor([[[0.1], [0.9]], [[0.5], [0.5]]])[:, None, :, None, :]  # (M=2, B=1, C=2, H=1, W=1)
    image_b = torch.tensor([0.2, 0.8])[None, None, :, None, None].expand(2, 1, 2, 1, 3)  # (M=2, B=1, C=2, 1, 3)
    ue_a, ue_b = classwise_uncertainty(image_a.double()), classwise_uncertainty(image_b.double())
    torch.testing.assert_close(ue_a[0, 1], torch.tensor(0.04, dtype=torch.float64))
    torch.testing.assert_close(ue_b[0, 1], torch.tensor(0.0, dtype=torch.float64))
    pooled = pooled_classwise_uncertainty([image_a, image_b])
    torch.testing.assert_close(pooled[1], torch.tensor(0.01, dtype=torch.float64))
    assert torch.isnan(pooled[0])  # no pixel of either image is predicted background


def test_pooled_uncertainty_errors():
    pooled = PooledClasswiseUncertainty()
    with pytest.raises(ValueError, match="update"):
        pooled.compute()
    pooled.update(torch.full((1, 1, 2, 2, 2), 0.5))
    with pytest.raises(ValueError, match="number of classes"):
        pooled.update(torch.full((1, 1, 3, 2, 2), 1 / 3))
    with pytest.raises(ValueError, match="M, B, C"):
        classwise_uncertainty(torch.rand(2, 3, 4))


class ConstantLogits(nn.Module):
    """Returns the same per-class logits at every pixel."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return self.logits[None, :, None, None].expand(b, -1, h, w)


def test_ensemble_predict_stacks_member_softmax():
    networks = [ConstantLogits([0.0, 0.0]), ConstantLogits([math.log(3.0), 0.0])]  # softmax (0.5, 0.5), (0.75, 0.25)
    networks[0].eval()
    networks[1].train()
    probs = ensemble_predict(networks, torch.zeros(2, 1, 3, 4))
    assert probs.shape == (2, 2, 2, 3, 4)
    torch.testing.assert_close(probs[:, 0, :, 0, 0], torch.tensor([[0.5, 0.5], [0.75, 0.25]]))
    # Var p_0 = ((0.75 - 0.5) / 2)^2 = 0.015625 at every pixel, all predicted class 0
    torch.testing.assert_close(classwise_uncertainty(probs)[:, 0], torch.full((2,), 0.015625))
    assert networks[1].training and not networks[0].training  # modes restored


def dropout_network() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.5), nn.Conv2d(8, 3, 1))


def test_mc_dropout_passes_differ_and_batchnorm_stays_in_eval():
    torch.manual_seed(0)
    network = dropout_network().train()
    running_mean = network[1].running_mean.clone()
    images = torch.rand(2, 1, 4, 4)
    probs = mc_dropout_predict(network, images, num_passes=4)
    assert probs.shape == (4, 2, 3, 4, 4)
    torch.testing.assert_close(probs.sum(dim=2), torch.ones(4, 2, 4, 4))
    assert not torch.allclose(probs[0], probs[1])  # dropout sampled a new mask per pass
    torch.testing.assert_close(network[1].running_mean, running_mean)  # batchnorm did not update its statistics
    assert all(module.training for module in network.modules())  # modes restored
    # with p = 0 every pass would be the same: a clear error instead of a silent zero uncertainty
    network.eval()
    network[3].p = 0.0
    with pytest.raises(ValueError, match="no dropout layer"):
        mc_dropout_predict(network, images, num_passes=2)
    assert not network.training
