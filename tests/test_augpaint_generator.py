"""AugPaint's generator on phantom pairs: the kept region, the paper's flips, the conditional variant, and the bundle's
inference config on checkpoints with cards (and the clear errors when a card does not fit)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from augpaint.inpainter import LatentInpainter
from errors import raises_through_bundle
from monai.bundle import ConfigWorkflow
from monai.data import load_decathlon_datalist
from monai.networks.schedulers import DDIMScheduler
from phantom_pairs import load_pair
from tiny_networks import NOISE_SCHEDULE, tiny_checkpoint, tiny_unet_definition, tiny_vqvae_definition

from common.data import load_splits, phantom_dataset, read_orientation
from common.data.laterality import Orientation, seeded_flips
from common.evaluation.controls import make_control_set
from common.generation import GenerationRun, JobBatch, jobs_from_pairs
from common.regions import keep_mask, regenerated_fraction, to_latent_grid

SIZE = 32
NUM_CLASSES = 5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(pair: dict) -> dict[str, torch.Tensor]:
    return load_pair(pair, SIZE)


class PixelShuffleAutoencoder(torch.nn.Module):
    """f=4 autoencoder whose decoder is the exact inverse of its encoder (space-to-depth and back)."""

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 4)

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, 4)


class Wobble(torch.nn.Module):
    """A deterministic stand-in noise predictor; records the channel count it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.input_channels: list[int] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None) -> torch.Tensor:
        self.input_channels.append(x.shape[1])
        return torch.sin(3 * x[:, :16])


