"""Image folders: which layout a folder has, which file belongs to which split and class, and
loading it as a Dataset.

Accepted layouts (class names are the `<class>` folder names, sorted):

* `root/<class>/*`: all three splits are drawn from it, stratified and seeded;
* split folders, each holding the same `<class>/` folders:
  `root/{train,val,test}/` is used as given; `root/{train,test}/` draws val from train;
  `root/{train,val}/` draws test from train; `root/train/` alone draws val and test from train.
  What is drawn from train keeps the proportions of `split` (by default 70/15/15).

Anything else is refused in one line naming these layouts: split folders beside other folders,
split folders without `train/`, split folders under another name (`Train/`, or `validation/` beside
split folders), and split folders whose class folders differ. A folder called `train`, `val` or
`test` is a split, never a class; a synonym such as `valid/` among class folders stays a class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gaplab.cache import decode_with_cache, default_cache_dir
from gaplab.config import image_size_problem, seed_problem
from gaplab.dataset import DEFAULT_SPLIT, SPLIT_NAMES, DataError, Dataset, Split, content_digest
from gaplab.images import IMAGE_EXTENSIONS
from gaplab.splits import check_class_sizes, drawn_fractions, split_by_layout

ACCEPTED_LAYOUTS = (
    "accepted layouts: root/<class>/ folders of images, or split folders each holding the same <class>/ "
    "folders: train/val/test, train/test, train/val, or train/ alone"
)
# Names people give split folders, so such a folder is refused with its rename rather than read as a class.
_SPLIT_SYNONYMS = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}


@dataclass(frozen=True)
class FolderListing:
    """An image folder's files, found without decoding: each file's class label and split folder."""

    root: Path
    layout: tuple[str, ...]  # the split folders, in SPLIT_NAMES order; () for class folders under root
    class_names: tuple[str, ...]
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    groups: tuple[int, ...]  # index into layout
    ignored_files: int


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _split_name(folder: str) -> str | None:
    """The split a folder name means (any case, or a common synonym), or None."""
    lowered = folder.lower()
    return lowered if lowered in SPLIT_NAMES else _SPLIT_SYNONYMS.get(lowered)


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
    """The split folders under root, () for class folders; DataError for any other layout."""
    folders = [entry.name for entry in sorted(root.iterdir()) if entry.is_dir() and not _is_hidden(entry)]
    splits = [name for name in folders if name in SPLIT_NAMES]
    others = [name for name in folders if name not in SPLIT_NAMES]
    renames = {name: _split_name(name) for name in others if _split_name(name)}
    # A synonym alone can be a class ('valid' beside 'invalid'); a differently cased split name, or
    # folders that are all split names, cannot.
    misnamed = any(name.lower() in SPLIT_NAMES for name in renames) or (folders and len(renames) == len(folders))
    if not splits and not misnamed:
        return ()
    if others:
        fixes = [f"rename {', '.join(f'{name}/ to {split}/' for name, split in renames.items())}"] if renames else []
        if len(renames) < len(others):
            fixes.append("move the class folders into the split folders, or rename a split folder that is a class")
        shown = ", ".join(f"{name}/" for name in others[:4]) + (", ..." if len(others) > 4 else "")
        found = (f"mixes split folders ({', '.join(f'{name}/' for name in splits)}) with other folders ({shown})"
                 if splits else f"has split folders under other names ({shown})")
        raise DataError(f"{root} {found}; {' and '.join(fixes)} ({ACCEPTED_LAYOUTS}).")
    layout = tuple(name for name in SPLIT_NAMES if name in splits)
    if "train" not in layout:
        raise DataError(f"{root} has split folder(s) {', '.join(f'{name}/' for name in layout)} but no train/; "
                        f"add {root / 'train'}/ with one folder per class ({ACCEPTED_LAYOUTS}).")
    return layout


def _check_classes(where: Path, classes: dict[str, list]) -> None:
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
    _check_no_empty_class(where, classes)


def _check_no_empty_class(where: Path, classes: dict[str, list]) -> None:
    empty = sorted(name for name, files in classes.items() if not files)
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(repr(name) for name in empty)} in {where} hold no images; "
            "add images or remove the folder(s)."
        )


def _check_same_classes(root: Path, per_split: dict[str, dict[str, list[Path]]]) -> None:
    """Every split folder holds train's class folders and no others; the error names each difference."""
    trained = per_split["train"]
    problems = []
    for name in sorted(trained):
        missing = [split for split, classes in per_split.items() if name not in classes]
        if missing:
            problems.append(f"class {name!r} is missing from {', '.join(f'{split}/' for split in missing)}")
    for split, classes in per_split.items():
        extra = sorted(set(classes) - set(trained))
        if extra:
            problems.append(f"{split}/ has class(es) {', '.join(repr(name) for name in extra)} that train/ lacks")
    if problems:
        raise DataError(f"the split folders of {root} hold different classes: {'; '.join(problems)}. Every split "
                        "folder needs the same class folders: add the missing ones or remove the extra ones.")


