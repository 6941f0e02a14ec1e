"""`python -m gaplab.trashnet`: trashnet150 rebuilt from a downloaded TrashNet, tested on generated images laid
out as the public dataset is (no network), and checked against ../shared/data/trashnet150 where it exists."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gaplab.trashnet import IMAGE_SIZE, TRASHNET_COUNTS, build_trashnet, main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trashnet150"
SMALL = {"cardboard": 3, "glass": 2, "metal": 2, "paper": 4, "plastic": 2, "trash": 1}


def _photo(portrait: bool) -> Image.Image:
    """32x24 (or 24x32) with a red first half and a blue second half along its long side."""
    pixels = np.zeros((24, 32, 3), np.uint8)
    pixels[:, :16, 0] = 255
    pixels[:, 16:, 2] = 255
    image = Image.fromarray(pixels)
    return image.transpose(Image.Transpose.ROTATE_270) if portrait else image


def _public_layout(root: Path, counts: dict[str, int]) -> Path:
    """trashnet/data/dataset-resized/<class>/<class><n>.jpg as the repository unpacks, with macOS litter;
    the first image of each class a portrait."""
    folder = root / "trashnet" / "data" / "dataset-resized"
    for name, count in counts.items():
        (folder / name).mkdir(parents=True)
        for number in range(1, count + 1):
            _photo(portrait=number == 1).save(folder / name / f"{name}{number}.jpg", quality=90)
        (folder / name / ".DS_Store").write_bytes(b"\0\1")
    (root / "trashnet" / "__MACOSX" / "glass").mkdir(parents=True)
    (root / "trashnet" / "__MACOSX" / "glass" / "._glass1.jpg").write_bytes(b"junk")
    return root / "trashnet"


def _zipped(folder: Path, path: Path) -> Path:
    """The folder as dataset-resized.zip holds it: dataset-resized/<class>/..., plus __MACOSX entries."""
    source = folder / "data" / "dataset-resized"
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(source.rglob("*")):
            if file.is_file():
                archive.write(file, f"dataset-resized/{file.relative_to(source).as_posix()}")
        archive.writestr("__MACOSX/dataset-resized/glass/._glass1.jpg", b"junk")
    return path


def _listing(folder: Path) -> dict[str, list[str]]:
    return {c.name: sorted(p.name for p in c.iterdir()) for c in sorted(folder.iterdir())}


def test_a_downloaded_folder_becomes_150px_squares_one_folder_per_class(tmp_path):
    source = _public_layout(tmp_path / "download", SMALL)
    counts = build_trashnet(source, tmp_path / "trashnet150", expected=SMALL)
    assert counts == SMALL
    built = tmp_path / "trashnet150"
    assert _listing(built) == {name: sorted(f"{name}{n}.jpg" for n in range(1, count + 1))
                               for name, count in sorted(SMALL.items())}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download", "trashnet150"]  # no partial folder left
    for path in built.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
    # Landscape kept as it is (red left, blue right); a portrait (red on top) turned a quarter turn to the left.
    for name in ("paper2.jpg", "paper1.jpg"):
        pixels = np.asarray(Image.open(built / "paper" / name)).astype(int)
        left, right = pixels[:, :60].mean(axis=(0, 1)), pixels[:, 90:].mean(axis=(0, 1))
        assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60, name


def test_the_zip_file_with_the_public_counts_builds_what_the_study_reads(tmp_path, capsys):
    from gaplab.data import list_image_folder

    archive = _zipped(_public_layout(tmp_path / "download", TRASHNET_COUNTS), tmp_path / "dataset-resized.zip")
    out = tmp_path / "photos"
    assert main(["--source", str(archive), "--out", str(out), "--image_size", "24"]) == 0
    assert capsys.readouterr().out == (f"2527 images at 24x24 in {out}: cardboard 403, glass 501, metal 410, "
                                       "paper 594, plastic 482, trash 137\n")
    assert {name: len(files) for name, files in _listing(out).items()} == TRASHNET_COUNTS
    listed = list_image_folder(out)
    assert listed.class_names == tuple(sorted(TRASHNET_COUNTS))


@pytest.mark.parametrize("case, expected", [
    ("fewer", "is not the public TrashNet: glass 1 (expected 2)"),
    ("missing", "does not exist; download TrashNet's data/dataset-resized.zip from https://github.com/garythung"),
    ("no classes", "has no folder holding the class folders cardboard, glass, metal, paper, plastic, trash"),
    ("not a zip", "cannot be read as a zip file"),
    ("out not empty", "already exists and is not an empty folder; pass a new folder"),
    ("broken image", "cannot be decoded"),
])
def test_bad_sources_are_one_line_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, case, expected):
    from gaplab import trashnet

    monkeypatch.setattr(trashnet, "TRASHNET_COUNTS", SMALL)
    source = _public_layout(tmp_path / "download", SMALL)
    out = tmp_path / "out"
    folder = source / "data" / "dataset-resized"
    if case == "fewer":
        (folder / "glass" / "glass2.jpg").unlink()
    elif case == "missing":
        source = tmp_path / "nowhere"
    elif case == "no classes":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "not a zip":
        source = tmp_path / "dataset-resized.zip"
        source.write_text("not a zip\n")
    elif case == "out not empty":
        out.mkdir()
        (out / "mine.txt").write_text("keep me\n")
    elif case == "broken image":
        (folder / "trash" / "trash1.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert main(["--source", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --") and len(err.strip().splitlines()) == 1 and expected in err, err
    if case == "out not empty":
        assert _listing(tmp_path)["out"] == ["mine.txt"]
    else:
        assert not out.exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/trashnet150 is not here")
def test_the_shared_copy_is_what_the_command_builds(tmp_path):
    """Same classes, counts, names, size and JPEG settings as ../shared/data/trashnet150 (its pixels come from
    the public files, which are not here)."""
    assert {name: len(files) for name, files in _listing(SHARED).items()} == TRASHNET_COUNTS
    assert _listing(SHARED)["trash"] == sorted(f"trash{n}.jpg" for n in range(1, 138))
    source = _public_layout(tmp_path / "download", SMALL)
    build_trashnet(source, tmp_path / "built", expected=SMALL)
    with Image.open(SHARED / "glass" / "glass1.jpg") as shared, Image.open(tmp_path / "built" / "glass" /
                                                                           "glass1.jpg") as built:
        assert shared.size == built.size == (150, 150) and shared.mode == built.mode == "RGB"
        assert shared.quantization == built.quantization  # JPEG quality 75
        assert shared.layers == built.layers == 3
