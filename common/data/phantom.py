"""Embedded default data: deterministic 2D phantom scenes of tissue-like classes, written as a paired data set.

A scene is a textured background with blob-shaped structures of four classes that differ in size, frequency and
brightness; structures drawn later overwrite earlier ones in both the image and the mask:

=====  ==========  ====================================  ==========================  =========================
index  name        shape (S = image size)                in how many images          intensity (source domain)
=====  ==========  ====================================  ==========================  =========================
1      organ       large lobed blob (radius ~ 0.25 S)    ~ 85 %                      mid grey, coarse texture
2      vessel      1-3 small round blobs                 ~ 70 %                      dark (anechoic)
3      nerve       thin elongated ellipse                ~ 50 %                      bright
4      lesion      small blob, inside the organ          10 % exactly (rare)         brightest
=====  ==========  ====================================  ==========================  =========================

The ``"lateral"`` layout has a lateral class pair in place of the organ, for data whose left and right matter (as
chest X-rays with right and left lungs): ``right_lobe`` always on the image's left half, ``left_lobe`` on its right
half (the radiological convention), with the same look, so only their side tells them apart; vessel, nerve and the
rare lesion (inside a lobe) follow as above, at indices 3, 4, 5. A left-right flip that does not swap the two
labels teaches contradictory labels on it (:mod:`common.data.laterality`).

The ``"thorax"`` layout has large structures, as a chest X-ray: ``right_lung`` (image left) and ``left_lung`` (image
right), tall dark ellipses of ~0.37 S semi-axis; a ``heart`` between them, drawn over the lungs; ``clavicles``, two thin
bright bars across the top (one class); the rare ``nodule`` inside a lung. Their class boxes cover most of the image,
the case where box-mode inpainting has almost nothing left to regenerate (:func:`common.regions.regenerated_fraction`).

The geometry of image ``i`` depends only on ``(seed, i)``, its look on ``(seed, i, domain)``: ``domain="shifted"``
gives the same masks with another appearance (lower contrast, gamma, blur, multiplicative speckle), i.e. a paired
second domain; use another ``seed`` for an unpaired one. Everything is drawn with numpy Generators, so the same
arguments always give the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "LATERAL_PHANTOM_CLASSES",
    "PHANTOM_CLASSES",
    "THORAX_PHANTOM_CLASSES",
    "PhantomScene",
    "phantom_dataset",
    "render_phantom",
    "write_phantom_dataset",
]

logger = logging.getLogger(__name__)

PHANTOM_CLASSES = ("background", "organ", "vessel", "nerve", "lesion")
LATERAL_PHANTOM_CLASSES = ("background", "right_lobe", "left_lobe", "vessel", "nerve", "lesion")
THORAX_PHANTOM_CLASSES = ("background", "right_lung", "left_lung", "heart", "clavicles", "nodule")
LAYOUTS = {"standard": PHANTOM_CLASSES, "lateral": LATERAL_PHANTOM_CLASSES, "thorax": THORAX_PHANTOM_CLASSES}
# class index -> the standard class whose intensity and texture it has
LOOKS = {
    "standard": tuple(range(len(PHANTOM_CLASSES))),
    "lateral": (0, 1, 1, 2, 3, 4),
    "thorax": (0, 2, 2, 1, 3, 4),  # dark lungs, a mid-grey heart, bright clavicles, the brightest nodule
}
THORAX_PRESENCE = {"lungs": 0.95, "heart": 0.9, "clavicles": 0.85}
LOBE_PRESENCE = 0.9
PHANTOM_VERSION = 1  # part of the cache folder name: bump when the drawing changes so old caches are not reused
RARE_CLASS = 4
RARE_FRACTION = 0.1
TEST_FRACTION = 1 / 6
DOMAINS = ("source", "shifted")
PRESENCE = {1: 0.85, 2: 0.7, 3: 0.5}  # probability that a (non-rare) class appears in an image
# mean intensity and texture amplitude per class, index = class
MEANS = (0.36, 0.58, 0.08, 0.82, 0.97)
TEXTURE = (0.06, 0.05, 0.02, 0.05, 0.02)
# Okabe-Ito colours, one per class index, so viewers show the classes; a mask's palette has those of its layout
COLOURS = ((0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (213, 94, 0), (204, 121, 167))
PALETTE = [value for colour in COLOURS for value in colour]


def _frequency_grid(shape: tuple[int, int]) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return fy**2 + fx**2


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by FFT with reflected borders (no scipy needed)."""
    if sigma <= 0:
        return image
    pad = min(int(np.ceil(3 * sigma)), *(s - 1 for s in image.shape))
    padded = np.pad(image, pad, mode="reflect")
    transfer = np.exp(-2 * np.pi**2 * sigma**2 * _frequency_grid(padded.shape))
    blurred = np.fft.ifft2(np.fft.fft2(padded) * transfer).real
    return blurred[pad : pad + image.shape[0], pad : pad + image.shape[1]]


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ``sigma`` pixels (periodic Gaussian-filtered noise)."""
    noise = rng.standard_normal(shape)
    field = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2 * np.pi**2 * sigma**2 * _frequency_grid(shape))).real
    return (field - field.mean()) / (field.std() + 1e-12)


class PhantomScene:
    """Geometry of one scene: a list of ``(class index, boolean mask)`` in drawing order."""

    def __init__(self, shape: tuple[int, int], rng: np.random.Generator, has_rare: bool, layout: str = "standard"):
        self.shape = shape
        self.rng = rng
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
        self.rows, self.cols = rows + 0.5, cols + 0.5
        self.size = float(min(shape))
        self.layers: list[tuple[int, np.ndarray]] = []
        if layout == "thorax":
            self._thorax(has_rare)
            return
        offset = 0 if layout == "standard" else 1  # the lateral layout's vessel, nerve and lesion come one index later
        organ = self._organ() if layout == "standard" else self._lobes()
        if self._present(2):
            vessels = np.zeros(shape, dtype=bool)
            for _ in range(int(rng.integers(1, 4))):
                vessels |= self.blob(self._centre(0.12), 0.045, 0.08, 0.8, 1.0, wobble=0.05)
            self.layers.append((2 + offset, vessels))
        if self._present(3):
            self.layers.append((3 + offset, self.blob(self._centre(0.2), 0.16, 0.26, 0.18, 0.3, wobble=0.04)))
        if has_rare:
            centre = self._centre_inside(organ) if organ is not None else self._centre(0.15)
            lesion = self.blob(centre, 0.04, 0.065, 0.8, 1.0, wobble=0.08, min_radius=2.0)
            self.layers.append((RARE_CLASS + offset, lesion))

    def _organ(self) -> np.ndarray | None:
        return self._maybe(1, lambda: self.blob(self._centre(0.3), 0.18, 0.32, 0.7, 1.0, wobble=0.12))

    def _lobes(self) -> np.ndarray | None:
        """``right_lobe`` (1) in the image's left half, ``left_lobe`` (2) in its right half, each present with
        probability :data:`LOBE_PRESENCE`; their union, or None."""
        union = np.zeros(self.shape, dtype=bool)
        for label, columns in ((1, (0.22, 0.34)), (2, (0.66, 0.78))):
            if self.rng.random() < LOBE_PRESENCE:
                centre = (self.rng.uniform(0.35, 0.65) * self.shape[0], self.rng.uniform(*columns) * self.shape[1])
                lobe = self.blob(centre, 0.13, 0.19, 0.6, 0.9, wobble=0.1)
                self.layers.append((label, lobe))
                union |= lobe
        return union if union.any() else None

    def _thorax(self, has_rare: bool) -> None:
        """Lungs (tall ellipses at a third and two thirds of the width), heart over them, clavicles at the top."""
        lungs = np.zeros(self.shape, dtype=bool)
        for label, column in ((1, 0.3), (2, 0.7)):
            if self.rng.random() < THORAX_PRESENCE["lungs"]:
                centre = (self.rng.uniform(0.52, 0.58) * self.shape[0], self.rng.uniform(-0.03, 0.03) + column)
                centre = (centre[0], centre[1] * self.shape[1])
                angle = np.pi / 2 + self.rng.uniform(-0.12, 0.12)
                lung = self.blob(centre, 0.34, 0.4, 0.5, 0.6, wobble=0.06, angle=angle)
                self.layers.append((label, lung))
                lungs |= lung
        if self.rng.random() < THORAX_PRESENCE["heart"]:
            centre = (self.rng.uniform(0.6, 0.68) * self.shape[0], self.rng.uniform(0.48, 0.56) * self.shape[1])
            self.layers.append((3, self.blob(centre, 0.15, 0.2, 0.7, 0.9, wobble=0.06)))
        if self.rng.random() < THORAX_PRESENCE["clavicles"]:
            bars = np.zeros(self.shape, dtype=bool)
            for column, tilt in ((0.3, 0.25), (0.7, -0.25)):
                centre = (self.rng.uniform(0.14, 0.2) * self.shape[0], column * self.shape[1])
                bars |= self.blob(centre, 0.2, 0.24, 0.12, 0.16, wobble=0.03, angle=tilt + self.rng.uniform(-0.1, 0.1))
            self.layers.append((4, bars))
        if has_rare:
            centre = self._centre_inside(lungs) if lungs.any() else self._centre(0.25)
            self.layers.append((5, self.blob(centre, 0.04, 0.065, 0.8, 1.0, wobble=0.08, min_radius=2.0)))

    def _present(self, label: int) -> bool:
        return bool(self.rng.random() < PRESENCE[label])

    def _maybe(self, label: int, draw) -> np.ndarray | None:
        if not self._present(label):
            return None
        mask = draw()
        self.layers.append((label, mask))
        return mask

    def _centre(self, margin: float) -> tuple[float, float]:
        low, high = margin, 1.0 - margin
        return (self.rng.uniform(low, high) * self.shape[0], self.rng.uniform(low, high) * self.shape[1])

    def _centre_inside(self, mask: np.ndarray) -> tuple[float, float]:
        rows, cols = np.nonzero(mask)
        pick = int(self.rng.integers(len(rows)))
        return (rows[pick] + 0.5, cols[pick] + 0.5)

    def blob(
        self, centre, r_min, r_max, aspect_min, aspect_max, wobble: float, min_radius: float = 1.5, angle=None
    ) -> np.ndarray:
        """Rotated ellipse (semi-axes as fractions of the image size) with a wavy outline; a random angle unless
        ``angle`` (radians, the major axis from the horizontal) is given."""
        radius = max(self.rng.uniform(r_min, r_max) * self.size, min_radius)
        minor = max(radius * self.rng.uniform(aspect_min, aspect_max), min_radius)
        angle = self.rng.uniform(0, np.pi) if angle is None else angle
        dy, dx = self.rows - centre[0], self.cols - centre[1]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        theta = np.arctan2(v, u)
        outline = np.ones_like(theta)
        for harmonic in (2, 3, 5):
            outline += wobble * self.rng.uniform(-1, 1) * np.cos(harmonic * theta + self.rng.uniform(0, 2 * np.pi))
        return (u / radius) ** 2 + (v / minor) ** 2 <= outline**2

    def label_map(self) -> np.ndarray:
        label = np.zeros(self.shape, dtype=np.uint8)
        for index, mask in self.layers:
            label[mask] = index
        return label


def render_phantom(
    shape: tuple[int, int], seed: int, index: int, has_rare: bool, domain: str = "source", layout: str = "standard"
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom pair: (image float32 in [0, 1], label uint8 class indices), both of ``shape``."""
    _check(domain, layout)
    scene = PhantomScene(shape, np.random.default_rng([seed, index, 0]), has_rare, layout)
    label = scene.label_map()
    looks = np.asarray(LOOKS[layout], dtype=np.uint8)[label]
    look = np.random.default_rng([seed, index, 1 + DOMAINS.index(domain)])
    size = float(min(shape))
    image = MEANS[0] + TEXTURE[0] * smooth_field(look, shape, size / 10) + 0.04 * smooth_field(look, shape, size / 40)
    for label_index in range(1, len(PHANTOM_CLASSES)):
        inside = looks == label_index
        if inside.any():
            sigma = size / (12 if label_index == 1 else 40)  # the organ has a coarse texture, the rest a fine one
            image[inside] = MEANS[label_index] + TEXTURE[label_index] * smooth_field(look, shape, sigma)[inside]
    if domain == "source":
        image = gaussian_blur(image, 0.6) + 0.03 * look.standard_normal(shape)
    else:
        speckle = 1.0 + 0.5 * gaussian_blur(look.standard_normal(shape), 0.7)  # correlated grain, mean 1, std ~0.2
        image = np.clip(0.2 + 0.7 * gaussian_blur(image, 1.0), 0, 1) ** 1.6
        image = image * speckle + 0.02 * look.standard_normal(shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), label


