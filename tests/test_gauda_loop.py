"""GAUDA's downstream side: the deep ensemble trains on the mean of its members' losses and predicts their mean
probability; the GAUDA handler computes UE_c (eq. 8) from the members, picks the top-k uncertain classes, and replaces
only samples showing a synthesised class, at rate p, image and label together; Adaptive Sampling moves its weights
towards poorly scored classes; the classic augmentation keeps image and label aligned; every downstream scheme's
config trains for a few iterations."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from PIL import Image
from torch import nn
from torch.utils.data import WeightedRandomSampler

from common.augmentation import crop_flip_rotate_augmentation
from common.checkpoints import load_network
from common.data import load_splits
from common.handlers import AdaptiveSamplingHandler, GAUDAHandler, sample_class_sets, top_k_uncertain_classes
from common.networks import DeepEnsemble, MemberMeanLoss, bayesian_segmenter
from common.stages import run_workflow

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "gauda" / "configs"
BASELINE = str(CONFIGS / "train_downstream.json")
SCHEMES = ("baseline", "aug", "as", "gauda")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


class ConstantProbabilities(nn.Module):
    """Predicts the same class probabilities (C, H, W) for every image: logits = log p."""

    def __init__(self, probabilities: list) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(probabilities).log())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(images.shape[0], *self.logits.shape)


def two_member_ensemble() -> DeepEnsemble:
    """Two members on a 1x2 image, 3 classes. Pixel 0: (.2,.7,.1) and (.4,.5,.1), mean (.3,.6,.1) -> class 1,
    Var p_1 = ((.7-.5)/2)^2 = .01. Pixel 1: (.1,.3,.6) and (.05,.05,.9), mean -> class 2, Var p_2 = (.3/2)^2 = .0225."""
    members = iter(
        [
            [[[0.2, 0.1]], [[0.7, 0.3]], [[0.1, 0.6]]],
            [[[0.4, 0.05]], [[0.5, 0.05]], [[0.1, 0.9]]],
        ]
    )
    return DeepEnsemble(lambda: ConstantProbabilities(next(members)), num_members=2)


def fake_generator(calls: list | None = None, size: int = 8):
    """A pair generator on ``size`` px: pair i's label shows its class set in rows, its image is constant
    seed / 1000 (so a replaced sample tells which pair it came from)."""

    def generate(batch):
        class_sets, seeds = batch.conditions, batch.seeds
        if calls is not None:
            calls.append((list(class_sets), list(seeds)))
        images = torch.stack([torch.full((1, size, size), s / 1000.0) for s in seeds])
        labels = torch.zeros(len(seeds), 1, size, size)
        for i, classes in enumerate(class_sets):
            for row, c in enumerate(classes):
                labels[i, 0, row] = c
        return images, labels

    return generate


class RecordingWriter:
    """Keeps the last value of every TensorBoard tag."""

    def __init__(self) -> None:
        self.scalars: dict = {}
        self.texts: dict = {}
        self.images: dict = {}

    def add_scalar(self, tag, value, step) -> None:
        self.scalars[tag] = value

    def add_text(self, tag, text, step) -> None:
        self.texts[tag] = text

    def add_image(self, tag, image, step, dataformats="CHW") -> None:
        self.images[tag] = (image, dataformats)


def engine_at(epoch: int = 1, max_epochs: int = 5) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.max_epochs, engine.state.iteration = epoch, max_epochs, epoch * 10
    return engine


def test_ensemble_loss_is_the_members_mean_and_prediction_the_mean_probability():
    torch.manual_seed(0)
    ensemble = DeepEnsemble(lambda: nn.Conv2d(1, 3, 3, padding=1), num_members=3)
    images = torch.rand(2, 1, 6, 6)
    labels = torch.randint(0, 3, (2, 1, 6, 6)).float()
    member_logits = ensemble.train()(images)
    assert member_logits.shape == (3, 2, 3, 6, 6)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    expected = sum(dice_ce(member(images), labels) for member in ensemble.members) / 3
    torch.testing.assert_close(MemberMeanLoss(dice_ce)(member_logits, labels), expected)
    mean_probability = torch.stack([torch.softmax(m(images), dim=1) for m in ensemble.members]).mean(dim=0)
    with torch.no_grad():
        output = ensemble.eval()(images)
    torch.testing.assert_close(torch.softmax(output, dim=1), mean_probability)
    assert torch.equal(output.argmax(dim=1), mean_probability.argmax(dim=1))
    torch.testing.assert_close(MemberMeanLoss(dice_ce)(output, labels), dice_ce(output, labels))


def test_ue_c_is_the_mean_member_variance_over_pixels_predicted_as_c():
    loader = [{"image": torch.zeros(3, 1, 1, 2)}, {"image": torch.zeros(1, 1, 1, 2)}]
    handler = GAUDAHandler(fake_generator(), loader, two_member_ensemble(), num_classes=3)
    uncertainty = handler.compute_uncertainty()
    assert math.isnan(uncertainty[0])
    torch.testing.assert_close(uncertainty[1:], torch.tensor([0.01, 0.0225], dtype=torch.float64))


def test_mc_dropout_network_gives_ue_c_for_predicted_classes():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Dropout(0.5), nn.Conv2d(8, 3, 1))
    loader = [{"image": torch.rand(2, 1, 4, 4)}]
    uncertainty = GAUDAHandler(fake_generator(), loader, network, num_classes=3, num_passes=8).compute_uncertainty()
    predicted = ~torch.isnan(uncertainty)
    assert predicted.any() and (uncertainty[predicted] > 0).all()


def test_top_k_skips_background_and_nan_most_uncertain_first():
    uncertainty = torch.tensor([0.9, 0.1, float("nan"), 0.5, 0.3, 0.3])
    assert top_k_uncertain_classes(uncertainty, 3) == [3, 4, 5]
    assert top_k_uncertain_classes(uncertainty, 10) == [3, 4, 5, 1]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("single", [[3], [5], [3], [5], [3]]),
        ("together", [[3, 5]] * 5),
        ("observed", [[3, 4], [5], [3, 4], [5], [3, 4]]),
    ],
)
def test_refresh_asks_the_generator_for_the_top_k_classes_in_batches(mode, expected):
    calls: list = []
    handler = GAUDAHandler(
        fake_generator(calls),
        [],
        nn.Identity(),
        num_classes=6,
        top_k=2,
        num_synthetic=5,
        synthesis_batch_size=2,
        class_set_mode=mode,
        seed=100,
    )
    handler.observed_class_sets = {(1,), (3, 4)}  # class 5 was never seen in training: asked alone
    handler.compute_uncertainty = lambda: torch.tensor([1.0, 0.1, float("nan"), 0.9, 0.2, 0.5], dtype=torch.float64)
    handler.summary_writer = writer = RecordingWriter()
    handler.replaced_since_refresh = 7
    handler.refresh(engine_at(epoch=1))
    assert handler.chosen_classes == [3, 5]
    assert writer.scalars["gauda/ue_class_3"] == 0.9 and "gauda/ue_class_2" not in writer.scalars
    assert writer.scalars["gauda/replaced"] == 7 and handler.replaced_since_refresh == 0
    assert writer.texts["gauda/chosen_classes"] == "3 (class_3), 5 (class_5)"
    assert [len(sets) for sets, _ in calls] == [2, 2, 1]
    assert [s for sets, _ in calls for s in sets] == expected
    assert [seed for _, seeds in calls for seed in seeds] == list(range(100, 105))
    assert handler.pool_images.shape == (5, 1, 8, 8)
    assert set(handler.pool_by_class) == {3, 5}  # class 4 shows up in a condition but was not chosen
    picture, layout = writer.images["gauda/synthetic_pool"]  # the new pool, pair by pair: image | mask overlay
    assert layout == "HWC" and picture.shape == (2 + 8 + 2, 5 * (17 + 2) + 2, 3)
    calls.clear()
    handler.refresh(engine_at(epoch=5))  # after the last epoch nothing would use a new pool
    assert not calls


def test_replacement_at_rate_p_only_for_samples_of_synthesised_classes_image_and_label_together():
    p = 0.3
    handler = GAUDAHandler(fake_generator(), [], nn.Identity(), num_classes=5, replace_prob=p, seed=1)
    handler.synthesise([[3], [3, 4], [4]])
    engine = engine_at()
    assert handler.pool_by_class == {3: [0, 1], 4: [1, 2]}
    eligible, replaced = 0, 0
    for _ in range(200):
        labels = torch.zeros(10, 1, 8, 8)
        labels[:5, 0, 0, 0] = 3  # samples 0-4 show class 3 (synthesised), 5-9 only class 1 (not synthesised)
        labels[5:, 0, 0, 0] = 1
        images = torch.full((10, 1, 8, 8), -1.0)
        engine.state.batch = {"image": images, "label": labels}
        handler.replace_samples(engine)
        out_images, out_labels = engine.state.batch["image"], engine.state.batch["label"]
        assert (out_images[5:] == -1).all() and torch.equal(out_labels[5:], labels[5:])
        for i in range(5):
            eligible += 1
            if out_images[i, 0, 0, 0] == -1:
                assert torch.equal(out_labels[i], labels[i])
                continue
            replaced += 1
            j = round(float(out_images[i, 0, 0, 0]) * 1000) - handler.seed  # pool pair j was drawn from seed + j
            assert torch.equal(out_images[i], handler.pool_images[j])
            assert torch.equal(out_labels[i], handler.pool_labels[j])
            assert 3 in handler.pool_conditions[j]
    assert abs(replaced / eligible - p) < 0.04  # 1000 Bernoulli(0.3) draws: std 0.0145
    assert handler.replaced_total == replaced


def test_no_replacement_before_the_first_pool_but_class_sets_are_recorded():
    handler = GAUDAHandler(fake_generator(), [], nn.Identity(), num_classes=5, replace_prob=1.0)
    labels = torch.zeros(2, 1, 8, 8)
    labels[0, 0, 0, :2] = torch.tensor([2.0, 4.0])
    engine = engine_at()
    engine.state.batch = {"image": torch.zeros(2, 1, 8, 8), "label": labels}
    handler.replace_samples(engine)
    assert handler.replaced_total == 0
    assert handler.observed_class_sets == {(2, 4), ()}


def test_gauda_refuses_to_run_without_validation_pairs():
    handler = GAUDAHandler(fake_generator(), [], nn.Identity(), num_classes=3)
    with pytest.raises(ValueError, match="validation pairs"):
        handler.attach(Engine(lambda e, b: None))


def test_adaptive_sampling_moves_weights_towards_poorly_scored_classes():
    sampler = WeightedRandomSampler(torch.ones(4, dtype=torch.float64), num_samples=4000, replacement=True)
    weights = sampler.weights
    handler = AdaptiveSamplingHandler(
        sampler, [[1], [2], [1, 2], []], ["val_dice_a", "val_dice_b"], momentum=0.5, uniform_mix=0.0
    )
    torch.testing.assert_close(sampler.weights, torch.full((4,), 0.25, dtype=torch.float64))
    evaluator = Engine(lambda e, b: None)
    handler.attach(evaluator)
    evaluator.state.metrics = {"val_dice_a": 0.9, "val_dice_b": 0.1}
    evaluator.fire_event(Events.COMPLETED)
    torch.testing.assert_close(handler.class_weights[1:], torch.tensor([0.55, 0.95], dtype=torch.float64))
    assert sampler.weights is weights  # updated in place
    w = sampler.weights
    assert w[1] > w[0] and w[2] == w[1] and w[3] == w[0]  # a background-only mask gets the smallest class weight
    for _ in range(10):
        handler.update([0.9, 0.1])
    torch.testing.assert_close(
        handler.class_weights[1:], torch.tensor([0.1, 0.9], dtype=torch.float64), atol=1e-3, rtol=0
    )
    torch.manual_seed(0)
    counts = np.bincount(list(iter(sampler)), minlength=4)
    assert counts[1] > 4 * counts[0]
    handler.update([float("nan"), 0.5])  # a class without a score keeps its weight
    assert handler.class_weights[1] == pytest.approx(0.1, abs=1e-3)


def test_adaptive_sampling_does_not_upweight_a_class_no_validation_mask_shows():
    """MONAI's MeanDice reports 0 for a class absent from every validation mask: that is no evidence of errors."""
    sampler = WeightedRandomSampler(torch.ones(3, dtype=torch.float64), num_samples=30, replacement=True)
    names = ["val_dice_a", "val_dice_b"]
    handler = AdaptiveSamplingHandler(sampler, [[1], [2], []], names, validation_classes=[[1], []], momentum=0.5)
    handler.update([0.8, 0.0])
    torch.testing.assert_close(handler.class_weights[1:], torch.tensor([0.6, 1.0], dtype=torch.float64))
    everything = AdaptiveSamplingHandler(sampler, [[1], [2], []], names, momentum=0.5)
    everything.update([0.8, 0.0])  # without validation classes every class is scored
    torch.testing.assert_close(everything.class_weights[1:], torch.tensor([0.6, 1.0], dtype=torch.float64))
    everything.update([0.8, 0.0])
    assert everything.class_weights[2] == 1.0 and handler.class_weights[2] == 1.0
    handler.update([0.8, 0.5])
    assert handler.class_weights[2] == 1.0  # class b is never scored: no validation mask shows it


