"""TensorBoard pictures and progress lines: drawn when asked, in eval mode, back in train mode after, readable from the
event files; each generative stage of each method draws into its own run folder, never into the repository."""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_networks import tiny_training_knobs
from torch import nn

from common.bundles import BUNDLES_DIR, find_methods
from common.generation import JobBatch
from common.handlers import ProgressLogger, TensorBoardPicture, generator_picture, reconstruction_picture
from common.handlers import pictures as pictures_module
from common.stages import run_workflow


def _images(run_dir: str) -> dict[str, list]:
    accumulator = EventAccumulator(run_dir, size_guidance={"images": 0})
    accumulator.Reload()
    return {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}


def _decode(event) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(event.encoded_image_string)).convert("RGB"))


def test_a_picture_is_drawn_every_interval_and_at_the_end_in_eval_mode(tmp_path):
    network = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    modes_while_drawing = []
    picture = np.zeros((6, 10, 3), dtype=np.uint8)

    def draw() -> np.ndarray:
        modes_while_drawing.append((network.training, torch.is_grad_enabled()))
        picture[:, : len(modes_while_drawing)] = 200  # each picture differs from the one before
        return picture.copy()

    handler = TensorBoardPicture(draw, networks=[network], tag="samples", interval=2, log_dir=str(tmp_path))
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.run(range(5), max_epochs=1)
    handler.close()
    assert modes_while_drawing == [(False, False)] * 3 and network.training  # iterations 2, 4 and the end (5)
    events = _images(str(tmp_path))["samples"]
    assert [event.step for event in events] == [2, 4, 5]
    assert (_decode(events[-1])[:, :3] == 200).all() and (_decode(events[-1])[:, 3:] == 0).all()


def test_the_last_interval_at_the_end_is_drawn_once(tmp_path):
    handler = TensorBoardPicture(lambda: np.zeros((4, 4, 3), np.uint8), tag="x", interval=2, log_dir=str(tmp_path))
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.run(range(4), max_epochs=1)
    handler.close()
    assert [event.step for event in _images(str(tmp_path))["x"]] == [2, 4]


def test_reconstructions_sit_beside_their_inputs():
    identity = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(identity.weight)
    images = torch.rand(3, 1, 8, 8)
    sheet = reconstruction_picture(identity, images)()
    assert sheet.shape == (2 + 8 + 2, 3 * (17 + 2) + 2, 3)  # 3 cells of input | line | reconstruction
    for index in range(3):
        left = 2 + index * 19
        np.testing.assert_array_equal(sheet[2:10, left : left + 8], sheet[2:10, left + 9 : left + 17])
        np.testing.assert_allclose(sheet[2:10, left : left + 8, 0], np.round(255 * images[index, 0].numpy()), atol=1)


def test_one_hot_masks_are_drawn_as_their_class_maps():
    labels = torch.zeros(1, 3, 4, 4)
    labels[0, 0], labels[0, 2, :2] = 1.0, 1.0
    labels[0, 0, :2] = 0.0  # class 2 on the top half, background below
    sheet = reconstruction_picture(_Id(), labels)()
    assert (sheet[2:4, 2:6] == 255).all() and (sheet[4:6, 2:6] == 0).all()


class _Id(nn.Module):
    """An autoencoder that reconstructs perfectly."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.weight, torch.zeros(())


def test_generator_pictures_show_the_same_jobs_with_their_masks():
    calls = []

    def generator(batch: JobBatch) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(list(batch.seeds))
        images = torch.full((len(batch.seeds), 1, 6, 6), 0.5)
        labels = torch.zeros(len(batch.seeds), 1, 6, 6, dtype=torch.long)
        labels[:, :, :3] = 1
        return images, labels

    draw = generator_picture(generator, JobBatch(seeds=[7, 8]), num_classes=2)
    first, second = draw(), draw()
    assert calls == [[7, 8], [7, 8]]
    np.testing.assert_array_equal(first, second)
    grey, overlay = first[2:8, 2:8], first[2:8, 9:15]  # first cell: image | image with its mask
    assert (grey == 128).all() and (overlay[3:] == 128).all()  # background stays grey
    assert not (overlay[:3] == 128).all(axis=-1).any()  # class 1 is coloured


def test_progress_lines_give_the_rate_and_the_time_left(monkeypatch, caplog):
    clock = iter(float(second) for second in range(100))
    monkeypatch.setattr(pictures_module.time, "perf_counter", lambda: next(clock))
    engine = Engine(lambda engine, batch: None)
    ProgressLogger(interval=2, name="diffusion", logger=logging.getLogger("progress-test")).attach(engine)
    with caplog.at_level(logging.INFO, logger="progress-test"):
        engine.run(range(10), max_epochs=1)
    # started at t = 0; the k-th line is read at t = k: 2k iterations in k seconds, 2 it/s
    lines = [record.getMessage() for record in caplog.records if record.name == "progress-test"]
    assert lines[0] == "diffusion: iteration 2/10, 2.00 it/s, 0:04 left"
    assert lines[-1] == "diffusion: iteration 10/10, 2.00 it/s, 0:00 left"


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("method", sorted(find_methods()))
def test_every_generative_stage_draws_into_its_own_run_folder(method, tmp_path):
    bundle = find_methods()[method]
    before = set(glob.glob(str(BUNDLES_DIR / "*" / "eval" / "**"), recursive=True))
    knobs = tiny_training_knobs(bundle)
    models = tmp_path / "models"
    segmenter = {"max_iterations": 2, "val_interval": 2, "num_workers": 0, "channels": [4, 8, 16, 32]}
    run_workflow(
        bundle.config("train"),
        bundle_root=str(bundle.root),
        ckpt_dir=str(models),
        knobs=knobs,
        segmenter_knobs=segmenter,
    )
    tags = {}
    for run_dir in sorted({os.path.dirname(path) for path in glob.glob(str(models / "logs" / "*" / "events.*"))}):
        tags[os.path.basename(run_dir)] = sorted(_images(run_dir))
    expected = {
        "augpaint": {"autoencoder": ["reconstructions"], "diffusion": ["inpainted_pairs"], "filter_segmenter": []},
        "gauda": {
            "image_autoencoder": ["reconstructions"],
            "mask_autoencoder": ["reconstructions"],
            "diffusion": ["class_conditional_pairs"],
        },
        "diffuseexpand": {"ddpm": ["generated_pairs"], "noise_segmenter": [], "filter_segmenter": []},
    }
    assert tags == expected[method]
    assert set(glob.glob(str(BUNDLES_DIR / "*" / "eval" / "**"), recursive=True)) == before  # no log in the repo
