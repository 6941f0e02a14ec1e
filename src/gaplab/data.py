"""Image data for gaplab: folders of photos or a built-in generated dataset, as uint8 arrays.

Two sources give the same `Dataset`:

* `load_image_folder(root, image_size)` reads `root/<class>/*.jpg` (or split folders
  `root/{train,val,test}/<class>/` and `root/{train,test}/<class>/`). Images are decoded once,
  in parallel, resized and converted to RGB, then cached on disk under a key of the file list,
  their sizes and mtimes, and the image size, so a second load of the same folder decodes nothing.
* `generate_shapes(image_size, n_images, seed)` draws six classes of shapes with colour,
  position, scale, background jitter and noise. It needs no download and is the default.

Splits are stratified and seeded; class names come from folder names in sorted order.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gaplab.config import MIN_IMAGE_SIZE

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DEFAULT_SPLIT = (0.70, 0.15, 0.15)
SPLIT_NAMES = ("train", "val", "test")
BUILTIN_NAME = "shapes"
# Bump when decoding changes, so caches written by older code are not reused.
_CACHE_FORMAT = 1


class DataError(ValueError):
    """Raised for data a user supplied that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, H, W, 3) and integer labels (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A train/val/test split of one image source, with what loading it found."""

    name: str
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    digest: str
    source: str
    from_cache: bool = False
    skipped_files: tuple[str, ...] = ()
    ignored_files: int = 0
    decode_seconds: float = 0.0
    split_layout: str = "generated"

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def size(self) -> int:
        return len(self.train) + len(self.val) + len(self.test)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Folder discovery
# ----------------------------------------------------------------------------------------------


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _list_class_folder(folder: Path) -> tuple[dict[str, list[Path]], int]:
    """Images per class under folder/<class>/, and how many non-image files were ignored."""
    classes: dict[str, list[Path]] = {}
    ignored = 0
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir():
            ignored += 1
            continue
        if _is_hidden(entry):
            continue
        images = []
        for file in sorted(entry.rglob("*")):
            if not file.is_file():
                continue
            if _is_hidden(file) or file.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored += 1
            else:
                images.append(file)
        classes[entry.name] = images
    return classes, ignored


def _split_layout(root: Path) -> tuple[str, ...]:
    present = {name for name in SPLIT_NAMES if (root / name).is_dir()}
    if {"train", "val", "test"} <= present:
        return ("train", "val", "test")
    if {"train", "test"} <= present:
        return ("train", "test")
    return ()


def _check_classes(where: Path, classes: dict[str, list[Path]]) -> None:
    with_images = {name: files for name, files in classes.items() if files}
    if not with_images:
        raise DataError(
            f"{where} holds no images. Put images ({', '.join(IMAGE_EXTENSIONS)}) in one "
            f"subfolder per class, e.g. {where}/cat/1.jpg and {where}/dog/1.jpg."
        )
    if len(with_images) < 2:
        only = next(iter(with_images))
        nested = [entry.name for entry in sorted((where / only).iterdir())
                  if entry.is_dir() and not _is_hidden(entry)] if (where / only).is_dir() else []
        if len(nested) >= 2:
            raise DataError(
                f"{where} has a single folder ({only!r}) whose subfolders ({', '.join(nested[:4])}"
                f"{', ...' if len(nested) > 4 else ''}) look like the classes; point --data_dir one level "
                f"deeper: {where / only}."
            )
        raise DataError(
            f"{where} has a single class ({only!r}); classification needs at least two class "
            f"folders with images, e.g. {where}/{only}/ and {where}/other/."
        )
    empty = sorted(set(classes) - set(with_images))
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(repr(name) for name in empty)} in {where} hold no images; "
            "add images or remove the folder(s)."
        )


# ----------------------------------------------------------------------------------------------
# Splitting
# ----------------------------------------------------------------------------------------------


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, ...], seed: int, class_names: tuple[str, ...], where: str
) -> list[np.ndarray]:
    """Indices for each fraction, stratified per class and seeded; every part gets each class.

    Each part of each class gets round(n * fraction) images but at least one, and the first part
    (training) takes the rest, so a class needs at least one image per part.
    """
    if any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(f"split fractions {fractions} must be positive and sum to 1, e.g. (0.7, 0.15, 0.15).")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for label in range(len(class_names)):
        indices = np.flatnonzero(labels == label)
        if len(indices) < len(fractions):
            shown = "/".join(f"{round(f * 100)}" for f in fractions)
            raise DataError(
                f"class {class_names[label]!r} in {where} has {len(indices)} image(s); the {shown} split "
                f"needs at least {len(fractions)} per class. Add images to that class or remove it."
            )
        indices = rng.permutation(indices)
        sizes = [max(1, round(len(indices) * f)) for f in fractions[1:]]
        if len(indices) - sum(sizes) < 1:
            sizes[sizes.index(max(sizes))] -= 1
        start = len(indices) - sum(sizes)
        parts[0].append(indices[:start])
        for part, size in zip(parts[1:], sizes):
            part.append(indices[start : start + size])
            start += size
    return [np.sort(np.concatenate(part)) for part in parts]


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where decoded arrays are cached: $GAPLAB_CACHE_DIR, else ~/.cache/gaplab/data."""
    configured = os.environ.get("GAPLAB_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "gaplab" / "data"


def _cache_key(root: Path, files: list[Path], image_size: int, skip_bad_images: bool) -> str:
    digest = hashlib.sha256(f"{_CACHE_FORMAT}|{image_size}|{skip_bad_images}".encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError):
        # A damaged cache entry is only a cache: decode again and overwrite it.
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    # Write then rename, so a concurrent reader never sees half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(buffer.getvalue())
    os.replace(handle.name, path)


# ----------------------------------------------------------------------------------------------
# Folder loading
# ----------------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray  # index into the split folder each image came from
    skipped: list[str] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0


def _decode_all(
    root: Path,
    files: list[Path],
    labels: list[int],
    groups: list[int],
    image_size: int,
    skip_bad_images: bool,
    cache_dir: Path | None,
) -> _Decoded:
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{_cache_key(root, files, image_size, skip_bad_images)}.npz"
        cached = _read_cache(cache_path)
        if cached is not None:
            return _Decoded(
                cached["images"], cached["labels"], cached["groups"], [str(s) for s in cached["skipped"]], True
            )
    started = time.perf_counter()
    decoded = decode_files(files, image_size)
    bad = [(file, reason) for file, reason in zip(files, decoded) if isinstance(reason, str)]
    if bad and not skip_bad_images:
        listed = "\n".join(f"  {file}: {reason}" for file, reason in bad[:10])
        more = f"\n  … and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} file(s) under {root} could not be read as images:\n{listed}{more}\n"
            "Remove or replace them, or pass skip_bad_images=True (--skip_bad_images) to skip them."
        )
    keep = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
    images = (
        np.stack([decoded[i] for i in keep]) if keep else np.zeros((0, image_size, image_size, 3), np.uint8)
    )
    result = _Decoded(
        images,
        np.asarray([labels[i] for i in keep], dtype=np.int32),
        np.asarray([groups[i] for i in keep], dtype=np.int32),
        [f"{file}: {reason}" for file, reason in bad],
        False,
        time.perf_counter() - started,
    )
    if cache_path is not None:
        _write_cache(
            cache_path,
            {
                "images": result.images,
                "labels": result.labels,
                "groups": result.groups,
                "skipped": np.asarray(result.skipped, dtype=str),
            },
        )
    return result


def _content_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def load_image_folder(
    root: str | os.PathLike,
    image_size: int,
    *,
    split: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
    skip_bad_images: bool = False,
    cache_dir: str | os.PathLike | None | bool = True,
) -> Dataset:
    """Load `root/<class>/*` (or split folders under root) as a stratified train/val/test Dataset.

    cache_dir: a folder for decoded arrays; True (the default) means `default_cache_dir()`,
    None or False disables caching.
    Bad images raise DataError naming each file, unless skip_bad_images is set, in which case
    they are skipped and listed in `Dataset.skipped_files`.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"image_size={image_size} is too small; use at least {MIN_IMAGE_SIZE} pixels.")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass a folder with one subfolder of images per class.")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a folder; pass a folder with one subfolder per class.")
    if cache_dir is True:
        cache_dir = default_cache_dir()
    elif cache_dir is False:
        cache_dir = None

    layout = _split_layout(root)
    ignored = 0
    if layout:
        per_group = []
        for name in layout:
            classes, group_ignored = _list_class_folder(root / name)
            ignored += group_ignored
            per_group.append(classes)
        _check_classes(root / "train", per_group[0])
        class_names = tuple(sorted(per_group[0]))
        for name, classes in zip(layout[1:], per_group[1:]):
            unknown = sorted(set(classes) - set(class_names))
            if unknown:
                raise DataError(
                    f"{root / name} has class folder(s) {unknown} that {root / 'train'} lacks; "
                    "every split must use the training classes."
                )
        # The split folders themselves are not counted as ignored files.
        ignored += sum(1 for entry in root.iterdir() if entry.is_file())
    else:
        classes, ignored = _list_class_folder(root)
        _check_classes(root, classes)
        class_names = tuple(sorted(classes))
        per_group = [classes]

    files, labels, groups = [], [], []
    for group, classes in enumerate(per_group):
        for label, name in enumerate(class_names):
            for file in classes.get(name, []):
                files.append(file)
                labels.append(label)
                groups.append(group)

    decoded = _decode_all(root, files, labels, groups, image_size, skip_bad_images, cache_dir)
    x, y = decoded.images, decoded.labels
    if len(decoded.skipped):
        # Skipping may have emptied a class; check again with what is left.
        remaining = {name: [None] * int(np.sum(y == label)) for label, name in enumerate(class_names)}
        _check_classes(root, remaining)  # type: ignore[arg-type]

    val_fraction = split[1] / (split[0] + split[1])
    if layout == ("train", "val", "test"):
        parts = [np.flatnonzero(decoded.groups == g) for g in range(3)]
    elif layout == ("train", "test"):
        in_train = np.flatnonzero(decoded.groups == 0)
        train_part, val_part = stratified_split(
            y[in_train], (1 - val_fraction, val_fraction), seed, class_names, str(root / "train")
        )
        parts = [in_train[train_part], in_train[val_part], np.flatnonzero(decoded.groups == 1)]
    else:
        parts = stratified_split(y, tuple(split), seed, class_names, str(root))

    train, val, test = (Split(x[p], y[p]) for p in parts)
    for name, part in zip(SPLIT_NAMES, (train, val, test)):
        if len(part) == 0:
            raise DataError(f"the {name} split of {root} is empty; add images to {root / name}.")
    return Dataset(
        name=root.resolve().name,
        class_names=class_names,
        train=train,
        val=val,
        test=test,
        digest=_content_digest(x, y, *parts),
        source=str(root.resolve()),
        from_cache=decoded.from_cache,
        skipped_files=tuple(decoded.skipped),
        ignored_files=ignored,
        decode_seconds=decoded.seconds,
        split_layout="/".join(layout) if layout else "stratified",
    )


# ----------------------------------------------------------------------------------------------
# Built-in generated dataset
# ----------------------------------------------------------------------------------------------

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "stripes")
# Defaults chosen so that a seed-bn model trained at these settings on 2 CPU cores shows the stale
# BatchNormalization statistics (see README, "The phenomenon on the built-in dataset").
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
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"image_size={image_size} is too small; use at least {MIN_IMAGE_SIZE} pixels.")
    if n_images < 3 * len(SHAPE_CLASSES):
        raise DataError(f"n_images={n_images} is too few; the built-in dataset needs at least 18 (3 per class).")
    rng = np.random.default_rng(seed)
    labels = np.arange(n_images, dtype=np.int32) % len(SHAPE_CLASSES)
    images = np.stack([_shape_image(SHAPE_CLASSES[label], image_size, rng) for label in labels])
    return dataset_from_arrays(
        images, labels, SHAPE_CLASSES, name=BUILTIN_NAME, seed=seed, split=split,
        source=f"generated:{BUILTIN_NAME}?image_size={image_size}&n_images={n_images}&seed={seed}",
    )


def dataset_from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    *,
    name: str,
    source: str,
    seed: int = 0,
    split: tuple[float, float, float] = DEFAULT_SPLIT,
) -> Dataset:
    """A Dataset from images (uint8, (N, H, W, 3)) and integer labels, split stratified and seeded
    exactly as image folders are; the digest covers the arrays and the split."""
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] or len(images) != len(labels):
        raise DataError(f"{name}: images of shape {images.shape} and {len(labels)} labels do not match; pass "
                        "square RGB images as (N, size, size, 3) and one label per image.")
    parts = stratified_split(labels, tuple(split), seed, tuple(class_names), name)
    train, val, test = (Split(images[p], labels[p]) for p in parts)
    return Dataset(name=name, class_names=tuple(class_names), train=train, val=val, test=test,
                   digest=_content_digest(images, labels, *parts), source=source)
