"""DiffuseExpand: the pair encoding of both modes, the training items, the noise-aware segmenter's loss, the
generator on tiny networks, and the bundle end to end on phantoms (stages I and II, inference with the Dice filter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffuseexpand.encoding import IMAGE_MODE, MASK_MODE, NULL_CONDITION, PairEncoding
from diffuseexpand.generator import DiffuseExpandGenerator
from diffuseexpand.items import RandModeItemd
from diffuseexpand.segmenter import NoiseAwareSegmenter, NoiseAwareSegmenterLoss, NoisySamplesPrepareBatch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.handlers import from_engine
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from monai.utils import set_determinism
from PIL import Image

from common.bundles import find_bundles, find_methods
from common.checkpoints import load_matching_weights, read_card
from common.data import phantom_dataset
from common.generation import JobBatch
from common.sampling.dpm_solver import DPMSolverMultistepScheduler
from common.stages import profile_files, run_workflow
from scripts.augment import augment
from scripts.evaluate import evaluate

SIZE = 16


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_masks_and_images_round_trip_through_the_encoding(num_classes):
    encoding = PairEncoding(num_classes)
    assert encoding.channels == max(1, num_classes - 1)
    label = torch.randint(0, num_classes, (3, 1, 8, 8))
    encoded = encoding.encode_mask(label)
    assert encoded.shape == (3, encoding.channels, 8, 8) and set(encoded.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(encoding.decode_mask(encoded), label)
    assert torch.equal(encoding.decode_mask(encoded + 0.3 * torch.randn_like(encoded).clamp(-1, 1) * 0.9), label)
    image = torch.rand(3, 1, 8, 8)
    sample = encoding.encode_image(image)
    assert sample.shape == encoded.shape and sample[:, 1:].abs().sum() == 0
    torch.testing.assert_close(encoding.decode_image(sample), image)
    assert not (encoded == NULL_CONDITION).any()  # the null condition is no mask's encoding


def test_items_draw_a_mode_and_carry_the_mask_only_as_an_image_s_condition():
    encoding = PairEncoding(4)
    label = torch.randint(0, 4, (1, 8, 8)).float()
    image = torch.rand(1, 8, 8)
    transform = RandModeItemd(num_classes=4, image_prob=0.5)
    transform.set_random_state(0)
    modes = []
    for _ in range(200):
        item = transform({"image": image, "label": label})
        modes.append(int(item["mode"]))
        mask = encoding.encode_mask(label[None])[0]
        if item["mode"] == IMAGE_MODE:
            torch.testing.assert_close(item["image"], encoding.encode_image(image[None])[0])
            torch.testing.assert_close(item["condition"], mask)
        else:
            torch.testing.assert_close(item["image"], mask)
            assert (item["condition"] == NULL_CONDITION).all()
        assert torch.equal(item["label"], label)
    assert 0.4 < np.mean(modes) < 0.6 and set(modes) == {MASK_MODE, IMAGE_MODE}


def test_the_segmentation_loss_reads_image_samples_only_and_the_mode_loss_all():
    loss = NoiseAwareSegmenterLoss(num_classes=3)
    output = torch.randn(4, 4, 8, 8)
    label = torch.randint(0, 3, (4, 1, 8, 8)).float()
    mode = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(-1, 1, 1, 1).expand_as(label)
    base = loss(output, torch.cat([label, mode], 1))
    other = label.clone()
    other[1], other[3] = 2 - other[1], 2 - other[3]  # the masks of mask samples are not a segmentation target
    torch.testing.assert_close(loss(output, torch.cat([other, mode], 1)), base)
    other[0] = 2 - other[0]
    assert not torch.allclose(loss(output, torch.cat([other, mode], 1)), base)
    masks_only = torch.zeros_like(mode)
    mode_logit = output[:, 3].mean(dim=(-2, -1))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(mode_logit, torch.zeros(4))
    torch.testing.assert_close(loss(output, torch.cat([label, masks_only], 1)), expected)


def test_segmenter_batches_are_noised_samples_with_their_targets():
    scheduler = DDPMScheduler(1000)
    batch = {"image": torch.rand(2, 2, 8, 8), "label": torch.ones(2, 1, 8, 8), "mode": torch.tensor([1, 0])}
    inputs, target, args, kwargs = NoisySamplesPrepareBatch(scheduler)(batch)
    assert inputs.shape == (2, 2, 8, 8) and not torch.equal(inputs, batch["image"])
    assert target.shape == (2, 2, 8, 8) and target[0, 1].eq(1).all() and target[1, 1].eq(0).all()
    assert args == () and kwargs["timesteps"].shape == (2,)


def tiny_networks(num_classes: int = 3) -> tuple[DiffusionModelUNet, NoiseAwareSegmenter]:
    torch.manual_seed(0)
    channels = PairEncoding(num_classes).channels
    network = DiffusionModelUNet(
        spatial_dims=2, in_channels=2 * channels, out_channels=channels, channels=(8, 8),
        attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8, num_class_embeds=2,
    )  # fmt: skip
    segmenter = NoiseAwareSegmenter(
        num_classes, channels, channels=(8, 8), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8
    )
    with torch.no_grad():  # MONAI zero-initialises the output convolutions
        for parameter in [*network.parameters(), *segmenter.parameters()]:
            if not parameter.any():
                parameter.normal_(std=0.2)
    return network.eval(), segmenter.eval()


def test_generator_makes_pairs_that_depend_on_their_seed_alone_and_on_the_guidance():
    network, segmenter = tiny_networks()
    scheduler = DPMSolverMultistepScheduler(1000)

    def generator(**kwargs):
        return DiffuseExpandGenerator(network, segmenter, scheduler, 3, SIZE, num_inference_steps=4, **kwargs)

    images, labels = generator()(JobBatch(seeds=[3, 4, 5]))
    assert images.shape == labels.shape == (3, 1, SIZE, SIZE)
    assert images.min() >= 0 and images.max() <= 1 and set(labels.unique().tolist()) <= {0, 1, 2}
    alone, alone_labels = generator()(JobBatch(seeds=[4]))
    torch.testing.assert_close(alone, images[1:2], atol=1e-5, rtol=0)  # a pair is its seed's, in any batch
    assert torch.equal(alone_labels, labels[1:2])
    guided, _ = generator(scale=50.0, temperature=0.5)(JobBatch(seeds=[3, 4, 5]))
    unguided, _ = generator(scale=0.0)(JobBatch(seeds=[3, 4, 5]))
    assert not torch.allclose(guided, unguided)
    with pytest.raises(ValueError, match="noise-aware segmenter"):
        DiffuseExpandGenerator(network, None, scheduler, 3, SIZE)
    with pytest.raises(ValueError, match="epsilon"):
        DiffuseExpandGenerator(network, segmenter, DDPMScheduler(1000, prediction_type="v_prediction"), 3, SIZE)


def test_the_mask_step_runs_its_own_scheduler_and_steps_and_a_given_mask_skips_it():
    network, segmenter = tiny_networks()
    calls = {MASK_MODE: 0, IMAGE_MODE: 0}

    def count(module, args, kwargs):
        modes = kwargs["class_labels"]
        calls[int(modes[0])] += 1

    hook = network.register_forward_pre_hook(count, with_kwargs=True)
    generator = DiffuseExpandGenerator(
        network, segmenter, DPMSolverMultistepScheduler(1000), 3, SIZE, num_inference_steps=4,
        mask_scheduler=DDPMScheduler(50, clip_sample=True), mask_inference_steps=50,
    )  # fmt: skip
    _, labels = generator(JobBatch(seeds=[1, 2]))
    hook.remove()
    assert calls == {MASK_MODE: 50, IMAGE_MODE: 4} and labels.shape == (2, 1, SIZE, SIZE)
    same = DiffuseExpandGenerator(network, segmenter, DPMSolverMultistepScheduler(1000), 3, SIZE, num_inference_steps=4)
    assert same.mask_scheduler is same.scheduler and same.mask_loop.num_inference_steps == 4
    given = torch.zeros(2, 1, SIZE, SIZE, dtype=torch.long)
    given[:, :, 2:6, 3:9] = 2
    calls.update({MASK_MODE: 0, IMAGE_MODE: 0})
    hook = network.register_forward_pre_hook(count, with_kwargs=True)
    images, kept = generator(JobBatch(seeds=[1, 2], labels=given))  # a mask given: the image step alone
    hook.remove()
    assert calls == {MASK_MODE: 0, IMAGE_MODE: 4} and torch.equal(kept, given) and images.shape == given.shape


TINY = {
    "ddpm_iterations": 60,
    "segmenter_iterations": 40,
    "batch_size": 8,
    "log_interval": 10,
    "picture_steps": 2,
    "network_def#channels": [8, 8, 8],
    "network_def#num_head_channels": [0, 0, 8],
    "network_def#norm_num_groups": 8,
    "segmenter_def#channels": [8, 8, 8],
    "segmenter_def#num_head_channels": 8,
    "segmenter_def#norm_num_groups": 8,
}


def _run_stage(files: list, overrides: dict) -> list[float]:
    """Run one stage's layered configs as ``monai.bundle run`` does; the loss of every iteration."""
    losses: list[float] = []
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files], logging_file=False, workflow_type="train", **overrides
    )
    workflow.initialize()
    workflow.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output)))
    )
    workflow.run()
    workflow.finalize()
    return losses


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.usefixtures("single_torch_thread")
def test_bundle_trains_both_stages_with_falling_losses_and_writes_filtered_pairs(tmp_path):
    bundle = find_methods()["diffuseexpand"]
    configs = bundle.root / "configs"
    models = tmp_path / "models"
    shared = {"bundle_root": str(bundle.root), "ckpt_dir": str(models), "num_labelled": 12, **TINY}
    set_determinism(0)
    ddpm = _run_stage([configs / "train_ddpm.json"], shared)
    guide = _run_stage([configs / "train_ddpm.json", configs / "train_noise_segmenter.json"], shared)
    set_determinism(None)
    assert len(ddpm) == TINY["ddpm_iterations"] and len(guide) == TINY["segmenter_iterations"]
    first, last = np.mean(ddpm[:10]), np.mean(ddpm[-10:])
    assert last < 0.9 * first, f"DDPM loss did not fall: first 10 mean {first:.3f}, last 10 mean {last:.3f}"
    first, last = np.mean(guide[:10]), np.mean(guide[-10:])
    assert last < 0.9 * first, f"segmenter loss did not fall: first 10 mean {first:.3f}, last 10 mean {last:.3f}"
    settings = read_card(str(models / "model.pt"))["settings"]
    assert settings["prediction_type"] == "epsilon" and settings["num_classes"] == 5 and settings["image_size"] == 32

    segmentation = find_bundles()["segmentation"]
    run_workflow(
        segmentation.config("train"),
        bundle_root=str(segmentation.root),
        ckpt_dir=str(models),
        ckpt_name="model_segmenter.pt",
        image_size=32,
        num_labelled=12,
        channels=[8, 16, 32, 64],
        max_iterations=4,
        val_interval=2,
        num_workers=0,
    )
    out = tmp_path / "synthetic"
    eta = 0.5
    run_workflow(
        bundle.config("inference"),
        "infer",
        bundle_root=str(bundle.root),
        ckpt_dir=str(models),
        output_dir=str(out),
        num_labelled=12,
        num_pairs=6,
        num_inference_steps=3,
        segmenter_ckpt=str(models / "model_segmenter.pt"),
        eta=eta,
        progress=False,
    )
    written = json.loads((out / "datalist.json").read_text())
    assert written["method"] == "diffuseexpand" and written["config"]["sampler"] == "sde_dpm_solver"
    assert len(written["training"]) + written["dropped"] == 6
    for entry in written["training"]:
        assert (entry["status"], entry["score"] < eta) in {("kept", True), ("relabelled", False)}
        assert entry["score"] < 2 * eta
        image = np.asarray(Image.open(out / entry["image"]))
        label = np.asarray(Image.open(out / entry["label"]))
        assert image.shape == label.shape == (32, 32) and label.max() < 5


