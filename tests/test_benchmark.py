"""The benchmark, tiny, for every method the bundles declare: each declared generator setting is timed with the
network evaluations counted from outside the sampler, and GAUDA's online scheme against its baseline at equal steps."""

from __future__ import annotations

import pytest
import torch
from tiny_networks import tiny_checkpoint, tiny_training_knobs

from common.bundles import Bundle, find_methods
from common.checkpoints import read_card
from common.data import load_splits, phantom_dataset
from common.evaluation.quality import load_images
from common.stages import run_workflow
from scripts import benchmark

pytestmark = [pytest.mark.usefixtures("single_torch_thread"), pytest.mark.slow, pytest.mark.engine]

TINY_SCHEMES = {
    "channels": [4, 8, 16, 32],
    "ensemble_size": 2,
    "num_workers": 0,
    "batch_size": 4,
    "generator_steps": 2,
    "gauda_num_synthetic": 2,
    "gauda_synthesis_batch_size": 2,
    "gauda_replace_prob": 1.0,
}


def tiny_trained(bundle: Bundle, folder) -> str:
    """The bundle trained with its smoke knobs and narrow diffusion networks: real checkpoints with cards."""
    knobs = tiny_training_knobs(bundle)
    models = str(folder / "models")
    # the benchmark times the generator alone: no filter segmenter
    run_workflow(
        bundle.config("train"), bundle_root=str(bundle.root), ckpt_dir=models, knobs=knobs, filter_segmenter=False
    )
    return models


@pytest.mark.parametrize("method", sorted(find_methods()))
def test_every_declared_setting_is_timed_with_the_nfe_the_network_saw(method, monkeypatch, tmp_path):
    bundle = find_methods()[method]
    models = tiny_trained(bundle, tmp_path)
    rows_seen: list[int] = []  # batch rows of every call of any diffusion UNet during the timed runs
    forward = torch.nn.Module.__call__

    def counting(module, *args, **kwargs):
        if type(module).__name__ == "DiffusionModelUNet":
            rows_seen.append((args[0] if args else kwargs["x"]).shape[0])
        return forward(module, *args, **kwargs)

    knobs = {"num_inference_steps": 3} if method == "augpaint" else {}
    monkeypatch.setattr(torch.nn.Module, "__call__", counting)
    rows = benchmark.benchmark(method, generator=models, batch_size=2, knobs=knobs)
    assert [row["setting"] for row in rows] == [entry["name"] for entry in bundle.evaluation["benchmark"]]
    # per step of a pair: the generator network's rows (classifier-free guidance: a conditional and a null row) and
    # those of other diffusion UNets (DiffuseExpand's noise-aware segmenter guides both of its chains)
    network_rows, other_rows = {"augpaint": (1, 0), "gauda": (2, 0), "diffuseexpand": (1 + 2, 1 + 1)}[method]
    chain = read_card(f"{models}/model.pt")["settings"]["noise_schedule"]["num_train_timesteps"]
    for row in rows:
        steps = row["knobs"].get("num_inference_steps") or chain  # a DDPM runs every training step
        assert row["nfe_per_sample"] == network_rows * steps
        assert row["pairs_per_second"] > 0 and row["peak_memory_mb"] > 0
    # what the diffusion UNets saw from outside: a 2-pair warm-up and the 2 timed pairs per setting
    assert sum(rows_seen) == sum(4 * row["nfe_per_sample"] * (1 + other_rows / network_rows) for row in rows)


def test_gauda_online_scheme_is_timed_against_its_baseline_at_equal_iterations(tmp_path):
    models = tiny_trained(find_methods()["gauda"], tmp_path)
    rows = benchmark.benchmark(
        "gauda", models, batch_size=1, iterations=4, val_interval=2, scheme_knobs=TINY_SCHEMES, settings=[]
    )
    assert len(rows) == 2  # no generator setting asked for: the two scheme rows
    baseline, gauda = rows[-2:]
    assert (baseline["scheme"], gauda["scheme"]) == ("gauda: baseline", "gauda: gauda")
    assert baseline["iterations"] == gauda["iterations"] == 4
    assert baseline["seconds"] > 0 and gauda["seconds"] > 0 and gauda["reference"] == "gauda: baseline"


SEGMENTER = {  # a MONAI UNet as the segmentation bundle builds it, narrow: the feature space of the FID
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 5,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 0,
}


def test_fid_of_the_real_images_is_zero_and_grows_as_the_images_move_away(tmp_path):
    data = phantom_dataset(tmp_path / "data", image_size=32, num_images=40)
    score = benchmark.image_scorer(data, tiny_checkpoint(str(tmp_path / "seg.pt"), SEGMENTER))
    real = load_images(load_splits(data)["train"], 32)
    same = score(real)
    assert same["num_real"] == same["num_generated"] == len(real) == len(load_splits(data)["train"])
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    slightly, very = score(real + 0.05 * noise), score(real + 0.5 * noise)  # (instance norm ignores a rescale)
    assert abs(same["fid"]) < 1e-3 * slightly["fid"] and slightly["fid"] < very["fid"] and same["kid"] < very["kid"]
    assert score(real[:, :, :16, :16])["num_real"] == len(real)  # real images are read at the generated size


def test_fid_scores_every_setting_on_the_same_seeds_and_needs_all_three_inputs(tmp_path):
    bundle = find_methods()["diffuseexpand"]
    models = tiny_trained(bundle, tmp_path)
    data = phantom_dataset(tmp_path / "data", image_size=32, num_images=20)
    segmenter = tiny_checkpoint(str(tmp_path / "seg.pt"), SEGMENTER)
    names = ["DPM-Solver++ 10 steps", "DPM-Solver++ 20 steps"]
    rows = benchmark.benchmark(
        "diffuseexpand", models, batch_size=3, repeats=2, settings=names, fid_data=data, fid_segmenter=segmenter
    )
    assert [row["setting"] for row in rows] == names
    for row in rows:
        assert row["num_generated"] == 6 and row["num_real"] == len(load_splits(data)["train"])
        assert row["fid"] > 0 and row["kid"] == row["kid"]
    assert rows[0]["fid"] != rows[1]["fid"]  # the same noise, another sampler: other images
    with pytest.raises(ValueError, match="all three"):
        benchmark.benchmark("diffuseexpand", models, fid_data=data)
    with pytest.raises(ValueError, match="all three"):
        benchmark.benchmark("diffuseexpand", fid_data=data, fid_segmenter=segmenter)
