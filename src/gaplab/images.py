"""Decoding image files of any common mode to uint8 RGB squares, in parallel."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def decode_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode one file to uint8 RGB (image_size, image_size, 3).

    Grayscale, palette, RGBA, CMYK and 16-bit images are converted; an animated GIF gives its
    first frame. Images are squashed to a square, as the seed's pipeline did.
    Raises OSError/ValueError (from Pillow) for unreadable files.
    """
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # Pillow's convert("RGB") clips 16-bit values to 255; scale them instead.
            wide = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") else max(float(wide.max()), 1.0)
            image = Image.fromarray(np.clip(wide / top * 255.0, 0, 255).astype(np.uint8), "L")
        elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent pixels would otherwise take arbitrary colours; put them on white.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _decode_or_error(path: Path, image_size: int) -> np.ndarray | str:
    try:
        return decode_image(path, image_size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"


def decode_files(paths: list[Path], image_size: int, workers: int | None = None) -> list[np.ndarray | str]:
    """Decode files in parallel; each entry is an array or the reason it could not be read."""
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    # Pillow releases the GIL while decoding and resizing, so threads scale without pickling.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: _decode_or_error(p, image_size), paths))