def test_sample_class_sets_are_the_classes_of_each_mask_file():
    pairs = load_splits(None)["train"][:4]
    expected = [sorted(int(v) for v in np.unique(np.asarray(Image.open(p["label"]))) if v > 0) for p in pairs]
    assert sample_class_sets(pairs, num_classes=5) == expected


def test_crop_flip_rotate_moves_image_and_label_together():
    label = torch.zeros(1, 32, 32)
    label[:, 4:20, 2:14] = 2
    image = label / 4
    identity = crop_flip_rotate_augmentation(32, prob=0.0)({"image": image, "label": label})
    assert torch.equal(torch.as_tensor(identity["image"]), image)
    out = crop_flip_rotate_augmentation(32, prob=1.0)({"image": image.clone(), "label": label.clone()})
    out_image, out_label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
    assert out_image.shape == out_label.shape == (1, 32, 32)
    assert set(out_label.unique().tolist()) <= {0.0, 2.0}
    assert ((out_image > 0.25) == (out_label > 0)).float().mean() > 0.95
    assert out_label[..., 16:].sum() > out_label[..., :16].sum()  # the left-side square was flipped to the right


def _files(scheme: str) -> list[str]:
    return [BASELINE] + ([] if scheme == "baseline" else [str(CONFIGS / f"train_downstream_{scheme}.json")])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_downstream_configs_parse(scheme):
    parser = ConfigParser()
    parser.read_config(_files(scheme))
    parser.update({"ensemble_size": 2, "channels": [4, 8, 16, 32]})
    assert parser.get_parsed_content("scheme") == scheme
    assert parser.get_parsed_content("ckpt_name") == f"model_downstream_{scheme}.pt"
    network = parser.get_parsed_content("network_def")()
    assert isinstance(network, DeepEnsemble) and len(network.members) == 2
    assert isinstance(parser.get_parsed_content("loss"), MemberMeanLoss)
    if scheme == "gauda":
        assert parser["generator"]["_target_"] == "gauda.generator.load_generator"
        assert parser["generator_steps"] is None  # the sampler's own default: 50 DDIM steps, every DDPM step
        assert parser["train#handlers"][-1] == "@gauda_handler"
    if scheme == "as":
        assert parser["validate#handlers"][-1] == "@adaptive_sampling"
    parser["num_labelled"] = 4
    cached = parser.get_parsed_content("train#dataset")._cache  # loaded and resized once, augmented at every draw
    assert len(cached) == 3 and all(item["image"].shape == item["label"].shape == (1, 64, 64) for item in cached)


