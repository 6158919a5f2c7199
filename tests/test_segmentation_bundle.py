"""The downstream segmentation bundle: configs parse, training learns and writes a flat state dict (best by
validation Dice, or the final network without validation), bad data fails before training, inference writes
class-index PNG masks at each input's size, and the multi-GPU override runs on CPU with two processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.transforms import Resize
from PIL import Image

from common.checkpoints import load_network, read_card
from common.data import DataValidationError, load_splits, pair_transforms, read_class_names
from common.segmentation import MonaiLabelClassMapd, SaveMaskd, class_metric_names, image_entries

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "segmentation" / "configs"
TRAIN = str(CONFIGS / "train.json")
INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
TINY = {"channels": [8, 16, 32, 64], "num_workers": 0, "log_interval": 1}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _parser(*files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(overrides)
    return parser


def _train(tmp: Path, **overrides) -> tuple[ConfigWorkflow, list[float]]:
    """Run train.json in-process as ``monai.bundle run`` does; returns the workflow and the loss of every iteration."""
    workflow = ConfigWorkflow(
        config_file=TRAIN,
        workflow_type="train",
        logging_file=False,
        **{"ckpt_dir": str(tmp / "models"), "output_dir": str(tmp / "eval"), **TINY, **overrides},
    )
    workflow.initialize()
    losses: list[float] = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: losses.append(float(engine.state.output[0]["loss"]))
    )
    workflow.run()
    workflow.finalize()
    return workflow, losses


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """20 iterations on the phantoms with validation every 10 (shared by the training and inference tests)."""
    tmp = tmp_path_factory.mktemp("segmentation")
    workflow, losses = _train(tmp, max_iterations=20, val_interval=10, seed=0)
    return tmp, workflow, losses


def test_configs_resolve_the_ids_others_override():
    parser = _parser(TRAIN)
    num_classes = len(read_class_names(None))
    assert parser.get_parsed_content("num_classes") == num_classes
    network = parser.get_parsed_content("network_def")()  # a factory: the card records its definition
    assert network(torch.zeros(2, 1, 64, 64)).shape == (2, num_classes, 64, 64)
    assert parser.get_parsed_content("ckpt_dir") == "bundles/segmentation/models"
    assert parser.get_parsed_content("output_dir") == "bundles/segmentation/models/logs"  # logs stay with the run
    assert parser.get_parsed_content("device") == torch.device("cpu")
    splits = parser.get_parsed_content("splits")
    assert parser.get_parsed_content("train#dataset#data") == splits["train"]
    assert len(splits["val"]) == round(0.2 * (len(splits["train"]) + len(splits["val"])))
    # the budget is in iterations: epoch = val_interval iterations, or the whole budget when it is smaller
    assert parser.get_parsed_content("train#trainer#epoch_length") == 200
    assert parser.get_parsed_content("train#trainer#max_epochs") == 5
    short = _parser(TRAIN, max_iterations=30, val_interval=200)
    assert short.get_parsed_content("train#trainer#epoch_length") == 30
    assert short.get_parsed_content("train#trainer#max_epochs") == 1
    for key in ("initialize", "run", "finalize", "validate#evaluator", "loss", "optimizer", "learning_rate"):
        assert key in parser

    assert _parser(INFERENCE).get_parsed_content("ckpt_path") == "bundles/segmentation/models/model.pt"

    multi = _parser(TRAIN, MULTI_GPU)
    assert multi.get_parsed_content("backend") == "gloo"  # no CUDA here: the process group must not ask for nccl
    assert multi.get_parsed_content("device") == torch.device("cpu")
    # the override disables by list index: those indices must be the rank-0-only handlers of train.json
    rank0_only = {"train#handlers": [1, 2, 3], "validate#handlers": [0, 1, 2]}
    for handlers, indices in rank0_only.items():
        targets = {h["_target_"] for i, h in enumerate(multi[handlers]) if "is_not_rank0" in str(h.get("_disabled_"))}
        assert targets == {multi[handlers][i]["_target_"] for i in indices}
        assert targets <= {"CheckpointSaver", "StatsHandler", "TensorBoardStatsHandler"}
    assert multi["train#handlers"][0]["_target_"] == "ValidationHandler"  # every rank validates (metrics all-gather)


def test_metadata_follows_the_phantom_classes():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    names = read_class_names(None)
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {str(i): name for i, name in enumerate(names)}
    assert pred["num_channels"] == len(names)
    image = meta["network_data_format"]["inputs"]["image"]
    assert (image["num_channels"], image["spatial_shape"], image["value_range"]) == (1, [64, 64], [0, 1])


def test_class_metric_names_are_readable_and_unique():
    usgra = ["nerve (inferred from appearance, see README.md)", "blood vessel (inferred from appearance)"]
    assert class_metric_names("val_dice_", usgra) == ["val_dice_nerve", "val_dice_blood_vessel"]
    with pytest.raises(ValueError, match="duplicate"):
        class_metric_names("val_dice_", ["a b", "a-b"])


@pytest.mark.engine
def test_training_learns_and_saves_the_best_model_as_a_flat_state_dict(trained):
    tmp, workflow, losses = trained
    assert workflow.check_properties() == []  # every property MONAI's train workflow expects, under the right id
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5]), losses

    state = torch.load(tmp / "models" / "model.pt", map_location="cpu")
    network = load_network(str(tmp / "models" / "model.pt"))  # rebuilt from its card, weights loaded strictly
    assert set(state) == set(network.state_dict())  # flat: no {"model": ...} wrapper
    settings = read_card(str(tmp / "models" / "model.pt"))["settings"]
    assert settings["class_names"] == read_class_names(None) and settings["image_size"] == 64
    labelled = workflow.parser.get_parsed_content("splits")
    assert settings["labels_seen"] == [p["label"] for p in labelled["train"] + labelled["val"]]
    network.load_state_dict(state)

    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    metrics = evaluator.state.metrics
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    per_class = class_metric_names("val_dice_", read_class_names(None)[1:])
    assert all(name in metrics and 0.0 <= metrics[name] <= 1.0 for name in per_class)
    # the checkpoint is the network of the best validation: identical to the final one only if that was best
    final = workflow.parser.get_parsed_content("network").state_dict()
    same = all(torch.equal(state[k], final[k]) for k in state)
    assert same == (
        evaluator.state.best_metric_epoch == workflow.parser.get_parsed_content("train#trainer").state.epoch
    )


@pytest.mark.engine
def test_the_evaluation_keeps_the_final_network_even_with_validation_pairs(tmp_path):
    """Every arm of the evaluation selects its network the same way: the final one (keep_best_by_validation off)."""
    workflow, _ = _train(tmp_path, max_iterations=12, val_interval=4, keep_best_by_validation=False)
    assert workflow.parser.get_parsed_content("validate#evaluator").state.epoch == 3  # validation still ran
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu")
    final = workflow.parser.get_parsed_content("network").state_dict()
    assert all(torch.equal(state[k], final[k]) for k in final)


@pytest.mark.engine
def test_without_validation_the_final_model_is_saved_and_the_loader_restarts(tmp_path):
    pairs = load_splits(None, seed=3, num_labelled=10)["train"]
    workflow, losses = _train(
        tmp_path, **{"val_fraction": 0.0, "max_iterations": 12, "val_interval": 6, "train#dataset#data": pairs}
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 12 and len(losses) == 12  # 10 pairs, batch 8: the loader restarted 5 times
    assert len(workflow.parser.get_parsed_content("train#dataset")) == 10
    assert workflow.parser.get_parsed_content("validate#evaluator").state.iteration == 0
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu")
    final = workflow.parser.get_parsed_content("network").state_dict()
    assert set(state) == set(final) and all(torch.equal(state[k], final[k]) for k in final)


def test_bad_training_data_fails_before_training(tmp_path):
    good = load_splits(None)["train"][0]
    bad_mask = tmp_path / "bad_mask.png"
    Image.fromarray(np.full((64, 64), 9, dtype=np.uint8)).save(bad_mask)
    workflow = ConfigWorkflow(
        config_file=TRAIN,
        workflow_type="train",
        logging_file=False,
        **{"train#dataset#data": [good, {"image": good["image"], "label": str(bad_mask)}]},
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
    )
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the error of an expression; the cause is ours
        workflow.initialize()
    assert isinstance(failure.value.__cause__, DataValidationError)
    assert "bad_mask.png" in str(failure.value.__cause__)
    assert not (tmp_path / "models").exists()


@pytest.mark.engine
def test_inference_writes_class_index_masks_at_each_input_size(trained, tmp_path):
    model_dir, _, _ = trained
    inputs = tmp_path / "images"
    inputs.mkdir()
    sources = [p["image"] for p in load_splits(None)["test"][:3]]
    for index, source in enumerate(sources):  # non-square, so a transposed mask would not even have the right shape
        Image.open(source).resize((80 + 8 * index, 48)).save(inputs / f"case_{index}.png")
    Image.open(sources[0]).convert("RGB").save(inputs / "colour.jpg")
    output_dir = tmp_path / "masks"
    workflow = ConfigWorkflow(
        config_file=INFERENCE,
        workflow_type="infer",
        logging_file=False,
        ckpt_path=str(model_dir / "models" / "model.pt"),
        input_dir=str(inputs),
        output_dir=str(output_dir),
    )
    workflow.initialize()
    assert workflow.check_properties() == []  # the inference properties MONAI Label relies on
    workflow.run()
    workflow.finalize()

    network = workflow.parser.get_parsed_content("network").eval()
    assert workflow.parser.get_parsed_content("class_names") == read_class_names(None)  # from the model's card
    load = pair_transforms(64, keys=("image",))
    num_classes = len(read_class_names(None))
    assert sorted(os.listdir(output_dir)) == ["case_0.png", "case_1.png", "case_2.png", "colour.png"]
    for name in ("case_0", "case_1", "case_2", "colour"):
        source = next(inputs.glob(name + ".*"))
        mask = np.array(Image.open(output_dir / f"{name}.png"))
        width, height = Image.open(source).size
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert mask.max() < num_classes
        with torch.no_grad():  # the same prediction made by hand, resized back with nearest neighbour
            pred = network(load({"image": str(source)})["image"][None]).argmax(1)
        expected = Resize((height, width), mode="nearest-exact")(pred.float()).numpy()[0]
        np.testing.assert_array_equal(mask, expected)


def test_inference_datalist_accepts_paths_dicts_and_decathlon_files(tmp_path):
    pairs = load_splits(None)["test"][:2]
    assert image_entries([pairs[0]["image"], pairs[1]]) == [{"image": pairs[0]["image"]}, {"image": pairs[1]["image"]}]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": os.path.relpath(pairs[0]["image"], tmp_path)}]}))
    assert image_entries(str(datalist)) == [{"image": os.path.normpath(pairs[0]["image"])}]
    with pytest.raises(ValueError, match="neither an image path"):
        image_entries([{"label": pairs[0]["label"]}])


def test_two_inputs_with_the_same_name_are_not_silently_overwritten(tmp_path):
    save = SaveMaskd("pred", output_dir=str(tmp_path))
    save.write(torch.zeros(1, 4, 4), "/a/case.png")
    save.write(torch.ones(1, 4, 4), "/a/case.png")  # the same file again is fine
    assert np.array(Image.open(tmp_path / "case.png")).max() == 1
    with pytest.raises(ValueError, match="case.png"):
        save.write(torch.zeros(1, 4, 4), "/b/case.jpg")


def _cli_env() -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.engine
@pytest.mark.slow
def test_cli_run_from_the_repository_root(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/segmentation/configs/train.json"]
    overrides = {**TINY, "max_iterations": 20, "val_interval": 10, "val_fraction": 0.0}
    overrides.update(ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"))
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    result = subprocess.run(command, cwd=REPO, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"train_loss: ([0-9.]+)", result.stdout)]
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5])
    load_network(str(tmp_path / "models" / "model.pt"))  # a flat state dict that fits its card


@pytest.mark.engine
@pytest.mark.slow
def test_multi_gpu_override_runs_on_cpu_with_two_processes(tmp_path):
    config = "['bundles/segmentation/configs/train.json','bundles/segmentation/configs/multi_gpu_train.json']"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    command += ["-m", "monai.bundle", "run", "--config_file", config, "--max_iterations", "8", "--val_interval", "4"]
    command += ["--channels", "[8,16,32,64]", "--num_workers", "0", "--log_interval", "1"]
    command += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")]
    result = subprocess.run(command, cwd=REPO, env=_cli_env(), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # rank 0 alone logs and writes: one line per iteration and per validation, one TensorBoard file, one checkpoint
    assert len(re.findall(r"train_loss: [0-9.]+", output)) == 8
    assert len(re.findall(r"Metrics -- .*val_mean_dice", output)) == 2
    assert len(os.listdir(tmp_path / "eval")) == 1
    load_network(str(tmp_path / "models" / "model.pt"))  # unwrapped from DDP: no "module." prefix


def test_monailabel_class_map_is_uint8_at_the_input_size_in_columns_rows_order():
    image = MetaTensor(torch.zeros(1, 4, 4), meta={"spatial_shape": np.array([8, 6])})  # the file: 8 rows, 6 columns
    pred = torch.zeros(1, 4, 4)
    pred[0, 0, :] = 2  # class 2 on the top row of the network's 4 x 4 map
    out = MonaiLabelClassMapd(keys="pred")({"image": image, "pred": pred})
    mask = out["pred"]
    assert mask.dtype == np.uint8 and mask.shape == (6, 8)  # (columns, rows): MONAI Label's writer transposes it
    np.testing.assert_array_equal(mask.T[:2], 2)  # the top rows of the 8 x 6 file
    np.testing.assert_array_equal(mask.T[2:], 0)
    np.testing.assert_array_equal(image.meta["spatial_shape"], [6, 8])  # MONAI Label's Restored leaves it as it is
    with pytest.raises(ValueError, match="do not fit uint8"):
        MonaiLabelClassMapd(keys="pred")(
            {"image": MetaTensor(torch.zeros(1, 2, 2)), "pred": torch.full((1, 2, 2), 300)}
        )
