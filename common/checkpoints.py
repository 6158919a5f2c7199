"""Checkpoints with cards: a trained network is saved with what it takes to rebuild and use it.

A stage that trains a network writes, beside its flat state dict ``<name>.pt``, a card ``<name>.json``::

    {"network": {"_target_": "monai.networks.nets.diffusion_model_unet.DiffusionModelUNet", "channels": [...], ...},
     "settings": {"prediction_type": "v_prediction", "noise_schedule": {...}, "latent_scale": 0.93, ...},
     "inputs": {"model_autoencoder.pt": "<sha256>"}}

- ``network``: the network's definition as trained, a MONAI config component with every value resolved; it is
  written from the ``"_mode_": "callable"`` definition of the training config (a ``functools.partial``), so a network
  is defined once, where it is trained, and inference builds it from the card (:func:`load_network`).
- ``settings``: what sampling or inference must know (prediction type, noise schedule, latent scale, null condition,
  class names, image size, ...).
- ``inputs``: the SHA-256 of the frozen checkpoints the network was trained on (e.g. the autoencoder of a latent
  diffusion model); loading checks them, so a diffusion model is never used with an autoencoder retrained after it.

:func:`check_settings` compares settings asked for at inference (image size, number of classes, ...) with the card;
a mismatch is an error that names both values, never a silently wrong sample.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.networks.utils import copy_model_state
from torch import nn

from common.files import file_digest, json_ready, read_json, write_json

__all__ = [
    "build_network",
    "card_path",
    "check_settings",
    "labels_seen",
    "load_matching_weights",
    "load_network",
    "network_definition",
    "read_card",
    "save_card",
]


logger = logging.getLogger(__name__)


def load_matching_weights(network: nn.Module, checkpoint: str | None) -> nn.Module:
    """``network`` with every weight of the state dict in ``checkpoint`` whose name and shape match its own (MONAI's
    ``copy_model_state``), e.g. a pretrained DDPM with other input channels; the weights it could not take are
    logged by name. ``None`` returns ``network`` unchanged (training from scratch)."""
    if checkpoint is None:
        return network
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"pretrained checkpoint not found: {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, Mapping) else state
    _, loaded, kept = copy_model_state(network, state, inplace=True)
    if not loaded:
        raise ValueError(f"{checkpoint}: no weight matches the network by name and shape; is it the same architecture?")
    skipped = sorted(set(state) - set(loaded))
    logger.info(
        "%s: %d of %d weights loaded; %d of the network's kept their initial values; not loaded (name or shape "
        "differs): %s",
        checkpoint, len(loaded), len(state), len(kept), ", ".join(skipped) if skipped else "none",
    )  # fmt: skip
    return network


def card_path(checkpoint: str) -> str:
    """``model.pt`` -> ``model.json``."""
    return os.path.splitext(checkpoint)[0] + ".json"


def network_definition(factory: Callable[..., nn.Module] | Mapping[str, Any]) -> dict[str, Any]:
    """A MONAI config component (``_target_`` and resolved arguments) for a ``functools.partial`` of a network
    class or factory (what ``"_mode_": "callable"`` gives), e.g. ``partial(UNet, spatial_dims=2, ...)``; nested
    partials among the arguments become components with ``"_mode_": "callable"``. A mapping is returned as is."""
    if isinstance(factory, Mapping):
        return dict(factory)
    if not isinstance(factory, functools.partial):
        factory = functools.partial(factory)
    if factory.args:
        raise ValueError(f"{factory} has positional arguments; define the network with keyword arguments")

    def value(item: Any) -> Any:
        if isinstance(item, functools.partial):
            return {**network_definition(item), "_mode_": "callable"}
        if isinstance(item, (list, tuple)):
            return [value(v) for v in item]
        return item

    target = f"{factory.func.__module__}.{factory.func.__qualname__}"
    return {"_target_": target, **{key: value(item) for key, item in factory.keywords.items()}}


def save_card(
    checkpoint: str,
    network: Callable[..., nn.Module] | Mapping[str, Any],
    inputs: Sequence[str] = (),
    **settings: Any,
) -> str:
    """Write the card of ``checkpoint`` (see the module docstring); ``inputs`` are checkpoint files the network was
    trained on, recorded by their digests. Returns the card's path."""
    missing = [path for path in inputs if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{checkpoint} is trained on {missing}, which do not exist: train those stages first")
    card = {
        "network": network_definition(network),
        "settings": settings,
        "inputs": {os.path.basename(path): file_digest(path) for path in inputs},
    }
    return write_json(card_path(checkpoint), json_ready(card))


def read_card(checkpoint: str) -> dict[str, Any]:
    """The card of ``checkpoint``; a clear error when the checkpoint or its card is missing."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} not found: train the stage that writes it first")
    card = read_json(card_path(checkpoint))
    if not isinstance(card, dict) or "network" not in card:
        raise FileNotFoundError(
            f"{checkpoint} has no card {card_path(checkpoint)} (its network definition and sampling settings): "
            "it was not written by this version of the bundle's training; train that stage again"
        )
    return card


def labels_seen(checkpoints: Sequence[str | None]) -> list[str]:
    """Every mask file the networks of ``checkpoints`` were trained on (their cards' ``labels_seen``), sorted; a
    generation run records it, so the evaluation can refuse a set made with more labels than its labelled subset."""
    seen = set()
    for checkpoint in checkpoints:
        if checkpoint:
            seen.update(read_card(checkpoint)["settings"].get("labels_seen", []))
    return sorted(seen)


def check_settings(checkpoint: str, card: Mapping[str, Any] | None = None, **expected: Any) -> None:
    """Raise a ValueError naming every setting of ``expected`` that differs from the card's (None values and
    settings the card does not record are not compared)."""
    card = card or read_card(checkpoint)
    recorded = card.get("settings", {})
    wrong = [
        f"{key}: asked for {json_ready(value)!r}, trained with {recorded[key]!r}"
        for key, value in expected.items()
        if value is not None and key in recorded and json_ready(value) != recorded[key]
    ]
    if wrong:
        raise ValueError(f"{checkpoint} does not fit this run: " + "; ".join(wrong))


def _check_inputs(checkpoint: str, card: Mapping[str, Any], inputs: Sequence[str]) -> None:
    recorded = card.get("inputs", {})
    for path in inputs:
        name = os.path.basename(path)
        if name in recorded and file_digest(path) != recorded[name]:
            raise ValueError(
                f"{checkpoint} was trained on another {name} than {path} (the file changed after it was trained): "
                "train it again on the current one"
            )


def build_network(checkpoint: str) -> nn.Module:
    """The network of ``checkpoint``'s card, freshly initialised (without its weights)."""
    return ConfigParser({"network": read_card(checkpoint)["network"]}).get_parsed_content("network")


def load_network(
    checkpoint: str,
    device: str | torch.device = "cpu",
    inputs: Sequence[str] = (),
    frozen: bool = True,
    **expected: Any,
) -> nn.Module:
    """The network of ``checkpoint`` built from its card, with its weights, on ``device``.

    ``inputs`` are the checkpoints it will be used with (checked against the digests the card recorded);
    ``expected`` settings are checked with :func:`check_settings`. ``frozen`` gives eval mode without gradients.
    """
    card = read_card(checkpoint)
    check_settings(checkpoint, card, **expected)
    _check_inputs(checkpoint, card, inputs)
    network = build_network(checkpoint)
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    network = network.to(device)
    return network.eval().requires_grad_(False) if frozen else network
