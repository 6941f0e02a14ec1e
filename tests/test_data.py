"""Image folders, the on-disk cache, splits, bad input and the built-in dataset."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from gaplab import images as image_module
from gaplab.cache import cache_key
from gaplab.data import DataError, decode_image, generate_shapes, load_image_folder
from tests.helpers import make_folder, write_image


def test_folder_loads_sorted_classes_resized_rgb(image_folder, tmp_path):
    data = load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")
    assert data.class_names == ("cat", "dog", "emu")
    assert data.train.x.shape[1:] == (16, 16, 3) and data.train.x.dtype == np.uint8
    assert data.size == 30 and data.name == "photos" and data.split_layout == "stratified"


def test_second_load_reads_cache_without_decoding(image_folder, tmp_path, monkeypatch):
    first = load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")
    assert not first.from_cache

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite a cache entry")

    monkeypatch.setattr(image_module, "decode_image", no_decoding)
    second = load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")
    assert second.from_cache
    assert second.digest == first.digest
    np.testing.assert_array_equal(second.train.x, first.train.x)


def test_cache_key_changes_with_files_and_image_size(image_folder, tmp_path):
    load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")
    assert not load_image_folder(image_folder, 20, cache_dir=tmp_path / "c").from_cache
    write_image(image_folder / "cat" / "extra.png", (1, 2, 3))
    changed = load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")
    assert not changed.from_cache and changed.size == 31


def test_a_file_that_became_unreadable_is_named_not_served_from_the_cache(image_folder, tmp_path):
    load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")
    photo = image_folder / "cat" / "3.png"
    before = photo.stat()
    # Same name, size and mtime: only the ctime tells the rewrite apart.
    photo.write_bytes(b"\0" * before.st_size)
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(DataError, match=r"1 file\(s\) under .* could not be read as images:\n  .*cat/3.png"):
        load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")


def test_gaplab_cache_dir_off_reads_and_writes_no_cache(image_folder, tmp_path, monkeypatch):
    from gaplab.data import default_cache_dir

    monkeypatch.setenv("GAPLAB_CACHE_DIR", "off")
    assert default_cache_dir() is None
    monkeypatch.chdir(tmp_path)
    assert not load_image_folder(image_folder, 16).from_cache
    assert not load_image_folder(image_folder, 16).from_cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"], "no cache folder, not even one named off"


def test_damaged_cache_entry_is_decoded_again(image_folder, tmp_path):
    load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")
    (entry,) = (tmp_path / "c").glob("*.npz")
    entry.write_bytes(b"not an npz")
    again = load_image_folder(image_folder, 16, cache_dir=tmp_path / "c")
    assert not again.from_cache and again.size == 30


def test_split_is_stratified_disjoint_and_seeded(tmp_path):
    root = make_folder(tmp_path / "p", {"a": 40, "b": 20, "c": 20}, size=8)
    data = load_image_folder(root, 8, cache_dir=None, seed=3)
    counts = {name: np.bincount(part.y, minlength=3).tolist() for name, part in
              (("train", data.train), ("val", data.val), ("test", data.test))}
    assert counts == {"train": [28, 14, 14], "val": [6, 3, 3], "test": [6, 3, 3]}
    # Disjoint: each image is distinct (per-image colour jitter), so rows never repeat across splits.
    rows = lambda part: {part.x[i].tobytes() for i in range(len(part))}  # noqa: E731
    assert not rows(data.train) & rows(data.val) and not rows(data.train) & rows(data.test)
    assert not rows(data.val) & rows(data.test)
    same = load_image_folder(root, 8, cache_dir=None, seed=3)
    other = load_image_folder(root, 8, cache_dir=None, seed=4)
    assert same.digest == data.digest and other.digest != data.digest


def test_train_val_test_folders_are_used_as_given(tmp_path):
    root = tmp_path / "split"
    make_folder(root / "train", {"a": 5, "b": 5}, size=8)
    make_folder(root / "val", {"a": 2, "b": 2}, size=8)
    make_folder(root / "test", {"a": 3, "b": 1}, size=8)
    data = load_image_folder(root, 8, cache_dir=None)
    assert (len(data.train), len(data.val), len(data.test)) == (10, 4, 4)
    assert data.split_layout == "train/val/test"


def test_train_test_folders_carve_validation_from_train(tmp_path):
    root = tmp_path / "split"
    make_folder(root / "train", {"a": 17, "b": 17}, size=8)
    make_folder(root / "test", {"a": 3, "b": 3}, size=8)
    data = load_image_folder(root, 8, cache_dir=None)
    assert len(data.test) == 6 and len(data.train) + len(data.val) == 34
    assert np.bincount(data.val.y).tolist() == [3, 3]


def test_split_folder_with_unknown_class_is_an_error(tmp_path):
    root = tmp_path / "split"
    make_folder(root / "train", {"a": 5, "b": 5}, size=8)
    make_folder(root / "test", {"a": 3, "zebra": 3}, size=8)
    with pytest.raises(DataError) as error:
        load_image_folder(root, 8, cache_dir=None)
    assert str(error.value) == (
        f"the split folders of {root} hold different classes: class 'b' is missing from test/; test/ has "
        "class(es) 'zebra' that train/ lacks. Every split folder needs the same class folders: add the missing "
        "ones or remove the extra ones."
    )


@pytest.mark.parametrize(
    "mode, fmt, ext",
    [("L", "PNG", ".png"), ("P", "GIF", ".gif"), ("RGBA", "PNG", ".png"), ("I;16", "PNG", ".png"),
     ("RGB", "BMP", ".bmp"), ("RGB", "JPEG", ".jpeg")],
)
def test_every_image_mode_decodes_to_rgb(tmp_path, mode, fmt, ext):
    path = write_image(tmp_path / f"img{ext}", (200, 100, 50), size=12, mode=mode, fmt=fmt)
    pixels = decode_image(path, 10)
    assert pixels.shape == (10, 10, 3) and pixels.dtype == np.uint8
    if mode == "I;16":
        # Scaled from 16 bits, not clipped to white.
        assert 90 < pixels.mean() < 160


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*does not exist"):
        load_image_folder(tmp_path / "nowhere", 16)


def test_empty_folder_says_what_to_put_there(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no images.*subfolder per class"):
        load_image_folder(tmp_path / "empty", 16)


def test_single_class_is_an_error(tmp_path):
    root = make_folder(tmp_path / "one", {"cat": 5}, size=8)
    with pytest.raises(DataError, match=r"single class \('cat'\)"):
        load_image_folder(root, 8)


def test_folder_one_level_too_high_suggests_the_deeper_folder(tmp_path):
    make_folder(tmp_path / "root" / "trashnet", {"cat": 3, "dog": 3}, size=8)
    with pytest.raises(DataError) as error:
        load_image_folder(tmp_path / "root", 8)
    message = str(error.value)
    assert "single class" not in message
    assert "cat, dog" in message and f"one level deeper: {tmp_path / 'root' / 'trashnet'}" in message


def test_class_with_too_few_images_is_named(tmp_path):
    root = make_folder(tmp_path / "few", {"cat": 10, "dog": 2}, size=8)
    with pytest.raises(DataError, match=r"class 'dog' .* has 2 image\(s\).*at least 3"):
        load_image_folder(root, 8)


@pytest.mark.parametrize("content", [b"", b"plain text, not an image", "truncated"])
def test_bad_image_file_is_named_with_a_remedy(image_folder, content):
    bad = image_folder / "dog" / "bad.jpg"
    if content == "truncated":
        whole = (image_folder / "dog" / "0.png").read_bytes()
        bad = image_folder / "dog" / "cut.png"
        content = whole[: len(whole) // 2]
    bad.write_bytes(content)
    with pytest.raises(DataError) as error:
        load_image_folder(image_folder, 16)
    assert str(bad) in str(error.value) and "--skip_bad_images" in str(error.value)


def test_skip_bad_images_reports_each_skipped_file(image_folder):
    (image_folder / "dog" / "bad1.jpg").write_bytes(b"junk")
    (image_folder / "emu" / "bad2.png").write_bytes(b"junk")
    data = load_image_folder(image_folder, 16, skip_bad_images=True)
    assert data.size == 30
    assert sorted(s.split(":")[0].rsplit("/", 1)[-1] for s in data.skipped_files) == ["bad1.jpg", "bad2.png"]


def test_stray_files_are_ignored_and_counted(image_folder):
    (image_folder / ".DS_Store").write_bytes(b"\0")
    (image_folder / "README.md").write_text("about")
    (image_folder / "cat" / "notes.txt").write_text("x")
    (image_folder / "cat" / ".hidden.png").write_bytes(b"\0")
    data = load_image_folder(image_folder, 16)
    assert data.size == 30 and data.ignored_files == 4


def test_generated_dataset_is_deterministic_balanced_and_sized():
    first = generate_shapes(image_size=24, n_images=60, seed=5)
    again = generate_shapes(image_size=24, n_images=60, seed=5)
    other = generate_shapes(image_size=24, n_images=60, seed=6)
    assert first.digest == again.digest != other.digest
    assert first.train.x.shape[1:] == (24, 24, 3) and first.size == 60
    assert np.bincount(first.train.y).tolist() == [6] * 6
    assert first.num_classes == 6 and first.class_names[0] == "circle"


def test_too_small_image_size_is_an_error(image_folder):
    with pytest.raises(DataError, match="image_size=4"):
        load_image_folder(image_folder, 4)
    with pytest.raises(DataError, match="image_size=4"):
        generate_shapes(image_size=4)


def test_truncated_image_really_fails_in_pillow(tmp_path):
    # Guards the truncated-file test above: Pillow must not silently pad the missing bytes.
    path = write_image(tmp_path / "x.png", (1, 2, 3), size=40)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(OSError):
        with Image.open(path) as image:
            image.load()


def test_digests_are_those_from_before_the_module_split_and_the_cache_key_follows_each_file(tmp_path):
    # A study stores its dataset's digest and refuses a rerun on other data, so it may not change with the
    # code's layout. Computed on commit 1058d86. The cache key holds each file's ctime (no user sets it back),
    # so it is pinned by its inputs, not by a value.
    assert generate_shapes(image_size=16, n_images=96, seed=0).digest == "9332cd6807ef181f"
    flat = make_folder(tmp_path / "flat", {"a": 12, "b": 9, "c": 7}, size=16)
    assert load_image_folder(flat, 16, cache_dir=None, seed=3).digest == "32cc7f41eb019efd"
    split = tmp_path / "split"
    make_folder(split / "train", {"a": 9, "b": 8}, size=16)
    make_folder(split / "test", {"a": 3, "b": 2}, size=16)
    assert load_image_folder(split, 16, cache_dir=None, seed=1).digest == "8185992edc2a40be"
    files = []
    for name, size in (("train/a/0.png", 10), ("train/b/0.png", 20), ("test/a/x.jpg", 30)):
        path = tmp_path / "keyed" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
        files.append(path)
    key = cache_key(tmp_path / "keyed", files, 16, False)
    assert len(key) == 32 and cache_key(tmp_path / "keyed", files, 16, False) == key
    time.sleep(0.05)  # past the file system's clock tick, so that the ctime moves
    os.chmod(files[1], 0o600)  # the same bytes, size and mtime; another ctime
    os.utime(files[1], ns=(1_700_000_000_000_000_000,) * 2)
    assert cache_key(tmp_path / "keyed", files, 16, False) != key
