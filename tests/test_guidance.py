"""Classifier guidance of the shared loop: the gradient against finite differences, the guided noise against its
closed form, and the class labels a UNet's class embedding gets."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet

from common.sampling import UNetDenoiser
from common.sampling.denoisers import ClassifierFreeDenoiser, ClassifierGuidedDenoiser

ABAR = torch.linspace(0.99, 0.01, 100, dtype=torch.float64)


class PixelClassifier(torch.nn.Module):
    """A tiny noise-aware per-pixel classifier: logits from a conv of x_t plus a timestep-dependent bias."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, classes, 3, padding=1).double()
        self.time = torch.nn.Embedding(100, classes).double()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)) * 3 + self.time(timesteps)[..., None, None]


def segmentation_log_likelihood(classifier, target: torch.Tensor, temperature: float = 1.0):
    """log p(mask | x_t) = sum over pixels of log softmax(logits / temperature) at the mask's class."""

    def log_likelihood(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(classifier(x, timesteps) / temperature, dim=1)
        return log_p.gather(1, target).flatten(1).sum(1)

    return log_likelihood


def test_the_guidance_gradient_matches_finite_differences():
    torch.manual_seed(0)
    classifier = PixelClassifier()
    target = torch.randint(0, 3, (2, 1, 6, 6))
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    timesteps = torch.tensor([10, 70])
    for temperature in (1.0, 0.5):
        log_likelihood = segmentation_log_likelihood(classifier, target, temperature)
        guided = ClassifierGuidedDenoiser(lambda s, t: torch.zeros_like(s), log_likelihood, 1.0, ABAR)
        gradient = guided.gradient(x, timesteps)
        step = 1e-6
        for index in [(0, 0, 0, 0), (0, 0, 3, 2), (1, 0, 5, 5), (1, 0, 2, 4)]:
            up, down = x.clone(), x.clone()
            up[index] += step
            down[index] -= step
            sample = index[0]
            numeric = (log_likelihood(up, timesteps)[sample] - log_likelihood(down, timesteps)[sample]) / (2 * step)
            torch.testing.assert_close(gradient[index], numeric, rtol=1e-6, atol=1e-8)
        assert gradient.abs().sum() > 0


def test_guided_noise_moves_against_the_gradient_with_its_closed_form():
    """With log p(y | x) = -||x - m||^2 / 2 the gradient is m - x, so eps' = eps - s sqrt(1 - abar_t) (m - x)."""
    target = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    epsilon = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    timesteps = torch.tensor([0, 50, 99])

    def log_likelihood(sample: torch.Tensor, _timesteps: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((sample - target) ** 2).flatten(1).sum(1)

    for scale in (0.0, 2.5):
        guided = ClassifierGuidedDenoiser(lambda s, t: epsilon, log_likelihood, scale, ABAR)
        expected = epsilon - scale * (1 - ABAR[timesteps]).sqrt().view(-1, 1, 1, 1) * (target - x)
        torch.testing.assert_close(guided(x, timesteps), expected)


def test_class_labels_reach_the_unet_s_class_embedding_in_both_halves_of_classifier_free_guidance():
    torch.manual_seed(0)
    unet = DiffusionModelUNet(
        spatial_dims=2, in_channels=2, out_channels=1, channels=(8, 8), attention_levels=(False, False),
        num_res_blocks=1, norm_num_groups=8, num_class_embeds=2,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for parameter in unet.parameters():  # MONAI zero-initialises the output convolution
            if not parameter.any():
                parameter.normal_(std=0.1)
    x, condition = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    timesteps = torch.tensor([5, 5])
    with torch.no_grad():
        as_images = UNetDenoiser(unet, condition, "concat", class_labels=torch.tensor([1, 1]))(x, timesteps)
        as_masks = UNetDenoiser(unet, condition, "concat", class_labels=torch.tensor([0, 0]))(x, timesteps)
        direct = unet(torch.cat([x, condition], 1), timesteps=timesteps, class_labels=torch.tensor([1, 1]))
        free = ClassifierFreeDenoiser(
            unet, condition, 0.0, null_value=0.0, mode="concat", class_labels=torch.ones(2, dtype=torch.long)
        )
        torch.testing.assert_close(as_images, direct)
        assert not torch.allclose(as_images, as_masks)  # the mode changes the prediction
        torch.testing.assert_close(free(x, timesteps), as_images)  # w = 0: the conditional model itself