def _tiny_run(tmp_path) -> dict:
    """Overrides for a few iterations of a tiny ensemble, writing under ``tmp_path``."""
    return {
        "channels": [4, 8, 16, 32],
        "ensemble_size": 2,
        "num_workers": 0,
        "max_iterations": 4,
        "val_interval": 2,
        "batch_size": 4,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
    }


@pytest.mark.engine
@pytest.mark.parametrize("scheme", SCHEMES)
def test_downstream_scheme_trains_a_few_iterations(scheme, tmp_path):
    overrides = _tiny_run(tmp_path)
    if scheme == "gauda":
        overrides.update(gauda_replace_prob=1.0, gauda_num_synthetic=4, gauda_synthesis_batch_size=2)
        overrides["generator"] = fake_generator(size=64)
    workflow = ConfigWorkflow(config_file=_files(scheme), workflow_type="train", logging_file=False, **overrides)
    workflow.initialize()
    losses: list[float] = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    workflow.run()
    workflow.finalize()
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    checkpoint = tmp_path / "models" / f"model_downstream_{scheme}.pt"
    assert isinstance(load_network(str(checkpoint), image_size=64), DeepEnsemble)  # its card rebuilds it
    if scheme == "gauda":
        handler = workflow.parser.get_parsed_content("gauda_handler")
        assert handler.chosen_classes and handler.replaced_total > 0
    if scheme == "as":
        weights = workflow.parser.get_parsed_content("adaptive_sampling").sampler.weights
        assert not torch.allclose(weights, weights[0].expand_as(weights))


