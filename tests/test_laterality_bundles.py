"""Left stays left through every training transform of every bundle (issue 12).

On the lateral phantoms ``right_lobe`` (1) lies on the image's left and ``left_lobe`` (2) on its right, and the two look
alike, so only the side tells them apart. Every pipeline that flips image and mask together must keep that (a
left-right flip swaps the two labels); a pipeline that cannot swap (an image alone, a latent) must not flip
left-right. The pairs come from the class names or from a ``classes.json`` declaration; data without lateral classes
keeps its left-right flips, and no pipeline flips up-down unless the data declares it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, RandFlipd
from monai.utils import ensure_tuple

from common.bundles import find_bundles
from common.data import load_splits, pair_transforms, phantom_dataset
from common.evaluation.runs import classic_training_transforms

SIZE = 32
DRAWS = 40
BUNDLES = {name: bundle.root / "configs" for name, bundle in find_bundles().items()}
BUNDLES["segmentation"] = Path(__file__).resolve().parents[1] / "bundles" / "segmentation" / "configs"

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def lateral(tmp_path_factory) -> str:
    """Lateral phantoms, the pair detected from the names ``right_lobe`` / ``left_lobe``."""
    return phantom_dataset(tmp_path_factory.mktemp("lateral"), image_size=SIZE, num_images=12, layout="lateral")


@pytest.fixture(scope="module")
def declared(lateral, tmp_path_factory) -> str:
    """The same data with names that say nothing of sides, and the pair declared in ``classes.json``."""
    folder = tmp_path_factory.mktemp("declared") / "data"
    shutil.copytree(lateral, folder)
    names = ["background", "lobe a", "lobe b", "vessel", "nerve", "lesion"]
    classes = {**{str(i): name for i, name in enumerate(names)}, "lateral_pairs": [[2, 1]]}
    (folder / "classes.json").write_text(json.dumps(classes))
    return str(folder)


@pytest.fixture(scope="module")
def standard(tmp_path_factory) -> str:
    return phantom_dataset(tmp_path_factory.mktemp("standard"), image_size=SIZE, num_images=12)


def _parsed(files: list[str], key: str, dataset: str, **overrides) -> Compose:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update({"dataset_dir": dataset, "image_size": SIZE, **overrides})
    return parser.get_parsed_content(key)


def _bundle_pipeline(bundle: str, *configs: str, **overrides) -> Callable[[str], Compose]:
    return lambda dataset: _parsed([BUNDLES[bundle] / c for c in configs], "train#preprocessing", dataset, **overrides)


def _one_hot_to_index(label: torch.Tensor) -> torch.Tensor:
    return label.argmax(0, keepdim=True).float() if label.shape[0] > 1 else label


# every pipeline that moves an image and its mask together, by the name a user knows it by
PAIR_PIPELINES = {
    "segmentation train.json": _bundle_pipeline("segmentation", "train.json"),
    "gauda autoencoders (one-hot masks)": _bundle_pipeline("gauda", "train_autoencoder.json"),
    "gauda scheme aug": _bundle_pipeline("gauda", "train_downstream.json", "train_downstream_aug.json"),
    # every item an image sample, whose channel 0 is the image (mask samples carry the same label)
    "diffuseexpand stages I and II": _bundle_pipeline("diffuseexpand", "train_ddpm.json", image_prob=1.0),
    "evaluation classic arm": lambda dataset: classic_training_transforms(SIZE, dataset),
}


def _pair_with_both_lobes(dataset: str) -> dict:
    load = pair_transforms(SIZE)
    for pair in load_splits(dataset)["train"]:
        label = load(pair)["label"]
        if (label == 1).any() and (label == 2).any():
            return pair
    raise AssertionError("no phantom with both lobes")


def _mean_column(mask: torch.Tensor) -> float:
    columns = torch.arange(mask.shape[-1], dtype=torch.float64)
    return float((mask.double() * columns).sum() / mask.double().sum())


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(torch.as_tensor(a).flatten().numpy(), torch.as_tensor(b).flatten().numpy())[0, 1])


def _draws(pipeline: Compose, pair: dict, seed: int = 0) -> list[dict]:
    pipeline.set_random_state(seed)
    return [pipeline(dict(pair)) for _ in range(DRAWS)]


@pytest.mark.parametrize("data", ["lateral", "declared"])
@pytest.mark.parametrize("name", list(PAIR_PIPELINES))
def test_pair_pipelines_flip_left_right_and_keep_each_lobe_on_its_side(name, data, request):
    dataset = request.getfixturevalue(data)
    pair = _pair_with_both_lobes(dataset)
    original = pair_transforms(SIZE)(pair)["image"]
    mirrored, checked = 0, 0
    for out in _draws(PAIR_PIPELINES[name](dataset), pair):
        label = _one_hot_to_index(torch.as_tensor(out["label"]))
        if (label == 1).any() and (label == 2).any():
            checked += 1
            assert _mean_column(label == 1) < _mean_column(label == 2), f"{name}: the right lobe moved to the right"
        image = torch.as_tensor(out["image"])[:1]
        mirrored += _correlation(image, torch.flip(original, [-1])) > _correlation(image, original)
    assert checked >= DRAWS // 2
    assert mirrored >= 4, f"{name}: no left-right flip in {DRAWS} draws: the test would not see a broken swap"


@pytest.mark.parametrize("name", list(PAIR_PIPELINES))
def test_without_lateral_classes_left_right_flips_stay_and_up_down_flips_are_off(name, standard):
    pair = _off_centre_organ(standard)
    loaded = pair_transforms(SIZE)(pair)
    original, label = loaded["image"], loaded["label"]
    pipeline = PAIR_PIPELINES[name](standard)
    mirrored = 0
    for out in _draws(pipeline, pair):
        image = torch.as_tensor(out["image"])[:1]
        mirrored += _correlation(image, torch.flip(original, [-1])) > _correlation(image, original)
        out_label = _one_hot_to_index(torch.as_tensor(out["label"]))
        assert set(out_label.unique().tolist()) <= set(label.unique().tolist())  # no class is renamed
    assert mirrored >= 4
    assert not [t for t in _flat(pipeline) if isinstance(t, RandFlipd) and 0 in ensure_tuple(t.flipper.spatial_axis)]


def _flat(transform) -> list:
    """Every transform inside ``transform``, nested ``Compose`` / ``OneOf`` included."""
    inner = getattr(transform, "transforms", None)
    return [transform] if inner is None else [t for child in inner for t in _flat(child)]


def _off_centre_organ(dataset: str) -> dict:
    """A standard phantom with an organ (class 1) off the vertical midline, so its flips show."""
    load = pair_transforms(SIZE)
    for pair in load_splits(dataset)["train"]:
        label = load(pair)["label"]
        if (label == 1).sum() > 20 and abs(_mean_column(label == 1) - SIZE / 2) > 3:
            return pair
    raise AssertionError("no phantom with an off-centre organ")


# what cannot swap labels: a latent (image or joint image-mask), an image alone
LATENT_PIPELINES = {
    "augpaint diffusion": ("augpaint", ["train_autoencoder.json", "train_diffusion.json"], ["image"]),
    "augpaint conditional diffusion": (
        "augpaint",
        ["train_autoencoder.json", "train_diffusion.json", "train_diffusion_conditional.json"],
        ["image", "condition"],
    ),
    "gauda joint diffusion": ("gauda", ["train_autoencoder.json", "train_diffusion.json"], ["image"]),
}


@pytest.mark.parametrize("name", list(LATENT_PIPELINES))
def test_latents_are_not_flipped_left_right_on_lateral_data_and_still_are_without(name, lateral, standard):
    bundle, configs, keys = LATENT_PIPELINES[name]
    item = {key: torch.arange(48, dtype=torch.float32).reshape(3, 4, 4) + i for i, key in enumerate(keys)}
    for dataset, expect_flips in ((lateral, False), (standard, True)):
        outs = _draws(_bundle_pipeline(bundle, *configs)(dataset), item)
        flipped = [all(torch.equal(out[k], torch.flip(item[k], [-1])) for k in keys) for out in outs]
        assert all(flipped[i] or all(torch.equal(out[k], item[k]) for k in keys) for i, out in enumerate(outs))
        assert any(flipped) == expect_flips, f"{name} on {Path(dataset).name}"


def test_augpaint_autoencoder_images_are_not_flipped_left_right_on_lateral_data(lateral, standard):
    image = {"image": _off_centre_organ(standard)["image"]}  # an image that is far from mirror-symmetric
    original = pair_transforms(SIZE, keys=("image",))(image)["image"]
    for dataset, expect_flips in ((lateral, False), (standard, True)):
        outs = _draws(_bundle_pipeline("augpaint", "train_autoencoder.json")(dataset), image)
        mirrored = [
            _correlation(o["image"], torch.flip(original, [-1])) > _correlation(o["image"], original) for o in outs
        ]
        assert any(mirrored) == expect_flips