def _check(domain: str, layout: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")


def _rare_images(num_images: int, seed: int) -> set[int]:
    count = max(1, round(RARE_FRACTION * num_images)) if num_images > 1 else 0
    return set(np.random.default_rng([seed, 1]).permutation(num_images)[:count].tolist())


def _test_ids(num_images: int, seed: int, rare: set[int]) -> set[int]:
    """About 1/6 of the images, stratified so the rare class is in train and test alike."""
    rng = np.random.default_rng([seed, 2])
    test: set[int] = set()
    for group in (sorted(rare), sorted(set(range(num_images)) - rare)):
        count = int(round(TEST_FRACTION * len(group)))
        test.update(rng.permutation(group)[:count].tolist() if count else [])
    return test


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    image_size: int | Sequence[int] = 64,
    num_images: int = 240,
    seed: int = 0,
    domain: str = "source",
    layout: str = "standard",
) -> None:
    """Write a phantom data set (images/, masks/, classes.json, split_*.txt, datalist.json) into ``out_dir``."""
    _check(domain, layout)
    shape = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(s) for s in image_size)
    if len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"image_size must be an int or (height, width) of at least 8 pixels, got {image_size!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    width = max(4, len(str(num_images - 1)))
    ids = [f"{i:0{width}d}" for i in range(num_images)]
    rare = _rare_images(num_images, seed)
    for i, name in enumerate(ids):
        image, label = render_phantom(shape, seed, i, i in rare, domain, layout)
        Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(out / "images" / f"{name}.png")
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(PALETTE[: 3 * len(LAYOUTS[layout])])
        mask.save(out / "masks" / f"{name}.png")
    test = _test_ids(num_images, seed, rare)
    splits = {
        "train": [n for i, n in enumerate(ids) if i not in test],
        "test": [n for i, n in enumerate(ids) if i in test],
    }
    classes = {str(i): name for i, name in enumerate(LAYOUTS[layout])}
    (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    for split, names in splits.items():
        (out / f"split_{split}.txt").write_text("".join(f"{n}\n" for n in names))
    generator = {"version": PHANTOM_VERSION, "seed": seed, "image_size": list(shape), "domain": domain}
    if layout != "standard":
        generator["layout"] = layout
    datalist = {
        "name": f"monai-genaug phantoms ({domain} domain{', ' + layout + ' layout' if layout != 'standard' else ''})",
        "description": "deterministic 2D phantoms generated by common.data.phantom",
        "generator": generator,
        "labels": classes,
        "numTraining": len(splits["train"]),
        "numTest": len(splits["test"]),
        "training": [{"image": f"images/{n}.png", "label": f"masks/{n}.png"} for n in splits["train"]],
        "test": [{"image": f"images/{n}.png", "label": f"masks/{n}.png"} for n in splits["test"]],
    }
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n")


def default_data_root() -> Path:
    """``$MONAI_GENAUG_DATA`` or ``~/.cache/monai_genaug``."""
    return Path(os.environ.get("MONAI_GENAUG_DATA") or Path.home() / ".cache" / "monai_genaug").expanduser()


def phantom_dataset(
    root: str | os.PathLike | None = None,
    image_size: int | Sequence[int] = 64,
    num_images: int = 240,
    seed: int = 0,
    domain: str = "source",
    layout: str = "standard",
) -> str:
    """Directory of the phantom data set for these arguments, generated on first use.

    Generation happens in a hidden temporary folder next to the target, renamed into place when complete, so
    concurrent or interrupted runs never expose a half-written set (the loser of a race discards its copy).
    """
    _check(domain, layout)
    shape = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(s) for s in image_size)
    base = Path(root).expanduser() if root is not None else default_data_root()
    kind = domain if layout == "standard" else f"{layout}_{domain}"
    target = base / f"phantoms_v{PHANTOM_VERSION}_{kind}_{shape[0]}x{shape[1]}_n{num_images}_seed{seed}"
    if target.is_dir():
        return str(target)
    base.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=base)
    try:
        write_phantom_dataset(tmp, shape, num_images, seed, domain, layout)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            logger.info("phantom set %s was completed by another process; using it", target)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("phantom data set ready at %s", target)
    return str(target)