def list_image_folder(root: str | os.PathLike, split: tuple[float, float, float] = DEFAULT_SPLIT) -> FolderListing:
    """List an image folder's images by split folder and class without decoding any.

    Raises DataError for a missing path, a layout that is not accepted, or classes that cannot be
    trained on (none, one, an empty class folder, split folders with different classes, or a train
    class with too few images to draw the missing splits of `split` from).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass a folder with one subfolder of images per class.")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a folder; pass a folder with one subfolder per class.")
    layout = _split_layout(root)
    if layout:
        per_split = {}
        # The split folders themselves are not counted as ignored; files beside them are.
        ignored = sum(1 for entry in root.iterdir() if entry.is_file())
        for name in layout:
            per_split[name], split_ignored = _list_class_folder(root / name)
            ignored += split_ignored
        _check_same_classes(root, per_split)
        _check_classes(root / "train", per_split["train"])
        for name in layout[1:]:
            _check_no_empty_class(root / name, per_split[name])
    else:
        classes, ignored = _list_class_folder(root)
        _check_classes(root, classes)
        per_split = {"": classes}
    train_classes = next(iter(per_split.values()))
    check_class_sizes({name: len(files) for name, files in sorted(train_classes.items())},
                      drawn_fractions(layout, split), str(root / "train") if layout else str(root))
    class_names = tuple(sorted(train_classes))
    files, labels, groups = [], [], []
    for group, classes in enumerate(per_split.values()):
        for label, name in enumerate(class_names):
            files += classes[name]
            labels += [label] * len(classes[name])
            groups += [group] * len(classes[name])
    return FolderListing(root, layout, class_names, tuple(files), tuple(labels), tuple(groups), ignored)


def load_image_folder(
    root: str | os.PathLike,
    image_size: int,
    *,
    split: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
    skip_bad_images: bool = False,
    cache_dir: str | os.PathLike | None | bool = True,
) -> Dataset:
    """Load an image folder in one of the accepted layouts (see the module docstring) as a
    stratified train/val/test Dataset.

    cache_dir: a folder for decoded arrays; True (the default) means `default_cache_dir()` (none when
    GAPLAB_CACHE_DIR=off), None or False disables caching.
    Bad images raise DataError naming each file, unless skip_bad_images is set, in which case
    they are skipped and listed in `Dataset.skipped_files`.
    """
    if problem := image_size_problem(image_size) or seed_problem(seed):
        raise DataError(problem)
    listing = list_image_folder(root, split)
    root = listing.root
    if cache_dir is True:
        cache_dir = default_cache_dir()
    elif cache_dir is False:
        cache_dir = None
    decoded = decode_with_cache(root, list(listing.files), list(listing.labels), list(listing.groups),
                                image_size, skip_bad_images, cache_dir)
    x, y = decoded.images, decoded.labels
    if decoded.skipped:
        # Skipping may have emptied a class in some split folder; check again with what is left.
        for group, name in enumerate(listing.layout or ("",)):
            in_group = y[decoded.groups == group]
            remaining = {cls: [None] * int(np.sum(in_group == label)) for label, cls in enumerate(listing.class_names)}
            if group == 0:
                _check_classes(root / name, remaining)
            else:
                _check_no_empty_class(root / name, remaining)

    where = str(root / "train") if listing.layout else str(root)
    parts = split_by_layout(listing.layout, y, decoded.groups, split, seed, listing.class_names, where)
    train, val, test = (Split(x[p], y[p]) for p in parts)
    return Dataset(
        name=root.resolve().name,
        class_names=listing.class_names,
        train=train,
        val=val,
        test=test,
        digest=content_digest(x, y, *parts),
        source=str(root.resolve()),
        from_cache=decoded.from_cache,
        skipped_files=tuple(decoded.skipped),
        ignored_files=listing.ignored_files,
        decode_seconds=decoded.seconds,
        split_layout="/".join(listing.layout) if listing.layout else "stratified",
    )
