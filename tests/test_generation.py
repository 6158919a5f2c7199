"""The generation pipeline with a stand-in generator: jobs, provenance, conditions, filters, resume after a crash."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.networks.nets import UNet
from phantom_pairs import load_pair
from PIL import Image

from common.filtering import ConfidenceFilter, DiceFilter
from common.generation import (
    GenerationRun,
    JobBatch,
    jobs_from_class_sets,
    jobs_from_label_maps,
    jobs_from_noise,
    jobs_from_pairs,
)
from common.io import SyntheticDatasetWriter

SIZE = 32
NUM_CLASSES = 5


def load(pair: dict) -> dict[str, torch.Tensor]:
    return load_pair(pair, SIZE)


def read(datalist_path: str) -> dict:
    with open(datalist_path) as f:
        return json.load(f)


class Recolour:
    """A stand-in generator: the source image darkened by a seed-dependent amount (or a seeded blob from noise),
    the source label (or a square of the first conditioned class); records what it was given."""

    def __init__(self) -> None:
        self.batches: list[JobBatch] = []

    def __call__(self, batch: JobBatch) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches.append(batch)
        if batch.images is not None:
            factors = torch.tensor([0.5 + (s % 7) / 20 for s in batch.seeds]).view(-1, 1, 1, 1)
            return batch.images * factors, batch.labels
        images = torch.stack(
            [torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(s)) for s in batch.seeds]
        )
        labels = torch.zeros(len(batch), 1, SIZE, SIZE, dtype=torch.long)
        for index, classes in enumerate(batch.conditions or [[1]] * len(batch)):
            labels[index, :, 8:16, 8:16] = classes[0] if classes else 0
        return images, labels


def tiny_segmenter() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, NUM_CLASSES, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def run(jobs, output_dir, generator=None, **kwargs) -> str:
    options = {"batch_size": 4, "image_size": SIZE, "progress": False, "num_classes": NUM_CLASSES}
    return GenerationRun(
        jobs, generator or Recolour(), str(output_dir), "test", {"k": 1}, **{**options, **kwargs}
    ).run()


def test_job_planners_give_stable_names_and_seeds(pairs):
    jobs = jobs_from_pairs(pairs, num_samples=3, seed=100)
    stem = os.path.basename(pairs[1]["image"]).removesuffix(".png")
    assert [(j.name, j.seed) for j in jobs[3:6]] == [(f"{stem}_s{k}", 103 + k) for k in range(3)]
    assert jobs[3].source == {"image": pairs[1]["image"], "label": pairs[1]["label"]}
    with pytest.raises(ValueError, match="share the name"):
        jobs_from_pairs([pairs[0], dict(pairs[0])], 1, 0)
    with pytest.raises(ValueError, match="no label"):
        jobs_from_pairs([{"image": pairs[0]["image"]}], 1, 0)
    sets = jobs_from_class_sets([[4, 1], []], num_samples=2, seed=5)
    assert [(j.name, j.seed, j.condition) for j in sets] == [
        ("c1-4_s0", 5, (1, 4)),
        ("c1-4_s1", 6, (1, 4)),
        ("c0_s0", 7, ()),
        ("c0_s1", 8, ()),
    ]
    assert [(j.name, j.seed, j.source) for j in jobs_from_noise(2, seed=3)] == [
        ("n00000", 3, None),
        ("n00001", 4, None),
    ]
    maps = jobs_from_label_maps([pairs[0]["label"]], 2, 0)
    assert maps[1].source == {"label": pairs[0]["label"]} and maps[1].name.endswith("_s1")


def test_a_run_from_labelled_pairs_records_provenance_and_keeps_masks(pairs, tmp_path):
    generator = Recolour()
    path = run(jobs_from_pairs(pairs, 2, 10), tmp_path, generator)
    datalist = read(path)
    assert datalist["method"] == "test" and datalist["config"] == {"k": 1} and datalist["dropped"] == 0
    assert [len(b) for b in generator.batches] == [4, 2]
    entries = load_decathlon_datalist(path, data_list_key="training")
    by_source = {os.path.abspath(p["image"]): p for p in pairs}
    for entry, raw in zip(entries, datalist["training"], strict=True):
        source = by_source[raw["source_image"]]
        assert raw["source_label"] == os.path.abspath(source["label"]) and raw["status"] == "kept"
        assert raw["seed"] == 10 + pairs.index(source) * 2 + int(raw["image"][-5])
        assert raw["score"] is None and raw["condition"] is None
        written, original = load(entry), load(source)
        assert torch.equal(written["label"], original["label"])
        expected = original["image"] * (0.5 + (raw["seed"] % 7) / 20)
        assert (written["image"] - expected).abs().max() <= 1 / 255 + 1e-6
    assert os.path.isfile(tmp_path / "contact_sheet.png")


def test_a_run_from_class_sets_records_conditions_and_null_sources(tmp_path):
    path = run(jobs_from_class_sets([[2], [1, 3]], 2, 0), tmp_path)
    entries = read(path)["training"]
    assert [e["condition"] for e in entries] == [[2], [2], [1, 3], [1, 3]]
    assert all(e["source_image"] is None and e["source_label"] is None for e in entries)
    label = load(
        {"image": os.path.join(tmp_path, entries[2]["image"]), "label": os.path.join(tmp_path, entries[2]["label"])}
    )
    assert set(label["label"].unique().tolist()) == {0, 1}


def test_the_confidence_filter_keeps_the_most_confident_half_and_records_scores(pairs, tmp_path):
    path = run(jobs_from_pairs(pairs, 2, 0), tmp_path, pair_filter=ConfidenceFilter(tiny_segmenter(), 0.5, SIZE))
    datalist = read(path)
    assert len(datalist["training"]) == 3 and datalist["dropped"] == 3
    kept = [e["score"] for e in datalist["training"]]
    assert all(0.0 <= s <= 1.0 for s in kept)


class Fixed(torch.nn.Module):
    """A segmenter that predicts given logits for every image."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(images.shape[0], -1, -1, -1)


