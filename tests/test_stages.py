"""The stage runner trains stages in order, reuses finished ones and never reuses a checkpoint trained otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.stages import profile_files, run_stages


def _write_stage_config(config_dir: Path, name: str, writes_checkpoint: bool = True) -> str:
    """A bundle config whose run appends a line to a log and (optionally) writes its checkpoint with @value."""
    run = ["$open(@log, 'a').write(@stage_name + '\\n')"]
    if writes_checkpoint:
        run.append("$open(@checkpoint, 'w').write(str(@value))")
    config = {"stage_name": name, "value": 0, "log": "", "checkpoint": "", "run": run}
    path = config_dir / f"train_{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture
def stages(tmp_path):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    log = tmp_path / "log.txt"
    result = []
    for name in ("autoencoder", "diffusion"):
        checkpoint = str(tmp_path / f"model_{name}.pt")
        result.append(
            {
                "name": name,
                "config_file": _write_stage_config(config_dir, name),
                "checkpoint": checkpoint,
                "overrides": {"checkpoint": checkpoint},
            }
        )
    return result, log


def _trained(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_stages_run_in_order_then_are_reused(stages):
    stage_list, log = stages
    overrides = {"log": str(log), "value": 1}
    assert run_stages(stage_list, overrides) == ["autoencoder", "diffusion"]
    assert _trained(log) == ["autoencoder", "diffusion"]
    assert run_stages(stage_list, overrides) == []
    assert _trained(log) == ["autoencoder", "diffusion"]


def test_retrain_by_name_trains_only_that_stage(stages):
    stage_list, log = stages
    overrides = {"log": str(log), "value": 1}
    run_stages(stage_list, overrides)
    assert run_stages(stage_list, overrides, retrain=["diffusion"]) == ["diffusion"]
    assert run_stages(stage_list, overrides, retrain=True) == ["autoencoder", "diffusion"]
    with pytest.raises(ValueError, match="unknown stage"):
        run_stages(stage_list, overrides, retrain=["vae"])


def test_checkpoint_trained_with_other_settings_is_not_reused(stages):
    stage_list, log = stages
    run_stages(stage_list, {"log": str(log), "value": 1})
    assert run_stages(stage_list, {"log": str(log), "value": 2}) == ["autoencoder", "diffusion"]
    assert Path(stage_list[1]["checkpoint"]).read_text() == "2"


def test_a_stage_is_retrained_when_an_earlier_stage_changed_its_checkpoint(stages):
    """A diffusion model is never reused on top of an autoencoder retrained after it (e.g. by hand, or forced)."""
    stage_list, log = stages
    overrides = {"log": str(log), "value": 1}
    run_stages(stage_list, overrides)
    Path(stage_list[0]["checkpoint"]).write_text("retrained elsewhere")
    assert run_stages(stage_list, overrides) == ["diffusion"]  # trained on other autoencoder bytes
    assert run_stages(stage_list, overrides) == []
    assert run_stages(stage_list, overrides, retrain=["autoencoder"]) == ["autoencoder", "diffusion"]


def test_stage_that_writes_no_checkpoint_is_an_error(tmp_path):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    stage = {
        "name": "broken",
        "config_file": _write_stage_config(config_dir, "broken", writes_checkpoint=False),
        "checkpoint": str(tmp_path / "never.pt"),
    }
    with pytest.raises(RuntimeError, match="without writing its checkpoint"):
        run_stages([stage], {"log": str(tmp_path / "log.txt")})


def test_profile_files(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "paper.json").write_text("{}")
    assert profile_files(str(tmp_path), "quick") == []
    assert profile_files(str(tmp_path), "paper") == [str(tmp_path / "configs" / "paper.json")]
    assert profile_files(str(tmp_path), "paper", part="inference") == []
    (tmp_path / "configs" / "paper_inference.json").write_text("{}")
    assert profile_files(str(tmp_path), "paper", part="inference") == [
        str(tmp_path / "configs" / "paper_inference.json")
    ]
    with pytest.raises(FileNotFoundError, match="unknown profile 'huge'"):
        profile_files(str(tmp_path), "huge")
