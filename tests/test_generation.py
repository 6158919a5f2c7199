"""The generation run end to end on phantom pairs with tiny networks: datalist, filter counts, kept regions, resume."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import load_decathlon_datalist
from monai.networks.nets import UNet
from monai.networks.schedulers import DDIMScheduler
from tiny_networks import tiny_diffusion_unet, tiny_vqvae

from common.checkpoints import load_frozen_network
from common.data import load_splits, pair_transforms, phantom_dataset
from common.generation import GenerationRun, LatentInpainter, plan_jobs
from common.io import SyntheticDatasetWriter
from common.regions import class_boxes, flip_boxes, keep_mask, to_latent_grid
from common.sampling import LatentInpaintingSampler

SIZE = 32
NUM_CLASSES = 5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> list[dict]:
    root = phantom_dataset(tmp_path_factory.mktemp("phantoms"), image_size=SIZE, num_images=12, seed=0)
    return load_splits(root, seed=0, num_labelled=3)["train"]


def load(pair: dict) -> dict[str, torch.Tensor]:
    item = pair_transforms(SIZE)({"image": pair["image"], "label": pair["label"]})
    return {key: torch.as_tensor(item[key]).as_subclass(torch.Tensor) for key in ("image", "label")}


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

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.input_channels.append(x.shape[1])
        return torch.sin(3 * x[:, :16])


def ddim_sampler(steps: int = 3) -> LatentInpaintingSampler:
    scheduler = DDIMScheduler(1000, "scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    return LatentInpaintingSampler(scheduler, steps)


def tiny_segmenter() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, NUM_CLASSES, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def exact_inpainter(**kwargs) -> LatentInpainter:
    return LatentInpainter(PixelShuffleAutoencoder(), Wobble(), ddim_sampler(), scale_factor=2.0, **kwargs)


def run(pairs, output_dir, synthesize, **kwargs) -> str:
    options = {"num_samples": 2, "seed": 10, "batch_size": 4, "image_size": SIZE, "progress": False}
    options.update(kwargs)
    config = {"num_samples": options["num_samples"], "keep_fraction": options.get("keep_fraction")}
    return GenerationRun(
        pairs, synthesize, str(output_dir), "augpaint", config, num_classes=NUM_CLASSES, **options
    ).run()


def read(datalist_path: str) -> dict:
    with open(datalist_path) as f:
        return json.load(f)


def test_jobs_have_stable_names_and_seeds(pairs):
    jobs = plan_jobs(pairs, num_samples=3, seed=100)
    stem = os.path.basename(pairs[1]["image"]).removesuffix(".png")
    assert [(j.name, j.seed) for j in jobs[3:6]] == [(f"{stem}_s{k}", 103 + k) for k in range(3)]
    with pytest.raises(ValueError, match="share the file name"):
        plan_jobs([pairs[0], dict(pairs[0])], 1, 0)


def test_vqvae_and_diffusion_unet_end_to_end_with_the_filter(pairs, tmp_path):
    torch.manual_seed(0)
    autoencoder = tiny_vqvae().eval()
    unet = tiny_diffusion_unet().eval()
    inpainter = LatentInpainter(autoencoder, unet, ddim_sampler(), scale_factor=1.5)
    path = run(pairs, tmp_path, inpainter, segmenter=tiny_segmenter(), keep_fraction=0.5)

    datalist = read(path)
    assert datalist["method"] == "augpaint" and datalist["dropped"] == 3  # 3 pairs x 2 samples, top half kept
    entries = load_decathlon_datalist(path, data_list_key="training")
    assert len(entries) == 3
    scores = [entry["score"] for entry in datalist["training"]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    by_source = {os.path.abspath(p["image"]): p for p in pairs}
    for entry, raw in zip(entries, datalist["training"], strict=True):
        assert os.path.isfile(entry["image"]) and raw["status"] == "kept"
        source = by_source[raw["source_image"]]
        assert raw["seed"] == 10 + pairs.index(source) * 2 + int(raw["image"][-5])  # base seed + stable index
        written, original = load(entry), load(source)
        assert torch.equal(written["label"], original["label"])  # the pair keeps the source mask
        assert written["image"].min() >= 0.0 and written["image"].max() <= 1.0
    assert os.path.isfile(tmp_path / "contact_sheet.png")


def test_known_region_is_the_source_image_and_the_rest_changes_with_the_seed(pairs, tmp_path):
    path = run(pairs, tmp_path, exact_inpainter(mask_mode="box"), num_samples=2)
    datalist = read(path)
    assert datalist["dropped"] == 0 and all(entry["score"] is None for entry in datalist["training"])  # no filter
    entries = load_decathlon_datalist(path, data_list_key="training")
    assert len(entries) == 6
    for first, second in zip(entries[0::2], entries[1::2], strict=True):  # the two samples of one source pair
        source = load({"image": first["source_image"], "label": first["source_label"]})
        known = to_latent_grid(keep_mask(source["label"][None].long()), (SIZE // 4, SIZE // 4))
        known = known.repeat_interleave(4, -2).repeat_interleave(4, -1)[0].bool()
        assert known.any() and not known.all()
        a, b = load(first)["image"], load(second)["image"]
        assert (a[known] - source["image"][known]).abs().max() <= 1 / 255 + 1e-6  # kept up to 8-bit rounding
        assert (b[known] - source["image"][known]).abs().max() <= 1 / 255 + 1e-6
        assert (a[~known] - b[~known]).abs().mean() > 0.05  # regenerated differently for the two seeds


def test_flipped_boxes_keep_image_and_mask_aligned(pairs, tmp_path):
    path = run(pairs[:1], tmp_path, exact_inpainter(flip_boxes=True), num_samples=4, seed=0)
    entries = load_decathlon_datalist(path, data_list_key="training")
    source = load(pairs[0])
    image, label = source["image"][None], source["label"][None].long()
    boxes = class_boxes(label)
    flipped_masks = set()
    for entry in entries:
        written = load(entry)
        generator = torch.Generator().manual_seed(read(path)["training"][entries.index(entry)]["seed"])
        expected_image, expected_label = flip_boxes(image, label, boxes, generator)
        assert torch.equal(written["label"].long(), expected_label[0])  # the mask is flipped like the image
        inside = keep_mask(label)[0].bool()
        assert (written["image"][inside] - expected_image[0][inside]).abs().max() <= 1 / 255 + 1e-6
        flipped_masks.add(tuple(written["label"].flatten().tolist()))
    assert len(flipped_masks) > 1


def test_conditional_network_gets_the_masked_latent_and_keep_mask():
    inpainter = exact_inpainter(conditional=True)
    images, labels = torch.rand(2, 1, SIZE, SIZE), torch.zeros(2, 1, SIZE, SIZE, dtype=torch.long)
    labels[:, :, 4:12, 4:12] = 2
    new_images, new_labels = inpainter(images, labels, [0, 1])
    assert set(inpainter.network.input_channels) == {2 * 16 + 1}  # cat(x_t, masked latent, keep mask)
    assert new_images.shape == images.shape and torch.equal(new_labels, labels)


class Interrupt(Exception):
    pass


class InterruptAfter:
    """Wraps a synthesize callable and raises once it has made ``batches`` batches (a killed run)."""

    def __init__(self, synthesize, batches: int) -> None:
        self.synthesize, self.batches, self.calls = synthesize, batches, 0

    def __call__(self, images, labels, seeds):
        if self.calls == self.batches:
            raise Interrupt
        self.calls += 1
        return self.synthesize(images, labels, seeds)


def test_interrupted_generation_resumes_without_duplicates(pairs, tmp_path):
    with pytest.raises(Interrupt):
        run(pairs, tmp_path / "run", InterruptAfter(exact_inpainter(), 1), batch_size=2)
    first_files = sorted(os.listdir(tmp_path / "run" / "images"))
    assert len(first_files) == 2 and not os.path.exists(tmp_path / "run" / "datalist.json")
    written_before = {f: os.path.getmtime(tmp_path / "run" / "images" / f) for f in first_files}

    resumed = InterruptAfter(exact_inpainter(), 99)
    path = run(pairs, tmp_path / "run", resumed, batch_size=2)
    assert resumed.calls == 2  # only the 4 missing pairs were made
    names = [entry["image"] for entry in read(path)["training"]]
    assert len(names) == len(set(names)) == 6 == len(os.listdir(tmp_path / "run" / "images"))
    assert all(os.path.getmtime(tmp_path / "run" / "images" / f) == t for f, t in written_before.items())
    uninterrupted = read(run(pairs, tmp_path / "clean", exact_inpainter(), batch_size=2))
    assert [e["seed"] for e in read(path)["training"]] == [e["seed"] for e in uninterrupted["training"]]


def test_interrupted_filter_resumes_to_the_same_kept_set(pairs, tmp_path, monkeypatch):
    segmenter = tiny_segmenter()
    clean = read(run(pairs, tmp_path / "clean", exact_inpainter(), segmenter=segmenter, keep_fraction=0.5))

    remove = SyntheticDatasetWriter.remove
    calls = []

    def remove_then_crash(self, name):
        if len(calls) == 1:
            raise Interrupt
        calls.append(name)
        remove(self, name)

    monkeypatch.setattr(SyntheticDatasetWriter, "remove", remove_then_crash)
    with pytest.raises(Interrupt):
        run(pairs, tmp_path / "run", exact_inpainter(), segmenter=segmenter, keep_fraction=0.5)
    monkeypatch.setattr(SyntheticDatasetWriter, "remove", remove)
    resumed = InterruptAfter(exact_inpainter(), 0)  # raises if the resumed run tried to generate again
    datalist = read(run(pairs, tmp_path / "run", resumed, segmenter=segmenter, keep_fraction=0.5))
    assert [e["image"] for e in datalist["training"]] == [e["image"] for e in clean["training"]]
    assert datalist["dropped"] == clean["dropped"] == 3

    again = read(run(pairs, tmp_path / "run", resumed, segmenter=segmenter, keep_fraction=0.5))  # finished run
    assert [e["image"] for e in again["training"]] == [e["image"] for e in clean["training"]]
    assert again["dropped"] == 3


def test_bad_settings_are_named(pairs, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_segmenter.pt"):
        load_frozen_network(tiny_segmenter(), str(tmp_path / "model_segmenter.pt"), "cpu")
    with pytest.raises(ValueError, match="flip_boxes"):
        exact_inpainter(flip_boxes="false")  # a string from a command line would silently mean True
    with pytest.raises(ValueError, match="mask_mode"):
        exact_inpainter(mask_mode="circle")
    with pytest.raises(ValueError, match="no label"):
        GenerationRun([{"image": pairs[0]["image"]}], exact_inpainter(), str(tmp_path), "augpaint")


def test_inference_config_wires_the_bundle(pairs, tmp_path):
    """inference.json with tiny networks and random checkpoints: a real `monai.bundle` run on phantom pairs."""
    from monai.bundle import ConfigWorkflow

    from common.latents import save_latent_scale

    config_file = os.path.join(REPO, "bundles/augpaint/configs/inference.json")
    parser = ConfigParser()
    parser.read_config(config_file)
    assert isinstance(parser.get_parsed_content("scheduler"), DDIMScheduler)
    assert parser.get_parsed_content("network_def").conv_in.conv.in_channels == 3

    dataset_dir = os.path.dirname(os.path.dirname(pairs[0]["image"]))
    tiny = {
        "dataset_dir": dataset_dir,
        "num_labelled": 3,
        "image_size": SIZE,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "synthetic"),
        "num_samples": 2,
        "num_inference_steps": 2,
        "progress": False,
        "autoencoder_def#channels": [8, 8],
        "autoencoder_def#num_res_channels": [8, 8],
        "network_def#channels": [8, 8, 8],
        "network_def#num_head_channels": [0, 0, 8],
        "network_def#norm_num_groups": 8,
        "segmenter_def#channels": [4, 8, 8, 8],
    }
    os.makedirs(tmp_path / "models")
    for network_id, file_name in (
        ("autoencoder_def", "model_autoencoder.pt"),
        ("network_def", "model.pt"),
        ("segmenter_def", "model_segmenter.pt"),
    ):
        parser = ConfigParser()
        parser.read_config(config_file)
        parser.update(tiny)
        torch.save(parser.get_parsed_content(network_id).state_dict(), tmp_path / "models" / file_name)
    save_latent_scale(str(tmp_path / "models" / "latent_scale.json"), 1.3)

    workflow = ConfigWorkflow(config_file=config_file, workflow_type="infer", **tiny)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    datalist = read(str(tmp_path / "synthetic" / "datalist.json"))
    assert len(datalist["training"]) == 3 and datalist["dropped"] == 3
    assert datalist["config"]["num_inference_steps"] == 2 and datalist["config"]["mask_mode"] == "box"