def exact_inpainter(**kwargs) -> LatentInpainter:
    scheduler = DDIMScheduler(1000, "scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    return LatentInpainter(PixelShuffleAutoencoder(), Wobble(), scheduler, 3, scale_factor=2.0, **kwargs)


def run(pairs, output_dir, inpainter, num_samples=2, seed=10) -> list[dict]:
    path = GenerationRun(
        jobs_from_pairs(pairs, num_samples, seed),
        inpainter,
        str(output_dir),
        "augpaint",
        image_size=SIZE,
        progress=False,
    ).run()
    return load_decathlon_datalist(path, data_list_key="training")


def known_pixels(label: torch.Tensor) -> torch.Tensor:
    """The pixels of the latent cells the box keep mask touches (what the latent sampler keeps)."""
    known = to_latent_grid(keep_mask(label[None].long()), (SIZE // 4, SIZE // 4))
    return known.repeat_interleave(4, -2).repeat_interleave(4, -1)[0].bool()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_known_region_is_the_source_image_and_the_rest_changes_with_the_seed(pairs, tmp_path, eta):
    entries = run(pairs, tmp_path, exact_inpainter(mask_mode="box", eta=eta))
    assert len(entries) == 6
    for first, second in zip(entries[0::2], entries[1::2], strict=True):  # the two samples of one source pair
        source = load({"image": first["source_image"], "label": first["source_label"]})
        known = known_pixels(source["label"])
        assert known.any() and not known.all()
        a, b = load(first), load(second)
        assert torch.equal(a["label"], source["label"])  # the new pair keeps the source mask
        assert (a["image"][known] - source["image"][known]).abs().max() <= 1 / 255 + 1e-6  # kept up to 8-bit rounding
        assert (b["image"][known] - source["image"][known]).abs().max() <= 1 / 255 + 1e-6
        assert (a["image"][~known] - b["image"][~known]).abs().mean() > 0.05  # regenerated differently per seed


def test_flips_move_the_kept_structures_with_their_masks(pairs, tmp_path):
    """The paper's flips: the pair is flipped before inpainting, so the kept region and the mask move together."""
    entries = run(pairs[:1], tmp_path, exact_inpainter(flip=True), num_samples=6, seed=0)
    with open(tmp_path / "datalist.json") as f:
        seeds = [e["seed"] for e in json.load(f)["training"]]
    source = load(pairs[0])
    masks = set()
    for entry, seed in zip(entries, seeds, strict=True):
        written = load(entry)
        image, label = seeded_flips(source["image"][None], source["label"][None], [seed], Orientation())
        assert torch.equal(written["label"], label[0])  # the mask is the flipped source mask
        known = known_pixels(label[0])
        assert (written["image"][known] - image[0][known]).abs().max() <= 1 / 255 + 1e-6  # kept at its new place
        masks.add(tuple(written["label"].flatten().tolist()))
    assert len(masks) > 1


def test_flips_keep_lateral_classes_on_their_sides_and_the_control_flips_alike(tmp_path):
    """On data with a lateral pair the paper's flips mirror the pair and swap the pair's labels, so the right lobe
    stays on the image's left; the inpainting control rebuilds the same flipped pair from the orientation the set
    records."""
    data = phantom_dataset(tmp_path / "data", image_size=SIZE, num_images=12, layout="lateral")
    orientation = read_orientation(data)
    pairs = load_splits(data, seed=0, num_labelled=4)["train"]
    config = {"flip": True, "mask_mode": "box", "box_margin": 0, "orientation": orientation.to_dict()}
    out = tmp_path / "synthetic"
    inpainter = exact_inpainter(flip=True, orientation=orientation)
    datalist = GenerationRun(
        jobs_from_pairs(pairs, 4, 3), inpainter, str(out), "augpaint", config, image_size=SIZE, progress=False
    ).run()
    entries = load_decathlon_datalist(datalist, data_list_key="training")
    sources = {load(p)["image"].sum().item(): load(p) for p in pairs}
    mirrored = 0
    for entry in entries:
        label = load(entry)["label"]
        for right, left in (((label == 1), (label == 2)),):
            if right.any() and left.any():
                assert mean_column(right) < mean_column(left)  # right_lobe on the image's left, as in every real mask
        source_label = load({"image": entry["image"], "label": entry["source_label"]})["label"]
        mirrored += not torch.equal(label, source_label)
    assert 0 < mirrored < len(entries)
    control = make_control_set(datalist, str(tmp_path / "control"), "noise", pairs, image_size=SIZE)
    written = [load(e)["label"] for e in load_decathlon_datalist(control, data_list_key="training")]
    assert len(sources) and all(torch.equal(a, load(e)["label"]) for a, e in zip(written, entries, strict=True))


def mean_column(mask: torch.Tensor) -> float:
    columns = torch.arange(mask.shape[-1], dtype=torch.float64)
    return float((mask.double() * columns).sum() / mask.double().sum())


def test_conditional_network_gets_the_masked_latent_and_keep_mask():
    inpainter = exact_inpainter(conditional=True)
    images, labels = torch.rand(2, 1, SIZE, SIZE), torch.zeros(2, 1, SIZE, SIZE, dtype=torch.long)
    labels[:, :, 4:12, 4:12] = 2
    new_images, new_labels = inpainter(JobBatch([0, 1], images, labels))
    assert set(inpainter.network.input_channels) == {2 * 16 + 1}  # cat(x_t, masked latent, keep mask)
    assert new_images.shape == images.shape and torch.equal(new_labels, labels)


def test_pairs_whose_boxes_cover_the_image_get_one_warning_and_shape_mode_none(caplog):
    """Boxes that cover the image (large structures, the chest X-ray case) leave little to regenerate: told once."""
    images = torch.rand(2, 1, SIZE, SIZE)
    rows, columns = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    diagonal = ((rows - columns).abs() <= 1).long()  # a thin structure across the image: its box is the whole image
    labels = diagonal.expand(2, 1, SIZE, SIZE).clone()
    assert float(regenerated_fraction(labels, "box", latent_size=(8, 8)).max()) == 0.0
    assert float(regenerated_fraction(labels, "shape", latent_size=(8, 8)).min()) > 0.5
    inpainter = exact_inpainter()
    with caplog.at_level("WARNING", logger="augpaint.inpainter"):
        inpainter(JobBatch([0, 1], images, labels))
        inpainter(JobBatch([2, 3], images, labels))
    warnings = [r.getMessage() for r in caplog.records if "regenerates only" in r.getMessage()]
    assert len(warnings) == 1 and "--mask_mode shape" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="augpaint.inpainter"):
        exact_inpainter(mask_mode="shape")(JobBatch([0, 1], images, labels))  # the diagonal only
        small = torch.zeros_like(labels)
        small[:, :, 4:8, 4:8] = 1
        exact_inpainter()(JobBatch([0, 1], images, small))
    assert not caplog.records


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="flip"):
        exact_inpainter(flip="false")  # a string from a command line would silently mean True
    with pytest.raises(ValueError, match="mask_mode"):
        exact_inpainter(mask_mode="circle")
    with pytest.raises(ValueError, match="labelled pairs"):
        exact_inpainter()(JobBatch([0]))


CLASS_NAMES = ["background", "organ", "vessel", "nerve", "lesion"]


def tiny_models(folder, image_size=SIZE) -> dict[str, str]:
    """Random-weight AugPaint checkpoints with cards, as the training stages write them, and a filter segmenter."""
    autoencoder = tiny_checkpoint(
        f"{folder}/model_autoencoder.pt", tiny_vqvae_definition(), latent_factor=4, image_size=image_size
    )
    diffusion = tiny_checkpoint(
        f"{folder}/model.pt",
        tiny_unet_definition(),
        inputs=[autoencoder],
        noise_schedule=NOISE_SCHEDULE,
        prediction_type="v_prediction",
        latent_scale=1.3,
        image_size=image_size,
        conditional=False,
    )
    segmenter = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 5}
    segmenter.update({"channels": [4, 8], "strides": [2], "num_res_units": 0})
    checkpoint = tiny_checkpoint(
        f"{folder}/model_segmenter.pt", segmenter, class_names=CLASS_NAMES, image_size=image_size
    )
    return {"autoencoder": autoencoder, "diffusion": diffusion, "segmenter": checkpoint}