def smoke_trained_generator(folder: Path) -> Path:
    """The GAUDA bundle's generator trained with its smoke knobs (a few iterations): real checkpoints and cards."""
    knobs = json.loads((CONFIGS / "evaluate.json").read_text())["smoke_knobs"]["train"]
    models = folder / "models"
    run_workflow(str(CONFIGS / "train.json"), bundle_root=str(CONFIGS.parent), ckpt_dir=str(models), knobs=knobs)
    return models


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_gauda_scheme_runs_with_the_bundle_generator(tmp_path, sampler):
    """The `generator` id builds the bundle's generator from inference.json and the loop trains with its pairs; with
    DDPM the generator runs every training step (a shorter DDPM chain would end far from t = 0)."""
    models = smoke_trained_generator(tmp_path)
    overrides = {
        **_tiny_run(tmp_path),
        "generator_ckpt_dir": str(models),
        "generator_sampler": sampler,
        "generator_steps": 2 if sampler == "ddim" else None,
        "gauda_num_synthetic": 2,
        "gauda_synthesis_batch_size": 2,
        "gauda_replace_prob": 1.0,
    }
    workflow = ConfigWorkflow(config_file=_files("gauda"), workflow_type="train", logging_file=False, **overrides)
    workflow.initialize()
    generator = workflow.parser.get_parsed_content("generator")
    assert generator.loop.num_inference_steps == (2 if sampler == "ddim" else 1000)
    if sampler == "ddpm":
        return  # the step count is what went wrong; sampling 1000 steps is left to the measured runs
    workflow.run()
    workflow.finalize()
    handler = workflow.parser.get_parsed_content("gauda_handler")
    assert handler.pool_images.shape == (2, 1, 64, 64) and handler.replaced_total > 0
    assert float(handler.pool_images.min()) >= 0.0 and float(handler.pool_images.max()) <= 1.0


