"""Pictures and progress of a training run: what a stage has learnt, as TensorBoard images, and how long it has left.

- :class:`TensorBoardPicture` writes ``picture()`` (an RGB grid) every ``interval`` iterations and when training ends;
  the networks it is given are in eval mode while it is drawn and back in their mode afterwards.
- :func:`generator_picture`: pairs from a generator (a diffusion stage mid-training) with their masks overlaid, for a
  fixed :class:`common.generation.JobBatch`, so pictures of one run are comparable over iterations.
- :func:`reconstruction_picture`: an autoencoder's reconstructions beside their inputs.
- :class:`ProgressLogger` logs the rate (it/s) and the time left of an engine's run.

Example (a diffusion stage's config)::

    {"_target_": "common.handlers.TensorBoardPicture",
     "picture": "$common.handlers.generator_picture(@picture_generator, @picture_batch, @num_classes)",
     "networks": ["@diffusion_network"], "log_dir": "$@output_dir + '/diffusion'",
     "tag": "class_conditional_pairs", "interval": "@picture_interval"}

(the unwrapped network, not a DistributedDataParallel wrapper: pictures are drawn on rank 0 alone)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers.tensorboard_handlers import TensorBoardHandler
from torch import nn

from common.generation.jobs import JobBatch
from common.io import comparison_sheet, contact_sheet

__all__ = ["ProgressLogger", "TensorBoardPicture", "first_items", "generator_picture", "reconstruction_picture"]


class TensorBoardPicture(TensorBoardHandler):
    """Writes ``picture()``, an (H, W, 3) uint8 array, to TensorBoard under ``tag`` (see the module docstring).

    Args:
        picture: draws the picture; called without gradients.
        networks: put in eval mode while drawing (dropout, batch norm), then back in the mode they were in.
        tag: the TensorBoard image tag.
        interval: draw every ``interval`` iterations, and once when the run completes.
        summary_writer, log_dir: as MONAI's TensorBoard handlers (a writer to share, or a folder for a new one).
    """

    def __init__(
        self,
        picture: Callable[[], np.ndarray],
        networks: Sequence[nn.Module] = (),
        tag: str = "samples",
        interval: int = 100,
        summary_writer=None,
        log_dir: str = "./runs",
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        if interval < 1:
            raise ValueError(f"interval must be >= 1 iteration, got {interval}")
        self.picture = picture
        self.networks = list(networks)
        self.tag = tag
        self.interval = interval
        self.last_drawn: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        step = engine.state.iteration
        if step == self.last_drawn:  # the last interval is also the end of the run: draw once
            return
        modes = [network.training for network in self.networks]
        try:
            for network in self.networks:
                network.eval()
            with torch.no_grad():
                picture = self.picture()
        finally:
            for network, mode in zip(self.networks, modes, strict=True):
                network.train(mode)
        self._writer.add_image(self.tag, picture, step, dataformats="HWC")
        self._writer.flush()
        self.last_drawn = step


def generator_picture(
    generator: Callable[[JobBatch], tuple[torch.Tensor, torch.Tensor]], batch: JobBatch, num_classes: int
) -> Callable[[], np.ndarray]:
    """Draws the pairs ``generator`` makes for ``batch`` (the same seeds every time), masks overlaid."""

    def draw() -> np.ndarray:
        images, labels = generator(batch)
        return contact_sheet(list(zip(images.cpu(), labels.cpu(), strict=True)), num_classes)

    return draw


def _as_grey(images: torch.Tensor) -> torch.Tensor:
    """Grey images (B, 1, H, W) in [0, 1]: one channel as it is, one-hot channels (masks) as class / (C - 1)."""
    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        return images.clamp(0.0, 1.0)
    return images.argmax(dim=1, keepdim=True).float() / (images.shape[1] - 1)


def reconstruction_picture(autoencoder: nn.Module, images: torch.Tensor) -> Callable[[], np.ndarray]:
    """Draws ``images`` (B, C, H, W) beside the autoencoder's reconstructions: grey images in [0, 1], or one-hot
    masks shown as their class maps."""

    def draw() -> np.ndarray:
        device = next(autoencoder.parameters()).device
        output = autoencoder(images.to(device))
        reconstructions = output[0] if isinstance(output, tuple) else output
        return comparison_sheet(list(_as_grey(images)), list(_as_grey(reconstructions)))

    return draw


def first_items(dataset: Sequence[Mapping], key: str, count: int = 8) -> torch.Tensor:
    """``key`` of the first ``count`` items of ``dataset`` stacked (B, C, H, W): fixed inputs for a picture (take
    them from a dataset without random transforms, e.g. the validation set)."""
    items = [
        torch.as_tensor(dataset[index][key]).as_subclass(torch.Tensor) for index in range(min(count, len(dataset)))
    ]
    if not items:
        raise ValueError("no items to draw: the dataset is empty")
    return torch.stack(items)


class ProgressLogger:
    """Logs ``<name>: iteration i/N, r it/s, m:ss left`` every ``interval`` iterations of an engine's run.

    The rate is over the iterations of this run (a resumed run counts from where it resumed).
    """

    def __init__(self, interval: int = 50, name: str = "training", logger: logging.Logger | None = None) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1 iteration, got {interval}")
        self.interval = interval
        self.name = name
        self.logger = logger
        self._start: tuple[float, int] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def _started(self, engine: Engine) -> None:
        self._start = (time.perf_counter(), engine.state.iteration)

    def __call__(self, engine: Engine) -> None:
        started_at, first_iteration = self._start or (time.perf_counter(), 0)
        done = engine.state.iteration - first_iteration
        seconds = time.perf_counter() - started_at
        total = (engine.state.max_epochs or 0) * (engine.state.epoch_length or 0)
        rate = done / seconds if seconds > 0 else float("inf")
        left = max(total - engine.state.iteration, 0) / rate if rate > 0 else float("inf")
        minutes, secs = divmod(int(round(left)), 60) if np.isfinite(left) else (0, 0)
        (self.logger or engine.logger).info(
            f"{self.name}: iteration {engine.state.iteration}/{total}, {rate:.2f} it/s, {minutes}:{secs:02d} left"
        )
