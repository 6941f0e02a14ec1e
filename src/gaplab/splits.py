"""Splitting labelled images into train/val/test: stratified and seeded, and the splits an image
folder's split folders leave missing drawn from its train folder."""

from __future__ import annotations

import math

import numpy as np

from gaplab.config import seed_problem
from gaplab.dataset import DEFAULT_SPLIT, DataError, Dataset, Split, content_digest


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, ...], seed: int, class_names: tuple[str, ...], where: str
) -> list[np.ndarray]:
    """Indices for each fraction, stratified per class and seeded; every part gets each class.

    Each part of each class gets round(n * fraction) images but at least one, and the first part
    (training) takes the rest, so a class needs at least one image per part.
    """
    _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    check_class_sizes({name: int(np.sum(labels == label)) for label, name in enumerate(class_names)},
                      fractions, where)
    for label in range(len(class_names)):
        indices = rng.permutation(np.flatnonzero(labels == label))
        sizes = [max(1, round(len(indices) * f)) for f in fractions[1:]]
        if len(indices) - sum(sizes) < 1:
            sizes[sizes.index(max(sizes))] -= 1
        start = len(indices) - sum(sizes)
        parts[0].append(indices[:start])
        for part, size in zip(parts[1:], sizes):
            part.append(indices[start : start + size])
            start += size
    return [np.sort(np.concatenate(part)) for part in parts]


def _check_fractions(fractions: tuple[float, ...]) -> None:
    if any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(f"split fractions {fractions} must be positive and sum to 1, e.g. (0.7, 0.15, 0.15).")


def check_class_sizes(sizes: dict[str, int], fractions: tuple[float, ...], where: str) -> None:
    """DataError naming the first class with fewer images than `fractions` has parts (each part needs one)."""
    for name, size in sizes.items():
        if size < len(fractions):
            shown = "/".join(f"{round(f * 100)}" for f in fractions)
            raise DataError(
                f"class {name!r} in {where} has {size} image(s); the {shown} split "
                f"needs at least {len(fractions)} per class. Add images to that class or remove it."
            )


def drawn_fractions(layout: tuple[str, ...], split: tuple[float, float, float]) -> tuple[float, ...]:
    """The fractions train is split into for the split folders `layout` (see `split_by_layout`); () when
    train/, val/ and test/ are all given and nothing is drawn."""
    if len(split) != 3:
        raise DataError(f"split {split} must be three fractions (train, val, test), e.g. (0.7, 0.15, 0.15).")
    _check_fractions(tuple(split))
    train_share, val_share, test_share = split
    present = set(layout or ("train",))
    if {"val", "test"} <= present:
        return ()
    if "test" in present:
        return train_share / (train_share + val_share), val_share / (train_share + val_share)
    if "val" in present:
        return train_share / (train_share + test_share), test_share / (train_share + test_share)
    return tuple(split)


def split_by_layout(
    layout: tuple[str, ...],
    labels: np.ndarray,
    groups: np.ndarray,
    split: tuple[float, float, float],
    seed: int,
    class_names: tuple[str, ...],
    where: str,
) -> list[np.ndarray]:
    """Train, val and test indices for images from the split folders `layout` (`groups` indexes it).

    Split folders that are present are used as given; the missing ones are drawn from train,
    stratified, in the proportions of `split`: val from train for train/test, test from train for
    train/val, and both for train alone or plain class folders (layout ()).
    """
    in_group = {name: np.flatnonzero(groups == index) for index, name in enumerate(layout or ("train",))}
    in_train = in_group["train"]
    fractions = drawn_fractions(layout, split)
    if not fractions:
        return [in_train, in_group["val"], in_group["test"]]
    drawn = [in_train[part] for part in stratified_split(labels[in_train], fractions, seed, class_names, where)]
    if "test" in in_group:
        return [*drawn, in_group["test"]]
    if "val" in in_group:
        return [drawn[0], in_group["val"], drawn[1]]
    return drawn


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
    if problem := seed_problem(seed):
        raise DataError(problem)
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] or len(images) != len(labels):
        raise DataError(f"{name}: images of shape {images.shape} and {len(labels)} labels do not match; pass "
                        "square RGB images as (N, size, size, 3) and one label per image.")
    parts = stratified_split(labels, tuple(split), seed, tuple(class_names), name)
    train, val, test = (Split(images[p], labels[p]) for p in parts)
    return Dataset(name=name, class_names=tuple(class_names), train=train, val=val, test=test,
                   digest=content_digest(images, labels, *parts), source=source)
