"""GAUDA generator: mask autoencoder, joint latents, condition dropout, guided sampling, configs and bundle runs."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from errors import raises_through_bundle
from gauda.generator import JointLatentGenerator, load_generator
from gauda.joint_latents import (
    class_condition,
    encode_pairs,
    joint_training_items,
    one_hot_pair_transforms,
    split_joint_latent,
)
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.engines import SupervisedTrainer
from monai.inferers import DiffusionInferer
from monai.losses import PatchAdversarialLoss
from monai.metrics import DiceMetric
from monai.networks.nets import VQVAE, DiffusionModelUNet, PatchDiscriminator
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.utils import set_determinism
from PIL import Image
from tiny_networks import NOISE_SCHEDULE, tiny_checkpoint, tiny_unet_definition, tiny_vqvae_definition

from common.checkpoints import load_network, read_card
from common.data import foreground_classes, load_splits, observed_class_sets, phantom_dataset, read_class_names
from common.engines import (
    ConditionDropoutPrepareBatch,
    ProbabilityCrossEntropyLoss,
    VQAdversarialTrainer,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    reconstruction_batch,
)
from common.generation import GenerationRun, JobBatch, jobs_from_class_sets
from common.sampling import ClassifierFreeDenoiser, DenoisingLoop, guided_output
from common.stages import run_workflow

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "gauda" / "configs"
AUTOENCODER = CONFIGS / "train_autoencoder.json"
MASK_AUTOENCODER = CONFIGS / "train_mask_autoencoder.json"
DIFFUSION = CONFIGS / "train_diffusion.json"
INFERENCE = CONFIGS / "inference.json"
PAPER_INFERENCE = CONFIGS / "paper_inference.json"

NETWORKS = {
    "image_autoencoder_def#channels": [8, 16],
    "image_autoencoder_def#num_res_channels": [8, 16],
    "image_autoencoder_def#num_embeddings": 32,
    "mask_autoencoder_def#channels": [8, 16],
    "mask_autoencoder_def#num_res_channels": [8, 16],
    "mask_autoencoder_def#num_embeddings": 32,
    "network_def#channels": [16, 16, 16],
    "network_def#num_head_channels": [0, 16, 16],
    "network_def#norm_num_groups": 8,
}
TINY = {
    **NETWORKS,
    "discriminator_channels": 8,
    "autoencoder_iterations": 3,
    "autoencoder_batch_size": 4,
    "adversarial_warmup_iterations": 1,
    "diffusion_iterations": 4,
    "diffusion_batch_size": 8,
    "log_interval": 2,
    "num_labelled": 6,
}


def parse(*files: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    parser.parse()
    return parser


def tiny_vqvae(channels: int, embedding_dim: int, width: int = 8, num_embeddings: int = 8) -> VQVAE:
    """A VQVAE with downsampling factor 4, as the bundle's."""
    return VQVAE(
        2, channels, channels, channels=(width, width), num_res_layers=1, num_res_channels=(width, width),
        downsample_parameters=((2, 4, 1, 1), (2, 4, 1, 1)), upsample_parameters=((2, 4, 1, 1, 0), (2, 4, 1, 1, 0)),
        num_embeddings=num_embeddings, embedding_dim=embedding_dim,
    )  # fmt: skip


def tiny_generator(num_classes: int = 3, scheduler=None, steps: int = 3) -> JointLatentGenerator:
    torch.manual_seed(0)
    image_ae, mask_ae = tiny_vqvae(1, 2), tiny_vqvae(num_classes, 2)
    network = DiffusionModelUNet(
        2, 4, 4, channels=(8, 8), attention_levels=(False, True), num_head_channels=8, num_res_blocks=1,
        norm_num_groups=8, with_conditioning=True, cross_attention_dim=num_classes,
    )  # fmt: skip
    scheduler = scheduler or DDIMScheduler(1000, clip_sample=False, prediction_type="v_prediction")
    return JointLatentGenerator(
        image_ae, mask_ae, network, scheduler, steps, 3.0, -1.0, 2.0, 3.0, 2, 2, (4, 4), num_classes
    )


CLASS_NAMES = ["background", "organ", "vessel", "nerve", "lesion"]


