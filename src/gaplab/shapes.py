"""The built-in dataset: six classes of drawn shapes with colour, position, scale, background
jitter and noise. It needs no download and is the default."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from gaplab.config import image_size_problem, seed_problem
from gaplab.dataset import DEFAULT_SPLIT, DataError, Dataset
from gaplab.splits import dataset_from_arrays

BUILTIN_NAME = "shapes"
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "stripes")
# Defaults chosen so that a seed-bn model trained at these settings on 2 CPU cores shows the stale
# BatchNormalization statistics (see docs/phenomenon.md).
DEFAULT_IMAGE_SIZE = 32
DEFAULT_IMAGES = 1200


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, colour, width: int) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif kind == "cross":
        draw.line((cx - r, cy, cx + r, cy), fill=colour, width=width)
        draw.line((cx, cy - r, cx, cy + r), fill=colour, width=width)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif kind == "stripes":
        for offset in np.linspace(-r, r, 4):
            draw.line((cx - r, cy + offset, cx + r, cy + offset), fill=colour, width=max(1, width // 2))


def _shape_image(kind: str, image_size: int, rng: np.random.Generator) -> np.ndarray:
    # Draw at 4x and downsample, so small images still have anti-aliased edges.
    scale = 4
    side = image_size * scale
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    while True:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if sum(abs(a - b) for a, b in zip(colour, background)) > 150:
            break
    r = rng.uniform(0.25, 0.4) * side
    # Positions jitter around the centre: enough variety to need learning, little enough that a
    # few hundred images generalise.
    cx = side / 2 + rng.uniform(-1, 1) * (side / 2 - r) * 0.5
    cy = side / 2 + rng.uniform(-1, 1) * (side / 2 - r) * 0.5
    width = max(scale, int(r * rng.uniform(0.18, 0.3)))
    _draw_shape(draw, kind, cx, cy, r, colour, width)
    small = np.asarray(image.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.float32)
    small += rng.normal(0.0, 8.0, small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


def generate_shapes(
    image_size: int = DEFAULT_IMAGE_SIZE,
    n_images: int = DEFAULT_IMAGES,
    seed: int = 0,
    split: tuple[float, float, float] = DEFAULT_SPLIT,
) -> Dataset:
    """The built-in dataset: `n_images` drawn shapes in six balanced classes, deterministic in `seed`."""
    if problem := image_size_problem(image_size) or seed_problem(seed):
        raise DataError(problem)
    if n_images < 3 * len(SHAPE_CLASSES):
        raise DataError(f"n_images={n_images} is too few; the built-in dataset needs at least 18 (3 per class).")
    rng = np.random.default_rng(seed)
    labels = np.arange(n_images, dtype=np.int32) % len(SHAPE_CLASSES)
    images = np.stack([_shape_image(SHAPE_CLASSES[label], image_size, rng) for label in labels])
    return dataset_from_arrays(
        images, labels, SHAPE_CLASSES, name=BUILTIN_NAME, seed=seed, split=split,
        source=f"generated:{BUILTIN_NAME}?image_size={image_size}&n_images={n_images}&seed={seed}",
    )
