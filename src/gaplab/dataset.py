"""What every image source gives: a `Dataset` of train/val/test `Split`s, its digest, and `DataError`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

DEFAULT_SPLIT = (0.70, 0.15, 0.15)
SPLIT_NAMES = ("train", "val", "test")


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
    """A train/val/test split of one image source, with what loading it found.

    `split_layout` says where the splits came from: "generated" (built-in or arrays),
    "stratified" (class folders, all three splits drawn), or the split folders found
    ("train/val/test", "train/test", "train/val", "train"; the missing splits were drawn from train).
    """

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


def content_digest(*arrays: np.ndarray) -> str:
    """A short hash of the arrays' shapes and bytes: the images, the labels and the split indices."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