def test_the_dice_filter_keeps_relabels_and_drops_by_the_dice_loss(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="common.filtering")
    """The generator writes a 8x8 square of class 1; the segmenter predicts a 8x8, an 8x7 and a 4x4 square: Dice loss
    0, 1 - 112/120 = 0.067 and 1 - 32/80 = 0.6 with eta 0.05 -> kept, relabelled (to the prediction), dropped."""
    prediction = {}
    for name, (rows, cols) in {"keep": (8, 8), "relabel": (8, 7), "drop": (4, 4)}.items():
        logits = torch.full((1, NUM_CLASSES, SIZE, SIZE), -20.0)
        logits[:, 0] = 20.0
        logits[:, 1, 8 : 8 + rows, 8 : 8 + cols], logits[:, 0, 8 : 8 + rows, 8 : 8 + cols] = 20.0, -20.0
        prediction[name] = logits
    for name, logits in prediction.items():
        out = tmp_path / name
        datalist = read(
            run(jobs_from_noise(1, 0), out, pair_filter=DiceFilter(Fixed(logits), eta=0.05, image_size=SIZE))
        )
        if name == "drop":
            assert datalist["training"] == [] and datalist["dropped"] == 1
            assert "0 kept, 0 relabelled, 1 dropped of 1 scored; their Dice losses: min, quartiles 0.600" in caplog.text
            continue
        (entry,) = datalist["training"]
        assert entry["status"] == ("kept" if name == "keep" else "relabelled")
        assert entry["score"] == pytest.approx(0.0 if name == "keep" else 1 - 112 / 120, abs=1e-4)
        written = load({"image": os.path.join(out, entry["image"]), "label": os.path.join(out, entry["label"])})
        assert int((written["label"] == 1).sum()) == (64 if name == "keep" else 56)


def test_the_dice_filter_sets_eta_to_the_median_loss_on_real_pairs_when_asked(tmp_path):
    """The segmenter predicts an 8x7 square; real masks of 8x7, 8x5 and 4x4 squares give Dice losses 0, 1 - 80/96 and
    1 - 32/72: eta = 1/6. The synthetic 8x8 square (loss 1 - 112/120 = 0.067) is kept, where the paper's 0.065
    would relabel it."""
    logits = torch.full((1, NUM_CLASSES, SIZE, SIZE), -20.0)
    logits[:, 0] = 20.0
    logits[:, 1, 8:16, 8:15], logits[:, 0, 8:16, 8:15] = 20.0, -20.0
    real = []
    for rows, cols in ((8, 7), (8, 5), (4, 4)):
        label = np.zeros((SIZE, SIZE), dtype=np.uint8)
        label[8 : 8 + rows, 8 : 8 + cols] = 1
        path = str(tmp_path / f"real_{rows}x{cols}.png")
        Image.fromarray(label).save(path)
        real.append({"image": path, "label": path})
    dice_filter = DiceFilter(Fixed(logits), eta=None, image_size=SIZE, reference_pairs=real)
    (entry,) = read(run(jobs_from_noise(1, 0), tmp_path / "out", pair_filter=dice_filter))["training"]
    assert dice_filter.eta == pytest.approx(1 - 80 / 96, abs=1e-4)
    assert entry["status"] == "kept" and entry["score"] == pytest.approx(1 - 112 / 120, abs=1e-4)
    with pytest.raises(ValueError, match="reference pairs"):
        DiceFilter(Fixed(logits), eta=None)


