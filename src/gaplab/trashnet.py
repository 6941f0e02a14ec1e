"""The real photos behind the README's results, rebuilt from a downloaded copy of the public TrashNet dataset.

    python -m gaplab.trashnet --source dataset-resized.zip --out trashnet150
    python -m gaplab.trashnet --source ~/Downloads/trashnet/data/dataset-resized --out ../shared/data/trashnet150

TrashNet (Gary Thung and Mindy Yang, 2016; MIT license; https://github.com/garythung/trashnet, file
data/dataset-resized.zip) holds 2,527 photos of six classes: cardboard 403, glass 501, metal 410, paper 594,
plastic 482, trash 137. The copy the README's results used (`trashnet150`) is all of them at 150x150, as the
public repository JMadiedo/RecycleNet resized them: portrait photos turned a quarter turn to landscape, then
every photo squashed (not cropped) to a square, saved as JPEG at quality 75, one folder per class, file
names kept. This command does the same to the folder or zip file you downloaded, and refuses a copy whose
class counts differ. Resampling may differ from RecycleNet's in the last bits of each pixel, so a study on
the rebuilt folder reproduces the README's numbers within their noise, not bit for bit.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from gaplab.config import image_size_problem
from gaplab.dataset import DataError
from gaplab.usage import ArgumentParser, fail

SOURCE_URL = "https://github.com/garythung/trashnet"
# Images per class in TrashNet's data/dataset-resized, and in trashnet150.
TRASHNET_COUNTS = {"cardboard": 403, "glass": 501, "metal": 410, "paper": 594, "plastic": 482, "trash": 137}
IMAGE_SIZE = 150
JPEG_QUALITY = 75
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# One source image: its file name and a function that returns its bytes.
Member = tuple[str, Callable[[], bytes]]


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(_IMAGE_SUFFIXES)


def _from_folder(root: Path, classes: tuple[str, ...]) -> dict[str, list[Member]]:
    """The images of the shallowest folder under `root` that holds a subfolder for every class."""
    for folder, subfolders, _ in sorted(os.walk(root), key=lambda entry: entry[0].count(os.sep)):
        if "__MACOSX" in Path(folder).parts or not set(classes) <= set(subfolders):
            continue
        found: dict[str, list[Member]] = {}
        for name in classes:
            files = sorted(p for p in (Path(folder) / name).iterdir() if p.is_file() and _is_image(p.name))
            found[name] = [(p.name, p.read_bytes) for p in files]
        return found
    raise DataError(f"--source={str(root)!r} has no folder holding the class folders {', '.join(classes)}; pass "
                    f"TrashNet's data/dataset-resized (or the zip file it unpacks from), from {SOURCE_URL}.")


def _from_zip(path: Path, classes: tuple[str, ...]) -> dict[str, list[Member]]:
    """The images of the shallowest folder in the zip file that holds a folder for every class."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"--source={str(path)!r} cannot be read as a zip file ({error}); pass TrashNet's "
                        f"dataset-resized.zip, or the folder it unpacks to.") from None
    by_prefix: dict[str, dict[str, list[str]]] = {}
    for name in archive.namelist():
        if name.startswith("__MACOSX/") or not _is_image(name) or "/" not in name:
            continue
        folder = name.rsplit("/", 1)[0]
        prefix, _, label = folder.rpartition("/")
        if label in classes:
            by_prefix.setdefault(prefix, {}).setdefault(label, []).append(name)
    for prefix in sorted(by_prefix, key=lambda p: (p.count("/") + bool(p), p)):
        if set(by_prefix[prefix]) == set(classes):
            return {label: [(n.rsplit("/", 1)[-1], lambda n=n: archive.read(n))
                            for n in sorted(by_prefix[prefix][label])] for label in classes}
    raise DataError(f"--source={str(path)!r}: the zip file has no folder holding the class folders "
                    f"{', '.join(classes)}; pass TrashNet's dataset-resized.zip from {SOURCE_URL}.")


def list_source(source: str | os.PathLike,
                classes: tuple[str, ...] = tuple(TRASHNET_COUNTS)) -> dict[str, list[Member]]:
    """The images of a downloaded TrashNet, by class: a folder (searched for the class folders) or a zip file."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_folder(path, classes)
    if path.is_file():
        return _from_zip(path, classes)
    raise DataError(f"--source={str(source)!r} does not exist; download TrashNet's data/dataset-resized.zip from "
                    f"{SOURCE_URL} and pass the zip file or the folder it unpacks to.")


def square(data: bytes, image_size: int = IMAGE_SIZE):
    """One photo as trashnet150 has it: RGB, a portrait turned a quarter turn, squashed to `image_size` square."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    if image.height > image.width:
        image = image.transpose(Image.Transpose.ROTATE_90)
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


def build_trashnet(source: str | os.PathLike, out: str | os.PathLike, image_size: int = IMAGE_SIZE,
                   expected: dict[str, int] | None = None) -> dict[str, int]:
    """Write every image of `source` (see `list_source`) to `out`/<class>/<name>.jpg as `square` makes it; the
    images written per class. `expected` (default TRASHNET_COUNTS) is checked before anything is written, and
    `out` must not exist or be empty: it appears whole, or not at all."""
    expected = TRASHNET_COUNTS if expected is None else expected
    problem = image_size_problem(image_size)
    if problem:
        raise DataError(f"--{problem}")
    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"--out={str(out)!r} already exists and is not an empty folder; pass a new folder, so "
                        "nothing there is overwritten.")
    found = list_source(source, tuple(expected))
    counts = {name: len(members) for name, members in found.items()}
    if counts != expected:
        differ = ", ".join(f"{name} {counts[name]} (expected {expected[name]})" for name in expected
                           if counts[name] != expected[name])
        raise DataError(f"--source={str(source)!r} is not the public TrashNet: {differ}; download "
                        f"data/dataset-resized.zip from {SOURCE_URL}.")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a build that was stopped
    for name, members in found.items():
        (partial / name).mkdir(parents=True)
        for file_name, read in members:
            try:
                image = square(read(), image_size)
            except (UnidentifiedImageError, OSError) as error:
                shutil.rmtree(partial, ignore_errors=True)
                raise DataError(f"--source={str(source)!r}: {name}/{file_name} cannot be decoded ({error}); "
                                "download the dataset again.") from None
            image.save(partial / name / f"{Path(file_name).stem}.jpg", "JPEG", quality=JPEG_QUALITY)
    if target.exists():
        target.rmdir()  # empty, checked above
    partial.rename(target)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m gaplab.trashnet", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help=f"TrashNet's data/dataset-resized.zip ({SOURCE_URL}) or the folder it unpacks to")
    parser.add_argument("--out", default="trashnet150", help="new folder for the images (default %(default)s)")
    parser.add_argument("--image_size", "--image-size", type=int, default=IMAGE_SIZE,
                        help="pixels per side (default %(default)s, as the README's results)")
    args = parser.parse_args(argv)
    try:
        counts = build_trashnet(args.source, args.out, args.image_size)
    except DataError as error:
        return fail(str(error))
    print(f"{sum(counts.values())} images at {args.image_size}x{args.image_size} in {args.out}: "
          + ", ".join(f"{name} {count}" for name, count in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