def tiny_models(folder: Path) -> Path:
    """Random-weight GAUDA checkpoints with cards, as the training stages write them (phantom classes, 32 px)."""
    image = tiny_checkpoint(str(folder / "model_image_autoencoder.pt"), tiny_vqvae_definition(1, 2), image_size=32)
    mask = tiny_checkpoint(str(folder / "model_mask_autoencoder.pt"), tiny_vqvae_definition(5, 2), image_size=32)
    extra = {"with_conditioning": True, "cross_attention_dim": 5, "attention_levels": [False, True]}
    tiny_checkpoint(
        str(folder / "model.pt"),
        tiny_unet_definition(4, 4, num_head_channels=8, **extra),
        inputs=[image, mask],
        noise_schedule=NOISE_SCHEDULE,
        prediction_type="v_prediction",
        image_latent_scale=2.0,
        mask_latent_scale=3.0,
        null_condition_value=-1.0,
        image_channels=2,
        mask_channels=2,
        latent_size=[8, 8],
        class_names=CLASS_NAMES,
        image_size=32,
    )
    return folder


# ------------------------------------------------------------------------------------ the mask autoencoder


def test_probability_cross_entropy_is_cross_entropy_of_the_logits():
    logits = torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5))
    one_hot = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    expected = torch.nn.functional.cross_entropy(logits, target)
    assert torch.isclose(ProbabilityCrossEntropyLoss()(torch.softmax(logits, 1), one_hot), expected, atol=1e-5)
    with pytest.raises(ValueError, match="must match"):
        ProbabilityCrossEntropyLoss()(torch.softmax(logits, 1), one_hot[:, :3])


@pytest.mark.engine
def test_mask_autoencoder_round_trip_keeps_mask_classes(single_torch_thread):
    """Overfit a tiny mask VQ-GAN (cross-entropy + adversarial) on four phantom masks: argmax of the decoded
    one-hot latent gives back the masks, every class present stays present."""
    set_determinism(seed=0)
    pairs = load_splits(phantom_dataset(), seed=0, num_labelled=4)["train"]
    num_classes = len(read_class_names(None))
    transform = one_hot_pair_transforms(32, num_classes)
    loader = DataLoader(Dataset(pairs, transform), batch_size=4, shuffle=False)
    autoencoder = tiny_vqvae(num_classes, 4, width=16, num_embeddings=64)
    discriminator = PatchDiscriminator(2, 8, num_classes, 1, num_layers_d=2, norm="INSTANCE")
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    trainer = VQAdversarialTrainer(
        device="cpu",
        max_epochs=120,
        train_data_loader=loader,
        prepare_batch=functools.partial(reconstruction_batch, key="label"),
        g_network=autoencoder,
        g_optimizer=torch.optim.Adam(autoencoder.parameters(), 5e-3),
        recon_loss_function=ProbabilityCrossEntropyLoss(),
        g_loss_function=functools.partial(generator_adversarial_loss, adversarial_loss=adversarial),
        d_network=discriminator,
        d_optimizer=torch.optim.Adam(discriminator.parameters(), 1e-3),
        d_loss_function=functools.partial(discriminator_adversarial_loss, adversarial_loss=adversarial),
        adversarial_weight=0.01,
        adversarial_warmup_iterations=60,
        reconstruction_activation=functools.partial(torch.softmax, dim=1),
    )
    trainer.run()
    one_hot = next(iter(loader))["label"].as_tensor()
    with torch.no_grad():
        latent = autoencoder.eval().encode_stage_2_inputs(one_hot)
        decoded = autoencoder.decode_stage_2_outputs(latent).argmax(1)
    assert latent.shape == (4, 4, 8, 8)  # f = 4
    target = one_hot.argmax(1)
    assert (decoded == target).float().mean() > 0.93
    for index in range(4):
        assert foreground_classes(decoded[index]) == foreground_classes(target[index])


# ------------------------------------------------------------------------------------ conditions and latents


