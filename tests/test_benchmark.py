"""The GAUDA benchmark, tiny: both schedulers sample (NFE = what the network really ran: a conditional and a null pass
per step), and both downstream schemes train, GAUDA replacing samples, with the overhead ratio of the two timings."""

from __future__ import annotations

import pytest

from scripts import benchmark

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY_KNOBS = {
    "channels": [4, 8, 16, 32],
    "ensemble_size": 2,
    "num_workers": 0,
    "batch_size": 4,
    "gauda_num_synthetic": 2,
    "gauda_synthesis_batch_size": 2,
    "gauda_replace_prob": 1.0,
}


def test_gauda_benchmark_tiny(monkeypatch):
    network_rows: list[int] = []  # batch rows of every network call of the benchmark's samplers (warm-up included)
    load = benchmark.load_joint_sampler

    def counting_load(*args, **kwargs):
        sampler = load(*args, **kwargs)
        sampler.network.register_forward_hook(lambda module, inputs, output: network_rows.append(inputs[0].shape[0]))
        return sampler

    monkeypatch.setattr(benchmark, "load_joint_sampler", counting_load)
    rows = benchmark.gauda(
        iterations=4, val_interval=2, ddim_steps=2, ddpm_steps=4, num_pairs=2, knobs=dict(TINY_KNOBS)
    )
    ddim, ddpm, training = rows
    assert (ddim["sampler"], ddim["steps"]) == ("ddim", 2) and (ddpm["sampler"], ddpm["steps"]) == ("ddpm", 4)
    for row in (ddim, ddpm):
        assert row["pairs_per_second"] > 0 and row["peak_memory_mb"] > 0
        assert row["nfe_per_sample"] == 2 * row["steps"]  # guidance: conditional + null pass at every step
        assert row["network_calls_per_batch"] == row["steps"]  # ... batched in one network call
    # every network call seen from outside: 2 warm-up + 2 timed pairs per scheduler, 2 rows per pair per step
    assert sum(network_rows) == (2 + 2) * 2 * (2 + 4)
    assert ddim["speed_vs_ddpm"] == pytest.approx(ddim["pairs_per_second"] / ddpm["pairs_per_second"])
    assert ddpm["speed_vs_ddpm"] == 1.0
    assert training["baseline_seconds"] > 0 and training["gauda_seconds"] > 0
    assert training["overhead_ratio"] == pytest.approx(training["gauda_seconds"] / training["baseline_seconds"])
    assert training["num_refreshes"] == 1 and training["synthesis_seconds_total"] > 0  # the last epoch skips it
    assert training["replaced_total"] > 0
    assert training["paper_reference"] == "22.6 h / 15.3 h = 1.48x"


def test_gauda_benchmark_can_skip_training(tmp_path):
    """A given generator folder is used as is; without training only the two sampler rows come back."""
    config = str(benchmark.GAUDA_CONFIGS / "inference.json")
    generator = benchmark.save_untrained_generator(str(tmp_path / "generator"), config)
    rows = benchmark.gauda(ddim_steps=1, ddpm_steps=2, num_pairs=1, generator=generator, skip_training=True)
    assert [row["sampler"] for row in rows] == ["ddim", "ddpm"]
    assert [row["nfe_per_sample"] for row in rows] == [2, 4]
