"""Decoding a folder's files once: decoded arrays are cached on disk under a key of the file list,
their sizes, mtimes and ctimes, and the image size, so a second load of the same folder decodes nothing.

The cache lives in $GAPLAB_CACHE_DIR, else ~/.cache/gaplab/data; GAPLAB_CACHE_DIR=off reads and
writes no cache, and deleting the folder clears it. Any change to a file, its permissions included
(chmod, or contents rewritten with the old mtime put back, both change the ctime), changes the key,
so a file that became unreadable is decoded again and named, never served from the cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gaplab import images as image_files
from gaplab.dataset import DataError

# Bump when decoding changes, so caches written by older code are not reused.
_CACHE_FORMAT = 2


# GAPLAB_CACHE_DIR set to this turns the cache off.
CACHE_OFF = "off"


def default_cache_dir() -> Path | None:
    """Where decoded arrays are cached: $GAPLAB_CACHE_DIR, else ~/.cache/gaplab/data; None (no cache) when
    GAPLAB_CACHE_DIR is `off`."""
    configured = os.environ.get("GAPLAB_CACHE_DIR")
    if configured and configured.strip().lower() == CACHE_OFF:
        return None
    return Path(configured) if configured else Path.home() / ".cache" / "gaplab" / "data"


def cache_key(root: Path, files: list[Path], image_size: int, skip_bad_images: bool) -> str:
    """The cache entry's name: changes with any file added, removed, renamed, resized, touched, rewritten or
    given other permissions (the ctime, which no user can set back)."""
    digest = hashlib.sha256(f"{_CACHE_FORMAT}|{image_size}|{skip_bad_images}".encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}\n"
                      .encode())
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


@dataclass
class Decoded:
    """The readable files' images, labels and split folder index (`groups`), and what was skipped."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    skipped: list[str] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0


def decode_with_cache(
    root: Path,
    files: list[Path],
    labels: list[int],
    groups: list[int],
    image_size: int,
    skip_bad_images: bool,
    cache_dir: Path | None,
) -> Decoded:
    """Decode `files` (or read them from `cache_dir`); unreadable files raise DataError naming
    each one, unless skip_bad_images is set."""
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{cache_key(root, files, image_size, skip_bad_images)}.npz"
        cached = _read_cache(cache_path)
        if cached is not None:
            return Decoded(
                cached["images"], cached["labels"], cached["groups"], [str(s) for s in cached["skipped"]], True
            )
    started = time.perf_counter()
    decoded = image_files.decode_files(files, image_size)
    bad = [(file, reason) for file, reason in zip(files, decoded) if isinstance(reason, str)]
    if bad and not skip_bad_images:
        listed = "\n".join(f"  {file}: {reason}" for file, reason in bad[:10])
        more = f"\n  … and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} file(s) under {root} could not be read as images:\n{listed}{more}\n"
            "Remove or replace them, or pass skip_bad_images=True (--skip_bad_images true) to skip them."
        )
    keep = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
    images = (
        np.stack([decoded[i] for i in keep]) if keep else np.zeros((0, image_size, image_size, 3), np.uint8)
    )
    result = Decoded(
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
