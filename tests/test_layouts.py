"""Split-folder layouts of an image folder: each accepted one read as splits, every other one refused
in one line naming the accepted layouts (issue 17, item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from gaplab import images as image_module
from gaplab.data import ACCEPTED_LAYOUTS, DataError, list_image_folder, load_image_folder
from tests.helpers import make_folder, write_image


def _rows(split) -> set[bytes]:
    return {split.x[i].tobytes() for i in range(len(split))}


def _folder_rows(folder, size=16) -> set[bytes]:
    return {image_module.decode_image(path, size).tobytes() for path in folder.rglob("*.png")}


def _refusal(root, **kwargs) -> str:
    with pytest.raises(DataError) as error:
        load_image_folder(root, 16, cache_dir=None, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_train_and_val_without_test_are_splits_and_test_is_drawn_from_train(tmp_path):
    # The reported bug: train/ + val/ was read as two classes called 'train' and 'val'.
    root = tmp_path / "tv"
    make_folder(root / "train", {"a": 10, "b": 10}, size=16)
    make_folder(root / "val", {"a": 2, "b": 3}, size=16)
    data = load_image_folder(root, 16, cache_dir=None)
    assert data.class_names == ("a", "b") and data.split_layout == "train/val"
    # val is the val folder as given; test takes 15/85 of each train class, stratified.
    assert np.bincount(data.val.y).tolist() == [2, 3]
    assert np.bincount(data.test.y).tolist() == [2, 2] and np.bincount(data.train.y).tolist() == [8, 8]
    assert _rows(data.val) == _folder_rows(root / "val")
    assert _rows(data.train) | _rows(data.test) == _folder_rows(root / "train")
    assert not _rows(data.train) & _rows(data.test)
    assert load_image_folder(root, 16, cache_dir=None, seed=1).digest != data.digest


def test_train_alone_is_a_split_folder_and_val_and_test_are_drawn_from_it(tmp_path):
    root = tmp_path / "t"
    make_folder(root / "train", {"a": 10, "b": 20}, size=16)
    data = load_image_folder(root, 16, cache_dir=None)
    assert data.class_names == ("a", "b") and data.split_layout == "train"
    assert [np.bincount(part.y).tolist() for part in (data.train, data.val, data.test)] == [[6, 14], [2, 3], [2, 3]]
    assert _rows(data.train) | _rows(data.val) | _rows(data.test) == _folder_rows(root / "train")


def test_the_three_given_splits_stay_as_they_are(tmp_path):
    root = tmp_path / "tvt"
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        make_folder(root / split, {"a": count, "b": count}, size=16)
    data = load_image_folder(root, 16, cache_dir=None)
    assert data.split_layout == "train/val/test"
    for split in ("train", "val", "test"):
        assert _rows(getattr(data, split)) == _folder_rows(root / split)


def test_val_and_test_without_train_are_refused_naming_the_layouts(tmp_path):
    root = tmp_path / "vt"
    make_folder(root / "val", {"a": 3, "b": 3}, size=16)
    make_folder(root / "test", {"a": 3, "b": 3}, size=16)
    assert _refusal(root) == (
        f"{root} has split folder(s) val/, test/ but no train/; add {root / 'train'}/ with one folder per class "
        "(accepted layouts: root/<class>/ folders of images, or split folders each holding the same <class>/ "
        "folders: train/val/test, train/test, train/val, or train/ alone)."
    )


def test_split_folders_beside_class_folders_are_refused(tmp_path):
    root = tmp_path / "mixed"
    make_folder(root / "train", {"a": 3, "b": 3}, size=16)
    make_folder(root, {"cat": 3, "dog": 3}, size=16)
    assert _refusal(root) == (
        f"{root} mixes split folders (train/) with other folders (cat/, dog/); move the class folders into the "
        f"split folders, or rename a split folder that is a class ({ACCEPTED_LAYOUTS})."
    )


def test_a_class_called_test_beside_other_classes_is_refused_not_guessed(tmp_path):
    root = make_folder(tmp_path / "classes", {"control": 3, "test": 3}, size=16)
    assert _refusal(root).startswith(f"{root} mixes split folders (test/) with other folders (control/); ")


def test_split_folders_under_other_names_are_refused_with_their_rename(tmp_path):
    cased = tmp_path / "cased"
    make_folder(cased / "Train", {"a": 3, "b": 3}, size=16)
    make_folder(cased / "Test", {"a": 3, "b": 3}, size=16)
    assert _refusal(cased) == (
        f"{cased} has split folders under other names (Test/, Train/); rename Test/ to test/, Train/ to train/ "
        f"({ACCEPTED_LAYOUTS})."
    )
    named = tmp_path / "named"
    for split in ("train", "validation", "test"):
        make_folder(named / split, {"a": 3, "b": 3}, size=16)
    assert _refusal(named) == (
        f"{named} mixes split folders (test/, train/) with other folders (validation/); rename validation/ to val/ "
        f"({ACCEPTED_LAYOUTS})."
    )


def test_classes_named_like_a_split_synonym_are_still_classes(tmp_path):
    root = make_folder(tmp_path / "docs", {"valid": 5, "invalid": 5}, size=16)
    data = load_image_folder(root, 16, cache_dir=None)
    assert data.class_names == ("invalid", "valid") and data.split_layout == "stratified"


def test_class_missing_from_a_split_is_named_with_the_split(tmp_path):
    root = tmp_path / "missing"
    make_folder(root / "train", {"a": 5, "b": 5, "c": 5}, size=16)
    make_folder(root / "val", {"a": 2, "b": 2}, size=16)
    make_folder(root / "test", {"a": 2, "b": 2, "c": 2}, size=16)
    assert _refusal(root) == (
        f"the split folders of {root} hold different classes: class 'c' is missing from val/. Every split folder "
        "needs the same class folders: add the missing ones or remove the extra ones."
    )


def test_split_with_a_class_train_lacks_is_named(tmp_path):
    root = tmp_path / "extra"
    make_folder(root / "train", {"a": 5, "b": 5}, size=16)
    make_folder(root / "val", {"a": 2, "b": 2, "zebra": 2}, size=16)
    assert _refusal(root) == (
        f"the split folders of {root} hold different classes: val/ has class(es) 'zebra' that train/ lacks. "
        "Every split folder needs the same class folders: add the missing ones or remove the extra ones."
    )


def test_empty_class_folder_in_a_given_split_is_named(tmp_path):
    root = tmp_path / "emptyclass"
    make_folder(root / "train", {"a": 5, "b": 5}, size=16)
    make_folder(root / "test", {"a": 2}, size=16)
    (root / "test" / "b").mkdir()
    assert _refusal(root) == (
        f"class folder(s) 'b' in {root / 'test'} hold no images; add images or remove the folder(s)."
    )


def test_skipping_the_only_image_of_a_class_in_a_split_is_named(tmp_path):
    root = tmp_path / "skipped"
    make_folder(root / "train", {"a": 5, "b": 5}, size=16)
    make_folder(root / "test", {"a": 2}, size=16)
    (root / "test" / "b").mkdir()
    (root / "test" / "b" / "broken.png").write_bytes(b"not a png")
    assert _refusal(root, skip_bad_images=True) == (
        f"class folder(s) 'b' in {root / 'test'} hold no images; add images or remove the folder(s)."
    )


def test_train_class_too_small_to_draw_test_from_is_named(tmp_path):
    root = tmp_path / "small"
    make_folder(root / "train", {"a": 5, "b": 1}, size=16)
    make_folder(root / "val", {"a": 2, "b": 2}, size=16)
    assert _refusal(root) == (
        f"class 'b' in {root / 'train'} has 1 image(s); the 82/18 split needs at least 2 per class. "
        "Add images to that class or remove it."
    )


def test_listing_finds_layout_classes_and_stray_files_without_decoding(tmp_path, monkeypatch):
    root = tmp_path / "listed"
    make_folder(root / "train", {"a": 3, "b": 4}, size=16)
    make_folder(root / "val", {"a": 1, "b": 2}, size=16)
    (root / "README.txt").write_text("about")
    write_image(root / "val" / "a" / "notes.txt", (0, 0, 0), size=16, fmt="PNG")

    def no_decoding(*args, **kwargs):
        raise AssertionError("listing decoded an image")

    monkeypatch.setattr(image_module, "decode_image", no_decoding)
    listing = list_image_folder(root)
    assert listing.layout == ("train", "val") and listing.class_names == ("a", "b")
    assert listing.groups == (0,) * 7 + (1,) * 3 and listing.labels == (0, 0, 0, 1, 1, 1, 1, 0, 1, 1)
    assert listing.ignored_files == 2
