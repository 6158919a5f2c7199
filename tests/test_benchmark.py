"""The benchmark, tiny, for every method the bundles declare: each declared generator setting is timed with the
network evaluations counted from outside the sampler, and GAUDA's online scheme against its baseline at equal steps."""

from __future__ import annotations

import pytest
import torch
from tiny_networks import tiny_training_knobs

from common.bundles import Bundle, find_methods
from common.checkpoints import read_card
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
    run_workflow(bundle.config("train"), bundle_root=str(bundle.root), ckpt_dir=models, knobs=knobs)
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