def test_a_pretrained_checkpoint_gives_the_weights_that_fit_and_names_the_rest(tmp_path, caplog):
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 2, "channels": (8, 8), "attention_levels": (False, False), "num_res_blocks": 1}
    pretrained = DiffusionModelUNet(in_channels=3, out_channels=3, norm_num_groups=8, **kwargs)  # e.g. an RGB DDPM
    path = tmp_path / "pretrained.pt"
    torch.save(pretrained.state_dict(), path)
    ours = DiffusionModelUNet(in_channels=4, out_channels=2, norm_num_groups=8, num_class_embeds=2, **kwargs)
    fresh = {k: v.clone() for k, v in ours.state_dict().items()}
    with caplog.at_level("INFO"):
        load_matching_weights(ours, str(path))
    after, source = ours.state_dict(), pretrained.state_dict()
    for key, value in after.items():
        fits = key in source and source[key].shape == value.shape
        assert torch.equal(value, source[key] if fits else fresh[key]), key
    assert "conv_in.conv.weight" in caplog.text and "out.2.conv.weight" in caplog.text  # the ones that did not fit
    assert load_matching_weights(ours, None) is ours
    with pytest.raises(FileNotFoundError, match="pretrained checkpoint not found"):
        load_matching_weights(ours, str(tmp_path / "missing.pt"))


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.usefixtures("single_torch_thread")
def test_augment_and_evaluate_take_diffuseexpand_as_any_method(tmp_path):
    data = phantom_dataset(root=str(tmp_path / "data"), image_size=32, num_images=30)
    datalist = augment(
        "diffuseexpand",
        data=data,
        labelled=6,  # no image_size: the bundle's own, 32 px
        out=str(tmp_path / "run"),
        train_knobs={**TINY, "ddpm_iterations": 2, "segmenter_iterations": 2},
        segmenter_knobs={"max_iterations": 4, "val_interval": 2, "num_workers": 0, "channels": [8, 16, 32, 64]},
        num_pairs=4,
        num_inference_steps=2,
        mask_sampler="dpm_solver",
        mask_inference_steps=2,
        eta=10.0,  # an untrained filter segmenter: keep everything, so the evaluation has pairs to add
        progress=False,
    )
    written = json.loads(Path(datalist).read_text())
    assert written["method"] == "diffuseexpand" and len(written["training"]) == 4
    assert all(entry["status"] == "kept" for entry in written["training"])
    assert written["config"]["image_size"] == 32
    assert Image.open(Path(datalist).parent / written["training"][0]["label"]).size == (32, 32)
    assert (tmp_path / "run" / "models" / "model_segmenter.pt").is_file()  # the filter's segmenter was trained
    results = evaluate(
        data=data, labelled=6, image_size=32, synthetic=[datalist], seeds=2, iterations=2, val_interval=2,
        knobs={"channels": [4, 8, 16, 32], "num_workers": 0, "batch_size": 4}, out=str(tmp_path / "ev"),
    )  # fmt: skip
    name = "diffuseexpand (run)"
    assert {f"real + {name}", f"real + classic aug + {name} control: extra real copies"} <= set(results["arms"])
    assert results["generator_quality"][name]["num_synthetic"] == 4


def test_paper_profile_is_the_guided_diffusion_256_network_and_the_paper_s_sampling():
    configs = find_methods()["diffuseexpand"].root / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / f) for f in ("train_ddpm.json", "train_noise_segmenter.json", "paper.json")])
    with torch.device("meta"):  # shapes only: the 526 M weights are never allocated
        network = parser.get_parsed_content("network_def")()
        segmenter = parser.get_parsed_content("segmenter_def")()
        sample = torch.zeros(1, network.in_channels // 2, 256, 256)
        out = network(
            torch.cat([sample, sample], 1),
            torch.zeros(1, dtype=torch.long),
            class_labels=torch.zeros(1, dtype=torch.long),
        )
        assert out.shape == sample.shape
        assert segmenter(sample, torch.zeros(1, dtype=torch.long))[0].shape[-2:] == (256, 256)
    assert 4e8 < sum(p.numel() for p in network.parameters()) < 7e8  # guided-diffusion 256 px: about 550 M
    sampling = ConfigParser()
    sampling.read_config([str(configs / "inference.json"), *profile_files(str(configs.parent), "paper", "inference")])
    assert [sampling[k] for k in ("sampler", "mask_sampler", "eta")] == ["dpm_solver", "dpm_solver", 0.065]