def run_inference(pairs, tmp_path, **overrides) -> dict:
    tiny = {
        "bundle_root": os.path.join(REPO, "bundles/augpaint"),
        "dataset_dir": os.path.dirname(os.path.dirname(pairs[0]["image"])),
        "num_labelled": 3,
        "image_size": SIZE,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "synthetic"),
        "num_samples": 2,
        "num_inference_steps": 2,
        "progress": False,
        **overrides,
    }
    workflow = ConfigWorkflow(
        os.path.join(REPO, "bundles/augpaint/configs/inference.json"), workflow_type="infer", **tiny
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    with open(tmp_path / "synthetic" / "datalist.json") as f:
        return json.load(f)


def test_inference_config_builds_the_networks_from_their_cards_and_filters(pairs, tmp_path):
    models = tiny_models(tmp_path / "models")
    datalist = run_inference(pairs, tmp_path, segmenter_ckpt=models["segmenter"])
    assert len(datalist["training"]) == 3 and datalist["dropped"] == 3
    config = datalist["config"]
    assert config["eta"] == 1.0 and config["prediction_type"] == "v_prediction" and config["latent_factor"] == 4


def test_a_card_that_does_not_fit_the_run_is_a_clear_error(pairs, tmp_path):
    models = tiny_models(tmp_path / "models", image_size=64)
    with raises_through_bundle(ValueError, "image_size: asked for 32, trained with 64"):
        run_inference(pairs, tmp_path)
    models = tiny_models(tmp_path / "models")
    tiny_checkpoint(models["autoencoder"], tiny_vqvae_definition(), seed=1, latent_factor=4, image_size=SIZE)
    with raises_through_bundle(ValueError, "trained on another model_autoencoder.pt"):
        run_inference(pairs, tmp_path)
    os.remove(os.path.join(tmp_path, "models", "model.json"))
    with raises_through_bundle(FileNotFoundError, "has no card"):
        run_inference(pairs, tmp_path)


def test_the_filter_segmenter_must_know_the_same_classes(pairs, tmp_path):
    models = tiny_models(tmp_path / "models")
    segmenter = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3}
    segmenter.update({"channels": [4, 8], "strides": [2], "num_res_units": 0})
    tiny_checkpoint(models["segmenter"], segmenter, class_names=["background", "a", "b"], image_size=SIZE)
    with raises_through_bundle(ValueError, "class_names"):
        run_inference(pairs, tmp_path, segmenter_ckpt=models["segmenter"])
