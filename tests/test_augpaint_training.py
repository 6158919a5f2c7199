"""AugPaint training stages: configs, the VQ-GAN trainer, latents and scale factor, and tiny end-to-end bundle runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from augpaint.conditioning import (
    LabelKeepMask,
    RandomBoxKeepMask,
    concat_condition,
    diffusion_training_items,
    masked_image_condition,
)
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DataLoader
from monai.engines.utils import DiffusionPrepareBatch, VPredictionPrepareBatch
from monai.handlers import from_engine
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import VQVAE, PatchDiscriminator
from monai.networks.schedulers import DDPMScheduler
from monai.utils import AdversarialKeys, set_determinism
from tiny_networks import tiny_vqvae

from common import regions
from common.checkpoints import load_network, read_card
from common.data import load_splits, pair_transforms, phantom_dataset
from common.engines import (
    ReconstructionInferer,
    ReconstructionLoss,
    VQAdversarialTrainer,
    diffusion_prepare_batch,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    reconstruction_batch,
)
from common.engines.vq_adversarial_trainer import ADVERSARIAL_LOSS, PIXEL_LOSS, QUANTIZATION_LOSS
from common.latents import encode_dataset, latent_scale_factor

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "augpaint" / "configs"
AUTOENCODER = CONFIGS / "train_autoencoder.json"
DIFFUSION = CONFIGS / "train_diffusion.json"
CONDITIONAL = CONFIGS / "train_diffusion_conditional.json"

# tiny networks and budgets for end-to-end runs (the shipped defaults are checked separately)
TINY = {
    "autoencoder_def#channels": [8, 16],
    "autoencoder_def#num_res_channels": [8, 16],
    "autoencoder_def#num_embeddings": 32,
    "discriminator_def#channels": 8,
    "network_def#channels": [16, 16, 16],
    "network_def#num_head_channels": [0, 0, 16],
    "network_def#norm_num_groups": 8,
    "autoencoder_iterations": 4,
    "autoencoder_batch_size": 4,
    "adversarial_warmup_iterations": 2,
    "diffusion_iterations": 40,
    "diffusion_batch_size": 8,
    "diffusion_lr": 1e-3,
    "log_interval": 10,
    "num_labelled": 6,
}


def parse(*files: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    parser.parse()
    return parser


def run_bundle(files: list[Path], **overrides) -> ConfigWorkflow:
    """Run a (layered) training config in process, as ``python -m monai.bundle run`` does."""
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


# ----------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "files",
    [[AUTOENCODER], [AUTOENCODER, DIFFUSION], [AUTOENCODER, DIFFUSION, CONDITIONAL]],
    ids=["autoencoder", "diffusion", "conditional"],
)
def test_config_networks_resolve_to_f4_vqvae_and_latent_unets(files):
    parser = parse(*files)
    autoencoder = parser.get_parsed_content("autoencoder_def")()  # definitions are factories, recorded in cards
    assert isinstance(autoencoder, VQVAE)
    assert isinstance(parser.get_parsed_content("discriminator_def"), PatchDiscriminator)
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        latent = autoencoder.encode_stage_2_inputs(image)
        reconstruction, _ = autoencoder(image)
    assert latent.shape == (2, 3, 16, 16)  # f = 4, embedding_dim 3
    assert reconstruction.shape == image.shape
    timesteps = torch.tensor([0, 999])
    network = parser.get_parsed_content("network_def")()
    conditional = CONDITIONAL in files  # the conditional stage widens the same UNet's input
    network_input = torch.cat([latent, latent, latent[:, :1]], 1) if conditional else latent
    with torch.no_grad():
        assert network(network_input, timesteps).shape == latent.shape
    scheduler = parser.get_parsed_content("scheduler")
    assert scheduler.num_train_timesteps == 1000
    assert torch.isclose(scheduler.betas[0], torch.tensor(0.0015)) and torch.isclose(
        scheduler.betas[-1], torch.tensor(0.0195)
    )


def test_diffusion_configs_wire_monai_components_and_checkpoint_names():
    unconditional = parse(AUTOENCODER, DIFFUSION)
    conditional = parse(AUTOENCODER, DIFFUSION, CONDITIONAL)
    assert unconditional.get("train#trainer#_target_") == "SupervisedTrainer"
    assert unconditional.get("train#inferer#_target_") == "DiffusionInferer"
    assert isinstance(unconditional.get_parsed_content("train#prepare_batch"), VPredictionPrepareBatch)
    assert conditional.get_parsed_content("train#prepare_batch").condition_name == "condition"
    assert conditional.get("diffusion_def") == unconditional.get("diffusion_def") == "@network_def"  # one network
    assert conditional.get_parsed_content("network_def").keywords["in_channels"] == 7
    names = {
        parser.get_parsed_content("train#handlers#" + str(len(parser.get("train#handlers")) - 1) + "#final_filename")
        for parser in (parse(AUTOENCODER), unconditional, conditional)
    }
    assert names == {"model_autoencoder.pt", "model.pt", "model_conditional.pt"}


def test_paper_profile_layers_over_every_stage_with_ldm_sizes():
    for files in ([AUTOENCODER], [AUTOENCODER, DIFFUSION], [AUTOENCODER, DIFFUSION, CONDITIONAL]):
        parser = parse(*files, CONFIGS / "paper.json")
        assert parser.get_parsed_content("image_size") == 64  # the image size is the data's, not the profile's
        assert parser.get_parsed_content("prediction_type") == "epsilon"
        assert parser.get("network_def#channels") == [224, 448, 672, 896]
    assert parser.get_parsed_content("network_def").keywords["in_channels"] == 7  # the conditional stage's
    assert parser.get_parsed_content("latent_factor") == 4
    autoencoder = parser.get_parsed_content("autoencoder_def")()
    with torch.no_grad():
        assert autoencoder.encode_stage_2_inputs(torch.rand(1, 1, 32, 32)).shape == (1, 3, 8, 8)  # still f = 4
    assert autoencoder.num_embeddings == 8192


def test_multi_gpu_overrides_parse_and_keep_stage_run_lists():
    autoencoder = parse(AUTOENCODER, CONFIGS / "multi_gpu_train_autoencoder.json")
    assert autoencoder.get("train#dataloader#sampler").replace("::", "#") == "@train#sampler"
    assert "gloo" in " ".join(autoencoder.get("initialize"))
    layered = parse(
        AUTOENCODER, DIFFUSION, CONFIGS / "multi_gpu_train_autoencoder.json", CONFIGS / "multi_gpu_train_diffusion.json"
    )
    assert any("save_card(@diffusion_ckpt" in expression for expression in layered.get("run"))
    assert layered.get("diffusion#module") == "@diffusion_network"


# ----------------------------------------------------------------------------------------------- engines


def make_trainer(network: torch.nn.Module, iterations: int = 3, warmup: int = 1, **kwargs) -> VQAdversarialTrainer:
    discriminator = PatchDiscriminator(spatial_dims=2, in_channels=1, channels=8, num_layers_d=2)
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    data = [{"image": torch.rand(1, 16, 16)} for _ in range(4)]
    return VQAdversarialTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=iterations,
        train_data_loader=DataLoader(data, batch_size=2),
        g_network=network,
        g_optimizer=torch.optim.Adam(network.parameters(), 1e-3),
        g_loss_function=lambda logits: generator_adversarial_loss(logits, adversarial),
        recon_loss_function=ReconstructionLoss(),
        d_network=discriminator,
        d_optimizer=torch.optim.Adam(discriminator.parameters(), 1e-3),
        d_loss_function=lambda real, fake: discriminator_adversarial_loss(real, fake, adversarial),
        adversarial_warmup_iterations=warmup,
        **kwargs,
    )


@pytest.mark.engine
def test_vq_trainer_objective_is_pixel_plus_quantization_plus_warmed_up_adversarial():
    set_determinism(0)
    network = tiny_vqvae()
    trainer = make_trainer(network, quantization_weight=2.0, adversarial_weight=0.5)
    before = [p.detach().clone() for p in network.parameters()]
    records = []
    keys = (AdversarialKeys.FAKES, AdversarialKeys.RECONSTRUCTION_LOSS, AdversarialKeys.GENERATOR_LOSS)
    keys += (PIXEL_LOSS, QUANTIZATION_LOSS, ADVERSARIAL_LOSS)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: records.append({k: engine.state.output[k] for k in keys})
    )
    trainer.run()
    set_determinism(None)
    assert len(records) == 3
    for iteration, out in enumerate(records, start=1):
        fakes = out[AdversarialKeys.FAKES]  # the reconstruction alone, split from the quantisation loss
        assert isinstance(fakes, torch.Tensor) and fakes.shape == (2, 1, 16, 16)
        expected = out[PIXEL_LOSS] + 2.0 * out[QUANTIZATION_LOSS]
        assert torch.allclose(out[AdversarialKeys.RECONSTRUCTION_LOSS], expected)
        weight = 0.0 if iteration <= 1 else 0.5
        assert torch.allclose(out[AdversarialKeys.GENERATOR_LOSS], weight * out[ADVERSARIAL_LOSS])
        assert out[ADVERSARIAL_LOSS] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))


@pytest.mark.engine
def test_vq_trainer_rejects_bad_weights_and_unknown_outputs():
    with pytest.raises(ValueError, match="adversarial_weight"):
        make_trainer(tiny_vqvae(), adversarial_weight=-1.0)

    class ThreeOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(x), x.mean(), x.std()

    with pytest.raises(ValueError, match="sequence of 3 outputs"):
        make_trainer(ThreeOutputs(), iterations=1).run()


def test_adversarial_losses_use_the_patch_logits_of_the_last_layer():
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    features, logits = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 6, 6)
    fake_logits = torch.randn(2, 1, 6, 6)
    generator = generator_adversarial_loss([features, logits], adversarial)
    assert torch.allclose(generator, adversarial(logits, target_is_real=True, for_discriminator=False))
    discriminator = discriminator_adversarial_loss([features, logits], [features, fake_logits], adversarial)
    expected = 0.5 * (
        adversarial(fake_logits, target_is_real=False, for_discriminator=True)
        + adversarial(logits, target_is_real=True, for_discriminator=True)
    )
    assert torch.allclose(discriminator, expected)


def test_reconstruction_loss_is_l1_by_default_and_never_downloads(tmp_path):
    loss = ReconstructionLoss()
    assert loss.perceptual is None
    a, b = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.25)
    assert torch.isclose(loss(a, b), torch.tensor(0.25))
    with pytest.raises(ValueError, match="perceptual_weight"):
        ReconstructionLoss(perceptual_weight=-0.1)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ReconstructionLoss(perceptual_weight=1.0, perceptual_weights_path=str(tmp_path / "missing.pth"))


def test_diffusion_prepare_batch_targets_follow_the_scheduler_prediction_type():
    images, condition = torch.randn(4, 3, 8, 8), torch.randn(4, 4, 8, 8)
    batch = {"image": images, "condition": condition}
    epsilon = diffusion_prepare_batch(DDPMScheduler(1000))
    assert type(epsilon) is DiffusionPrepareBatch
    inputs, target, _, kwargs = epsilon(batch)
    assert torch.equal(inputs, images) and torch.equal(target, kwargs["noise"]) and "condition" not in kwargs

    scheduler = DDPMScheduler(1000, prediction_type="v_prediction")
    inputs, target, _, kwargs = diffusion_prepare_batch(scheduler, condition_name="condition")(batch)
    abar = scheduler.alphas_cumprod[kwargs["timesteps"]].view(-1, 1, 1, 1)
    velocity = abar.sqrt() * kwargs["noise"] - (1 - abar).sqrt() * images  # Salimans & Ho 2022, eq. in sec. 4
    assert torch.allclose(target, velocity, atol=1e-6) and torch.equal(kwargs["condition"], condition)
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion_prepare_batch(DDPMScheduler(1000, prediction_type="sample"))


def test_reconstruction_batch_and_inferer_treat_the_autoencoder_as_image_to_image():
    image = torch.rand(2, 1, 16, 16)
    inputs, targets = reconstruction_batch({"image": image, "label": ["a.png", "b.png"]})
    assert inputs is targets and torch.equal(inputs, image)
    network = tiny_vqvae().eval()
    with torch.no_grad():
        assert torch.equal(ReconstructionInferer()(image, network), network(image)[0])


# ----------------------------------------------------------------------------------------------- latents


class PoolingAutoencoder(torch.nn.Module):
    """A known f=4 'autoencoder': the latent is the 4x4 mean of the image, repeated on 3 channels."""

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 4).repeat(1, 3, 1, 1)


def test_latent_scale_factor_is_one_over_the_std_of_all_latents():
    items = [{"image": torch.tensor([[[1.0, 3.0]]])}, {"image": torch.tensor([[[5.0, 7.0]]])}]
    values = torch.tensor([1.0, 3.0, 5.0, 7.0])
    assert latent_scale_factor(items) == pytest.approx(1.0 / float(values.std()))
    with pytest.raises(ValueError, match="empty"):
        latent_scale_factor([])
    with pytest.raises(ValueError, match="standard deviation"):
        latent_scale_factor([{"image": torch.ones(3, 2, 2)}] * 2)


def test_encode_dataset_gives_latents_masked_latents_and_latent_keep_masks():
    images = torch.rand(5, 1, 16, 16)
    labels = torch.zeros(5, 1, 16, 16)
    labels[:, :, 2:6, 9:15] = 1  # one box, rows 2-5, cols 9-14
    data = [{"image": images[i], "label": labels[i]} for i in range(5)]
    items = encode_dataset(PoolingAutoencoder(), data, lambda d: d, "cpu", batch_size=2, keep_mask=LabelKeepMask())
    keep = regions.keep_mask(labels)
    assert len(items) == 5
    for i, item in enumerate(items):
        assert torch.allclose(item["image"], torch.nn.functional.avg_pool2d(images[i], 4).repeat(3, 1, 1))
        assert torch.allclose(
            item["masked_image"], torch.nn.functional.avg_pool2d(images[i] * keep[i], 4).repeat(3, 1, 1)
        )
        assert torch.equal(item["keep"], regions.to_latent_grid(keep[i : i + 1], (4, 4))[0])
    assert items[0]["keep"][0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="mask mode"):
        LabelKeepMask(mode="circle")


def test_training_condition_equals_the_generation_condition():
    """The conditional LDM sees at generation exactly the condition it was trained with."""
    images = torch.rand(3, 1, 16, 16)
    labels = torch.zeros(3, 1, 16, 16)
    labels[0, :, 1:5, 1:5], labels[1, :, 8:16, 3:7], labels[2, :, 0:2, 0:16] = 1, 2, 1
    autoencoder = PoolingAutoencoder()
    data = [{"image": images[i], "label": labels[i]} for i in range(3)]
    items = diffusion_training_items(
        encode_dataset(autoencoder, data, lambda d: d, "cpu", keep_mask=LabelKeepMask()), 2.5
    )
    generation = masked_image_condition(autoencoder, images, regions.keep_mask(labels), 2.5)
    assert generation.shape == (3, 4, 4, 4)  # C + 1 channels
    assert torch.allclose(torch.stack([item["condition"] for item in items]), generation)
    assert torch.allclose(
        torch.stack([item["image"] for item in items]), 2.5 * autoencoder.encode_stage_2_inputs(images)
    )
    assert torch.equal(
        concat_condition(torch.ones(3, 2, 2), torch.zeros(1, 2, 2), 2.0)[:, 0, 0], torch.tensor([2, 2, 2, 0.0])
    )


def test_random_box_keep_masks_are_seeded_boxes_of_the_requested_size():
    batch = {"image": torch.zeros(6, 1, 40, 50)}
    first = RandomBoxKeepMask(max_boxes=1, size_range=(0.2, 0.4), seed=3)(batch)
    again = RandomBoxKeepMask(max_boxes=1, size_range=(0.2, 0.4), seed=3)(batch)
    other = RandomBoxKeepMask(max_boxes=1, size_range=(0.2, 0.4), seed=4)(batch)
    assert torch.equal(first, again) and not torch.equal(first, other)
    for mask in first[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert 8 <= height <= 16 and 10 <= width <= 20  # 0.2..0.4 of 40 rows and 50 columns
        assert int(mask.sum()) == height * width  # one filled rectangle
    with pytest.raises(ValueError, match="size_range"):
        RandomBoxKeepMask(size_range=(0.5, 0.2))


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> str:
    return phantom_dataset(root=str(tmp_path_factory.mktemp("data")), num_images=20, seed=5)


@pytest.fixture(scope="module")
def trained_autoencoder(tiny_dataset, tmp_path_factory) -> dict:
    """The autoencoder stage, run once for the end-to-end tests."""
    root = tmp_path_factory.mktemp("augpaint")
    overrides = {
        **TINY,
        "dataset_dir": tiny_dataset,
        "ckpt_dir": str(root / "models"),
        "output_dir": str(root / "eval"),
    }
    run_bundle([AUTOENCODER], **overrides)
    return overrides


def images_of(data: list[dict], image_size: int = 64) -> torch.Tensor:
    transform = pair_transforms(image_size, keys=("image",))
    return torch.stack([torch.as_tensor(transform({"image": d["image"]})["image"]) for d in data])


@pytest.mark.engine
@pytest.mark.slow
def test_autoencoder_stage_writes_a_flat_state_dict(trained_autoencoder):
    checkpoint = Path(trained_autoencoder["ckpt_dir"]) / "model_autoencoder.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    autoencoder = parse(AUTOENCODER, **TINY).get_parsed_content("autoencoder_def")()
    autoencoder.load_state_dict(state)  # strict: same keys and shapes as autoencoder_def
    card = read_card(str(checkpoint))  # the card rebuilds exactly this network
    assert card["network"]["channels"] == [8, 16] and card["settings"] == {"latent_factor": 4, "image_size": 64}
    rebuilt = load_network(str(checkpoint)).state_dict()
    assert all(torch.equal(rebuilt[key], value) for key, value in autoencoder.state_dict().items())
    assert list((Path(trained_autoencoder["output_dir"]) / "autoencoder").glob("events.out.tfevents.*"))


@pytest.mark.engine
@pytest.mark.slow
def test_diffusion_stage_scales_latents_by_data_and_its_loss_falls(trained_autoencoder):
    set_determinism(0)
    losses: list[float] = []
    workflow = ConfigWorkflow(
        config_file=[str(AUTOENCODER), str(DIFFUSION)],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **trained_autoencoder,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output)))
    )
    workflow.run()
    workflow.finalize()
    set_determinism(None)

    ckpt_dir = Path(trained_autoencoder["ckpt_dir"])
    autoencoder = str(ckpt_dir / "model_autoencoder.pt")
    load_network(str(ckpt_dir / "model.pt"), inputs=[autoencoder], image_size=64)  # its card fits the run
    splits = load_splits(trained_autoencoder["dataset_dir"], num_labelled=TINY["num_labelled"])
    with torch.no_grad():
        latents = load_network(autoencoder).encode_stage_2_inputs(images_of(splits["train"] + splits["unlabelled"]))
    settings = read_card(str(ckpt_dir / "model.pt"))["settings"]
    assert settings["latent_scale"] == pytest.approx(1.0 / float(latents.std()), rel=1e-4)
    assert settings["prediction_type"] == "v_prediction" and settings["conditional"] is False

    assert len(losses) == TINY["diffusion_iterations"]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.9 * first, f"diffusion loss did not fall: first 10 mean {first:.3f}, last 10 mean {last:.3f}"


@pytest.mark.engine
@pytest.mark.slow
def test_conditional_stage_trains_the_concat_conditioned_unet(trained_autoencoder):
    run_bundle([AUTOENCODER, DIFFUSION, CONDITIONAL], **{**trained_autoencoder, "diffusion_iterations": 4})
    checkpoint = str(Path(trained_autoencoder["ckpt_dir"]) / "model_conditional.pt")
    network = load_network(checkpoint, conditional=True)
    assert network.in_channels == 7  # noisy latent 3 + masked image latent 3 + keep mask 1
    assert read_card(checkpoint)["settings"]["latent_scale"] > 0


@pytest.mark.engine
@pytest.mark.slow
def test_multi_gpu_configs_train_with_two_cpu_processes(tiny_dataset, tmp_path):
    """torchrun with 2 processes on CPU (gloo): autoencoder then diffusion stage, DDP-wrapped."""
    overrides = {**TINY, "dataset_dir": tiny_dataset, "autoencoder_iterations": 2, "diffusion_iterations": 2}
    overrides.update(ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"))
    arguments = [arg for key, value in overrides.items() for arg in (f"--{key}", json.dumps(value))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    multi_gpu_autoencoder, multi_gpu_diffusion = (
        CONFIGS / "multi_gpu_train_autoencoder.json",
        CONFIGS / "multi_gpu_train_diffusion.json",
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for files in (
        [AUTOENCODER, multi_gpu_autoencoder],
        [AUTOENCODER, DIFFUSION, multi_gpu_autoencoder, multi_gpu_diffusion],
    ):
        config_file = json.dumps([str(f) for f in files])
        command = [*torchrun, "-m", "monai.bundle", "run", "--config_file", config_file, *arguments]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
    autoencoder = str(tmp_path / "models" / "model_autoencoder.pt")
    load_network(autoencoder)  # flat state dicts that fit their cards (no DDP "module." prefix)
    load_network(str(tmp_path / "models" / "model.pt"), inputs=[autoencoder])