def test_class_condition_is_multi_hot_of_foreground_classes():
    condition = class_condition([[1, 4], [], [2]], 5)
    assert condition.shape == (3, 1, 5)
    assert condition[0, 0].tolist() == [0, 1, 0, 0, 1]
    assert condition[1].sum() == 0 and condition[2, 0].tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="foreground classes 1..4"):
        class_condition([[0, 1]], 5)
    with pytest.raises(ValueError, match="foreground classes 1..4"):
        class_condition([[5]], 5)


def test_joint_items_concatenate_scaled_latents_and_carry_the_condition():
    encoded = [{"image": torch.ones(2, 4, 4), "label": torch.full((3, 4, 4), 2.0), "classes": [2]}]
    (item,) = joint_training_items(encoded, image_scale=0.5, mask_scale=3.0, num_classes=3)
    assert item["image"].shape == (5, 4, 4)
    assert torch.all(item["image"][:2] == 0.5) and torch.all(item["image"][2:] == 6.0)
    assert item["condition"].tolist() == [[0.0, 0.0, 1.0]]
    image_part, mask_part = split_joint_latent(item["image"][None], 2)
    assert image_part.shape == (1, 2, 4, 4) and mask_part.shape == (1, 3, 4, 4)


def test_encode_pairs_gives_same_size_latents_and_the_classes_of_each_mask():
    pairs = load_splits(phantom_dataset(), seed=0, num_labelled=3)["train"]
    transform = one_hot_pair_transforms(32, 5)
    image_ae, mask_ae = tiny_vqvae(1, 3).eval(), tiny_vqvae(5, 2).eval()
    encoded = encode_pairs(image_ae, mask_ae, pairs, transform, "cpu")
    assert [item["image"].shape for item in encoded] == [(3, 8, 8)] * 3
    assert [item["label"].shape for item in encoded] == [(2, 8, 8)] * 3
    for pair, item in zip(pairs, encoded, strict=True):
        mask = np.asarray(Image.open(pair["label"]).resize((32, 32), Image.NEAREST))
        assert item["classes"] == sorted(int(c) for c in np.unique(mask) if c > 0)
    assert observed_class_sets(pairs, 32) == [list(c) for c in sorted({tuple(item["classes"]) for item in encoded})]


# ------------------------------------------------------------------------------------ condition dropout


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_condition_dropout_replaces_conditions_by_the_null_one_at_rate_p(prediction_type):
    scheduler = DDPMScheduler(1000, prediction_type=prediction_type)
    prepare = ConditionDropoutPrepareBatch(scheduler, drop_prob=0.2, null_value=-1.0, seed=0)
    condition = class_condition([[1, 2]] * 4000, 3)
    images, target, _, kwargs = prepare({"image": torch.randn(4000, 2, 2, 2), "condition": condition})
    dropped = (kwargs["condition"] == -1.0).all(dim=-1).flatten()
    kept = (kwargs["condition"] == condition).all(dim=-1).flatten()
    assert torch.all(dropped ^ kept)
    assert abs(dropped.float().mean().item() - 0.2) < 0.02  # 4000 draws: std of the rate 0.006
    expected = kwargs["noise"]
    if prediction_type == "v_prediction":
        expected = scheduler.get_velocity(images, kwargs["noise"], kwargs["timesteps"])
    assert torch.allclose(target, expected)
    with pytest.raises(ValueError, match="drop_prob"):
        ConditionDropoutPrepareBatch(scheduler, drop_prob=1.5)


# ------------------------------------------------------------------------------------ guided sampling


def test_guided_output_matches_the_hand_computation():
    conditional, unconditional = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    # (1 + w) * c - w * u with w = 3: 4 * 2 - 3 * 0.5 = 6.5 and 4 * -1 - 3 * 1 = -7
    assert guided_output(conditional, unconditional, 3.0).tolist() == [6.5, -7.0]
    assert torch.equal(guided_output(conditional, unconditional, 0.0), conditional)


