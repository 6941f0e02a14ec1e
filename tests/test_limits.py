"""Documented limits on seed and image_size, checked in one place (gaplab.config) and applied by
TrainConfig.validate and by every data source before any work (issue 17, item 6)."""

from __future__ import annotations

import numpy as np
import pytest

from gaplab.config import MAX_IMAGE_SIZE, MAX_SEED, ConfigError, TrainConfig
from gaplab.data import DataError, dataset_from_arrays, generate_shapes, load_image_folder

SEED_RANGE = "use an integer from 0 to 4294967295 (2**32 - 1)."


@pytest.mark.parametrize("seed", [-1, 2**32, 10**20])
def test_seed_out_of_range_names_the_value_and_the_range(seed):
    with pytest.raises(ConfigError) as error:
        TrainConfig(seed=seed).validate()
    assert str(error.value) == f"seed={seed} is invalid; {SEED_RANGE}"


def test_seed_bounds_are_the_ones_keras_seeding_accepts():
    # keras.utils.set_random_seed seeds NumPy's legacy generator, which takes exactly this range.
    for seed in (0, MAX_SEED):
        TrainConfig(seed=seed).validate()
        np.random.seed(seed)
    with pytest.raises(ValueError):
        np.random.seed(MAX_SEED + 1)


def test_image_size_above_the_maximum_gives_the_memory_it_would_take():
    TrainConfig(image_size=MAX_IMAGE_SIZE).validate()
    with pytest.raises(ConfigError) as error:
        TrainConfig(image_size=100000).validate()
    assert str(error.value) == (
        "image_size=100000 is invalid; use at most 1024 pixels: one decoded image at 100000 px takes 27.9 GiB "
        "as uint8, 1000 images 27.3 TiB."
    )
    with pytest.raises(ConfigError, match=r"image_size=1025 .* takes 3.0 MiB as uint8, 1000 images 2.9 GiB\.$"):
        TrainConfig(image_size=1025).validate()


def test_generated_data_refuses_bad_seed_and_size_before_drawing():
    with pytest.raises(DataError) as error:
        generate_shapes(image_size=16, n_images=18, seed=-1)
    assert str(error.value) == f"seed=-1 is invalid; {SEED_RANGE}"
    # Refused at once: drawing even one 100000 px image would need tens of GiB.
    with pytest.raises(DataError, match=r"^image_size=100000 is invalid; use at most 1024 pixels"):
        generate_shapes(image_size=100000, n_images=18)
    assert generate_shapes(image_size=16, n_images=18, seed=MAX_SEED).size == 18


def test_image_folder_refuses_bad_seed_and_size_before_reading(image_folder, tmp_path):
    with pytest.raises(DataError) as error:
        load_image_folder(image_folder, 16, seed=2**32, cache_dir=tmp_path / "c")
    assert str(error.value) == f"seed=4294967296 is invalid; {SEED_RANGE}"
    with pytest.raises(DataError, match=r"^image_size=2048 is invalid; use at most 1024 pixels"):
        load_image_folder(image_folder, 2048, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_arrays_refuse_a_negative_seed():
    images = np.zeros((6, 8, 8, 3), np.uint8)
    with pytest.raises(DataError, match=r"^seed=-5 is invalid"):
        dataset_from_arrays(images, np.array([0, 1] * 3), ("a", "b"), name="arrays", source="test", seed=-5)