class Interrupt(Exception):
    pass


class InterruptAfter:
    """Wraps a generator and raises once it has made ``batches`` batches (a killed run)."""

    def __init__(self, generator, batches: int) -> None:
        self.generator, self.batches, self.calls = generator, batches, 0

    def __call__(self, batch):
        if self.calls == self.batches:
            raise Interrupt
        self.calls += 1
        return self.generator(batch)


def test_interrupted_generation_resumes_without_duplicates(pairs, tmp_path):
    jobs = jobs_from_pairs(pairs, 2, 0)
    with pytest.raises(Interrupt):
        run(jobs, tmp_path / "run", InterruptAfter(Recolour(), 1), batch_size=2)
    first_files = sorted(os.listdir(tmp_path / "run" / "images"))
    assert len(first_files) == 2 and not os.path.exists(tmp_path / "run" / "datalist.json")
    written_before = {f: os.path.getmtime(tmp_path / "run" / "images" / f) for f in first_files}

    resumed = InterruptAfter(Recolour(), 99)
    path = run(jobs, tmp_path / "run", resumed, batch_size=2)
    assert resumed.calls == 2  # only the 4 missing pairs were made
    names = [entry["image"] for entry in read(path)["training"]]
    assert len(names) == len(set(names)) == 6 == len(os.listdir(tmp_path / "run" / "images"))
    assert all(os.path.getmtime(tmp_path / "run" / "images" / f) == t for f, t in written_before.items())
    uninterrupted = read(run(jobs, tmp_path / "clean", Recolour(), batch_size=2))
    assert [e["seed"] for e in read(path)["training"]] == [e["seed"] for e in uninterrupted["training"]]


def test_interrupted_filter_resumes_to_the_same_kept_set(pairs, tmp_path, monkeypatch):
    jobs, keep_half = jobs_from_pairs(pairs, 2, 0), ConfidenceFilter(tiny_segmenter(), 0.5, SIZE)
    clean = read(run(jobs, tmp_path / "clean", pair_filter=keep_half))

    remove = SyntheticDatasetWriter.remove
    calls = []

    def remove_then_crash(self, name):
        if len(calls) == 1:
            raise Interrupt
        calls.append(name)
        remove(self, name)

    monkeypatch.setattr(SyntheticDatasetWriter, "remove", remove_then_crash)
    with pytest.raises(Interrupt):
        run(jobs, tmp_path / "run", pair_filter=keep_half)
    monkeypatch.setattr(SyntheticDatasetWriter, "remove", remove)
    resumed = InterruptAfter(Recolour(), 0)  # raises if the resumed run tried to generate again
    datalist = read(run(jobs, tmp_path / "run", resumed, pair_filter=keep_half))
    assert [e["image"] for e in datalist["training"]] == [e["image"] for e in clean["training"]]
    assert datalist["dropped"] == clean["dropped"] == 3
    again = read(run(jobs, tmp_path / "run", resumed, pair_filter=keep_half))  # finished run
    assert [e["image"] for e in again["training"]] == [e["image"] for e in clean["training"]]


def test_bad_settings_are_named(pairs, tmp_path):
    with pytest.raises(ValueError, match="no jobs"):
        GenerationRun([], Recolour(), str(tmp_path), "test")
    with pytest.raises(ValueError, match="same name"):
        GenerationRun(jobs_from_noise(1, 0) * 2, Recolour(), str(tmp_path), "test")
    with pytest.raises(ValueError, match="keep_fraction"):
        ConfidenceFilter(tiny_segmenter(), 0.0)

    def short(batch):
        return torch.zeros(1, 1, SIZE, SIZE), torch.zeros(1, 1, SIZE, SIZE)

    with pytest.raises(ValueError, match="for 2 jobs"):
        run(jobs_from_noise(2, 0), tmp_path / "short", short)