class ConstantModels(torch.nn.Module):
    """Two constant fake models in one: returns 2 for a real context, 0.5 for the null context; records calls."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.contexts.append(context.clone())
        is_null = (context == -1.0).all(dim=-1).view(-1, 1, 1, 1)
        return torch.where(is_null, torch.full_like(x, 0.5), torch.full_like(x, 2.0))


def test_the_guided_denoiser_passes_context_and_null_context_and_mixes_their_outputs():
    network = ConstantModels()
    context = class_condition([[1], [2]], 3)
    denoiser = ClassifierFreeDenoiser(network, context, guidance=3.0, null_value=-1.0)
    output = denoiser(torch.zeros(2, 1, 2, 2), torch.tensor([500, 500]))
    assert torch.allclose(output, torch.full_like(output, 4 * 2.0 - 3 * 0.5))
    DenoisingLoop(DDIMScheduler(1000, clip_sample=False), 4)(
        denoiser, [torch.Generator().manual_seed(s) for s in (0, 1)], (1, 2, 2)
    )
    assert len(network.contexts) == 5  # one batched call per step (and the one above)
    for seen in network.contexts:
        assert torch.equal(seen[:2], context) and torch.all(seen[2:] == -1.0)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_generator_gives_pairs_that_depend_only_on_their_seed(scheduler):
    schedulers = {
        "ddim": DDIMScheduler(1000, clip_sample=False, prediction_type="v_prediction"),
        "ddpm": DDPMScheduler(50, clip_sample=False, prediction_type="v_prediction"),  # a full, short chain
    }
    generator = tiny_generator(scheduler=schedulers[scheduler], steps=3 if scheduler == "ddim" else 50)
    images, labels = generator(JobBatch([5, 6, 7], conditions=[[1], [2], [1, 2]]))
    assert images.shape == labels.shape == (3, 1, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 3
    alone, alone_labels = generator(JobBatch([6], conditions=[[2]]))
    assert torch.allclose(alone, images[1:2], atol=1e-5) and torch.equal(alone_labels, labels[1:2])
    with pytest.raises(ValueError, match="a condition and a seed each"):
        generator(JobBatch([1, 2], conditions=[[1]]))


def test_labels_hold_only_background_and_the_asked_classes_unless_told_otherwise():
    """The decoder prefers class 3 everywhere, then class 1 on the left half and background on the right: asked for
    [1] the label is 1 on the left and 0 on the right; asked for [1, 3], or with the plain argmax, it is 3."""
    generator = tiny_generator(num_classes=4)
    logits = torch.zeros(2, 4, 16, 16)
    logits[:, 3] = 5.0
    logits[:, 1, :, :8] = 2.0
    logits[:, 0, :, 8:] = 2.0
    generator.mask_autoencoder.decode_stage_2_outputs = lambda latent: logits[: len(latent)]
    _, labels = generator(JobBatch([0, 1], conditions=[[1], [1, 3]]))
    assert torch.all(labels[0, 0, :, :8] == 1) and torch.all(labels[0, 0, :, 8:] == 0)
    assert torch.all(labels[1] == 3)
    generator.asked_classes_only = False
    _, plain = generator(JobBatch([0], conditions=[[1]]))
    assert torch.all(plain == 3)


@pytest.mark.engine
def test_conditioning_decides_the_class_on_a_toy_trained_for_seconds():
    """A tiny conditional UNet trained (MONAI SupervisedTrainer, condition dropout 0.2) on toy latents whose sign is
    decided by the condition: class 1 -> +1, class 2 -> -1. Guided DDIM samples follow their condition."""
    set_determinism(seed=0)
    items = [
        {"image": torch.full((2, 4, 4), 1.0 if c == 1 else -1.0), "condition": class_condition([[c]], 3)[0]}
        for c in (1, 2)
        for _ in range(32)
    ]
    scheduler = DDPMScheduler(1000, clip_sample=False, prediction_type="v_prediction")
    network = DiffusionModelUNet(
        2, 2, 2, channels=(16, 16), attention_levels=(False, True), num_head_channels=16, num_res_blocks=1,
        norm_num_groups=8, with_conditioning=True, cross_attention_dim=3,
    )  # fmt: skip
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=150,
        train_data_loader=DataLoader(Dataset(items), batch_size=16, shuffle=True),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 2e-3),
        loss_function=torch.nn.MSELoss(),
        inferer=DiffusionInferer(scheduler),
        prepare_batch=ConditionDropoutPrepareBatch(scheduler, drop_prob=0.2, seed=0),
    )
    trainer.run()
    loop = DenoisingLoop(DDIMScheduler(1000, clip_sample=False, prediction_type="v_prediction"), 20)
    denoiser = ClassifierFreeDenoiser(network.eval(), class_condition([[1]] * 4 + [[2]] * 4, 3), guidance=3.0)
    latents = loop(denoiser, [torch.Generator().manual_seed(s) for s in range(8)], (2, 4, 4))
    means = latents.mean(dim=(1, 2, 3))
    assert torch.all(means[:4] > 0.5) and torch.all(means[4:] < -0.5), means


# ------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "files",
    [[AUTOENCODER], [AUTOENCODER, MASK_AUTOENCODER], [AUTOENCODER, DIFFUSION]],
    ids=["image_autoencoder", "mask_autoencoder", "diffusion"],
)
def test_configs_resolve_to_same_size_latents_and_a_conditional_joint_unet(files):
    parser = parse(*files)
    num_classes = parser.get_parsed_content("num_classes")
    image_ae = parser.get_parsed_content("image_autoencoder_def")()  # definitions are factories, kept in the cards
    mask_ae = parser.get_parsed_content("mask_autoencoder_def")()
    with torch.no_grad():
        image_latent = image_ae.encode_stage_2_inputs(torch.rand(2, 1, 64, 64))
        mask_latent = mask_ae.encode_stage_2_inputs(torch.rand(2, num_classes, 64, 64))
        assert image_latent.shape == mask_latent.shape == (2, 4, 16, 16)
        joint = torch.cat([image_latent, mask_latent], 1)
        network = parser.get_parsed_content("network_def")()
        output = network(joint, torch.tensor([0, 999]), context=class_condition([[1], [2, 3]], num_classes))
    assert output.shape == joint.shape


def test_training_configs_wire_the_stage_parts(tmp_path):
    dirs = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}  # handlers make their folders
    image = parse(AUTOENCODER, **dirs)
    mask = parse(AUTOENCODER, MASK_AUTOENCODER, **dirs)
    diffusion = parse(AUTOENCODER, DIFFUSION, **dirs)
    assert isinstance(image.get_parsed_content("reconstruction_loss"), torch.nn.MSELoss)
    assert image.get_parsed_content("train#handlers")[-1]._final_filename == "model_image_autoencoder.pt"
    assert isinstance(mask.get_parsed_content("reconstruction_loss"), ProbabilityCrossEntropyLoss)
    assert mask.get_parsed_content("train#handlers")[-1]._final_filename == "model_mask_autoencoder.pt"
    first_conv = next(
        m for m in mask.get_parsed_content("discriminator_def").modules() if isinstance(m, torch.nn.Conv2d)
    )
    assert first_conv.in_channels == 5  # phantoms: K = 5 one-hot channels
    prepare = diffusion.get_parsed_content("train#prepare_batch")
    assert isinstance(prepare, ConditionDropoutPrepareBatch)
    assert prepare.drop_prob == 0.2 and prepare.null_value == -1.0
    assert any("null_condition_value=@null_condition_value" in step for step in diffusion.get("run"))  # in the card


def test_inference_builds_the_generator_from_the_cards_of_its_checkpoints(tmp_path):
    models = {"ckpt_dir": str(tiny_models(tmp_path / "models")), "image_size": 32}
    generator = parse(INFERENCE, **models).get_parsed_content("generator")
    assert generator.null_value == -1.0 and generator.guidance == 3.0 and generator.loop.num_inference_steps == 50
    assert (generator.image_scale, generator.mask_scale, generator.latent_size) == (2.0, 3.0, (8, 8))
    ddpm = parse(INFERENCE, sampler="ddpm", **models)
    assert isinstance(ddpm.get_parsed_content("scheduler"), DDPMScheduler)
    assert ddpm.get_parsed_content("num_inference_steps") == 1000  # every training step: a DDPM chain needs them
    paper = parse(INFERENCE, PAPER_INFERENCE, **models)
    assert paper.get_parsed_content("sampler") == "ddpm" and paper.get_parsed_content("guidance") == 3.0
    with raises_through_bundle(ValueError, "needs all 1000 steps"):
        parse(INFERENCE, sampler="ddpm", num_inference_steps=50, **models).get_parsed_content("generator")
    with raises_through_bundle(ValueError, "image_size: asked for 64, trained with 32"):
        parse(INFERENCE, ckpt_dir=models["ckpt_dir"]).get_parsed_content("generator")


@pytest.mark.engine
@pytest.mark.parametrize("mask_stage", [False, True], ids=["image", "mask"])
def test_autoencoder_stage_reports_the_reconstruction_of_its_final_network(tmp_path, single_torch_thread, mask_stage):
    """The stage's check scores the saved network on the first training pairs: PSNR for images, foreground Dice of
    the argmax for masks, equal to the same score computed by hand from the checkpoint."""
    files = [str(AUTOENCODER)] + ([str(MASK_AUTOENCODER)] if mask_stage else [])
    overrides = {**TINY, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    workflow = run_workflow(files, **overrides, autoencoder_val_pairs=4)
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    name = "mask" if mask_stage else "image"
    autoencoder = load_network(str(tmp_path / "models" / f"model_{name}_autoencoder.pt"), image_size=64)
    pairs = load_splits(None, seed=0, num_labelled=TINY["num_labelled"])["train"][:4]
    num_classes = len(read_class_names(None))
    batch = next(iter(DataLoader(Dataset(pairs, one_hot_pair_transforms(64, num_classes)), batch_size=4)))
    key = "label" if mask_stage else "image"
    with torch.no_grad():
        reconstruction = autoencoder.eval()(batch[key])[0]
    if mask_stage:
        predicted = torch.nn.functional.one_hot(reconstruction.argmax(1), num_classes).permute(0, 3, 1, 2)
        expected = DiceMetric(include_background=False, ignore_empty=True)(predicted, batch["label"]).nanmean()
        assert set(metrics) == {"val_mean_dice", "val_mean_iou"}
        assert metrics["val_mean_dice"] == pytest.approx(float(expected), abs=1e-5)
    else:
        mse = ((reconstruction - batch["image"]) ** 2).flatten(1).mean(1)
        expected = (10 * torch.log10(1.0 / mse)).mean()
        assert set(metrics) == {"val_psnr", "val_mse"}
        assert metrics["val_psnr"] == pytest.approx(float(expected), abs=1e-3)
        assert metrics["val_mse"] == pytest.approx(float(mse.mean()), rel=1e-4)


def test_train_json_lists_the_three_stages_and_paper_profile_layers():
    train = parse(CONFIGS / "train.json")
    stages = train.get_parsed_content("stages")
    assert [stage["name"] for stage in stages] == ["image_autoencoder", "mask_autoencoder", "diffusion"]
    assert stages[1]["config_file"][-1].endswith("train_mask_autoencoder.json")
    paper = parse(AUTOENCODER, DIFFUSION, CONFIGS / "paper.json")
    assert paper.get_parsed_content("prediction_type") == "epsilon"
    autoencoder = paper.get_parsed_content("image_autoencoder_def")()
    assert autoencoder.encode_stage_2_inputs(torch.rand(1, 1, 128, 128)).shape == (1, 4, 32, 32)  # 128 px -> 4x32x32


# ------------------------------------------------------------------------------------ generation run


def test_generation_run_writes_a_datalist_with_conditions_and_class_index_masks(tmp_path):
    generator = tiny_generator()
    jobs = jobs_from_class_sets([[1], [1, 2]], 2, 10)
    datalist = GenerationRun(jobs, generator, str(tmp_path), "gauda", {"k": 1}, 3, num_classes=3, progress=False).run()
    entries = load_decathlon_datalist(datalist, data_list_key="training")
    assert [Path(e["image"]).name for e in entries] == ["c1_s0.png", "c1_s1.png", "c1-2_s0.png", "c1-2_s1.png"]
    content = json.loads(Path(datalist).read_text())["training"]
    assert [e["condition"] for e in content] == [[1], [1], [1, 2], [1, 2]]
    assert [e["seed"] for e in content] == [10, 11, 12, 13]
    assert all(e["source_image"] is None and e["source_label"] is None for e in content)
    _, labels = generator(JobBatch([13], conditions=[[1, 2]]))
    written = np.asarray(Image.open(entries[3]["label"]))
    assert np.array_equal(written, labels[0, 0].numpy()) and written.max() < 3


# ------------------------------------------------------------------------------------ bundle runs


@pytest.mark.engine
@pytest.mark.slow
def test_train_stages_and_inference_end_to_end(tmp_path):
    ckpt_dir, synthetic = tmp_path / "models", tmp_path / "synthetic"
    common = {"ckpt_dir": str(ckpt_dir), "output_dir": str(tmp_path / "eval"), "num_labelled": 6}
    run_workflow(str(CONFIGS / "train.json"), **{**common, "knobs": {**TINY, "output_dir": str(tmp_path / "eval")}})
    names = ["model_image_autoencoder.pt", "model_mask_autoencoder.pt", "model.pt"]
    assert all((ckpt_dir / name).is_file() for name in names)
    settings = read_card(str(ckpt_dir / "model.pt"))["settings"]
    assert settings["image_latent_scale"] > 0 and settings["mask_latent_scale"] > 0
    inference = {**common, "output_dir": str(synthetic), "num_samples": 2, "classes": [1, 4]}
    run_workflow(str(INFERENCE), workflow_type="infer", num_inference_steps=3, progress=False, **inference)
    entries = load_decathlon_datalist(str(synthetic / "datalist.json"), data_list_key="training")
    assert len(entries) == 2 and all(entry["condition"] == [1, 4] for entry in entries)
    for entry in entries:
        mask = np.asarray(Image.open(entry["label"]))
        assert mask.shape == (64, 64) and mask.max() < 5
    generator = load_generator(str(INFERENCE), ckpt_dir=str(ckpt_dir), device="cpu", num_inference_steps=2)
    images, labels = generator(JobBatch([0, 1], conditions=[[1, 4], [2]]))
    assert images.shape == labels.shape == (2, 1, 64, 64)
    assert generator.loop.num_inference_steps == 2 and generator.image_scale == settings["image_latent_scale"]


@pytest.mark.engine
@pytest.mark.slow
def test_multi_gpu_configs_train_the_mask_autoencoder_and_the_ldm_with_two_cpu_processes(tmp_path):
    """torchrun with 2 processes on CPU (gloo): the mask autoencoder (its reconstruction check runs on every rank)
    and the joint LDM, DDP-wrapped, on a single-process image autoencoder; the checkpoints load and sample."""
    overrides = {**TINY, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    run_workflow([str(AUTOENCODER)], **overrides)
    arguments = [arg for key, value in overrides.items() for arg in (f"--{key}", json.dumps(value))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    multi_gpu_autoencoder = CONFIGS / "multi_gpu_train_autoencoder.json"
    logs = []
    for files in (
        [AUTOENCODER, MASK_AUTOENCODER, multi_gpu_autoencoder],
        [AUTOENCODER, DIFFUSION, multi_gpu_autoencoder, CONFIGS / "multi_gpu_train_diffusion.json"],
    ):
        config_file = json.dumps([str(f) for f in files])
        command = [*torchrun, "-m", "monai.bundle", "run", "--config_file", config_file, *arguments]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        logs.append(result.stdout + result.stderr)
    assert "val_mean_dice" in logs[0]  # the reconstruction check ran and rank 0 reported it
    generator = load_generator(str(INFERENCE), ckpt_dir=str(tmp_path / "models"), device="cpu", num_inference_steps=2)
    images, labels = generator(JobBatch([0, 1], conditions=[[1], [2]]))
    assert images.shape == labels.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("num_labelled", [1, 6])
def test_the_picture_batch_has_a_condition_for_every_seed_however_few_class_sets(tmp_path, num_labelled):
    dirs = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    parser = parse(AUTOENCODER, DIFFUSION, num_labelled=num_labelled, **dirs)
    batch, class_sets = parser.get_parsed_content("picture_batch"), parser.get_parsed_content("picture_class_sets")
    assert len(batch.conditions) == len(batch.seeds) == parser.get_parsed_content("picture_count")
    assert {tuple(c) for c in batch.conditions} <= {tuple(s) for s in class_sets}  # observed sets only, in turn
    assert [tuple(c) for c in batch.conditions[: 2 * len(class_sets)]][::2] == [tuple(s) for s in class_sets][:4]