def test_bayesian_segmenter_is_an_ensemble_or_one_dropout_network():
    def member(dropout: float = 0.0):
        return lambda: UNet(2, 1, 3, channels=(4, 8), strides=(2,), dropout=dropout)

    ensemble = bayesian_segmenter(member(), "ensemble", num_members=3)
    assert isinstance(ensemble, DeepEnsemble) and len(ensemble.members) == 3
    single = bayesian_segmenter(member(0.2), "mc_dropout")
    assert isinstance(single, UNet)
    torch.manual_seed(0)
    images = torch.rand(1, 1, 16, 16)
    assert not torch.equal(single.train()(images), single(images))  # dropout active in MC passes
    with pytest.raises(ValueError, match="dropout"):
        bayesian_segmenter(member(0.0), "mc_dropout")
    with pytest.raises(ValueError, match="kind"):
        bayesian_segmenter(member(), "laplace")


def test_downstream_baseline_builds_an_mc_dropout_unet_on_request():
    parser = ConfigParser()
    parser.read_config(_files("baseline"))
    parser.update({"bayesian_model": "mc_dropout", "channels": [4, 8, 16, 32]})
    network = parser.get_parsed_content("network_def")()
    assert not isinstance(network, DeepEnsemble)
    assert any(isinstance(m, nn.Dropout) and m.p == pytest.approx(0.2) for m in network.modules())


@pytest.mark.slow
@pytest.mark.engine
def test_multi_gpu_override_trains_a_scheme_with_two_cpu_processes(tmp_path):
    """torchrun, 2 processes, gloo: the deep ensemble in DDP; rank 0 writes one checkpoint that fits its card."""
    overrides = {**_tiny_run(tmp_path), "max_iterations": 4}
    config = json.dumps([*_files("baseline"), str(CONFIGS / "multi_gpu_train_downstream.json")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "monai.bundle", "run", "--config_file", config]
    command += [arg for key, value in overrides.items() for arg in (f"--{key}", json.dumps(value))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    network = load_network(str(tmp_path / "models" / "model_downstream_baseline.pt"), image_size=64)
    assert isinstance(network, DeepEnsemble) and len(network.members) == 2
