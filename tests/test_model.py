"""The CNN builder: the seed's exact models, depth limits, runtime hyperparameters."""

from __future__ import annotations

import numpy as np
import pytest

from gaplab.config import PRESETS, ConfigError, TrainConfig
from gaplab.model import allowed_depths, build_model, build_preset, feature_map_sizes, to_portable


@pytest.mark.parametrize(
    "name, total, trainable",
    [("seed-initial", 2_286_246, 2_286_246), ("seed-deeper", 279_382, 279_382),
     ("seed-bn", 279_638, 279_510), ("seed-final", 279_638, 279_510)],
)
def test_presets_have_the_seeds_parameter_counts(name, total, trainable):
    model = build_preset(name, image_size=224, num_classes=6)
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable


@pytest.mark.parametrize("name", list(PRESETS))
def test_runtime_build_has_the_same_weights_as_the_stock_build(name):
    config = PRESETS[name].replace(image_size=224)
    runtime = build_model(config, 6, runtime_hyperparameters=True)
    stock = build_model(config, 6)
    assert runtime.count_params() == stock.count_params()
    assert [w.shape for w in runtime.get_weights()] == [w.shape for w in stock.get_weights()]


def test_seed_bn_layers_and_momentum():
    model = build_preset("seed-bn")
    bns = [layer for layer in model.layers if "BatchNormalization" in type(layer).__name__]
    assert [layer.momentum for layer in bns] == [0.99] * 3
    assert [layer.name for layer in model.layers if layer.name.startswith("conv")] == ["conv1", "conv2", "conv3"]
    assert model.get_layer("dropout").rate == 0.5
    with pytest.raises(ValueError):
        build_preset("seed-final").get_layer("dropout")


def test_allowed_depths_follow_the_feature_map():
    assert allowed_depths(224) == [1, 2, 3, 4, 5, 6, 7]
    assert allowed_depths(32) == [1, 2, 3, 4]
    assert feature_map_sizes(224, 3) == [112, 109, 53]


def test_too_deep_for_image_size_names_both_values():
    with pytest.raises(ConfigError, match=r"depth=5 is too deep for image_size=32.*depth <= 4"):
        build_model(TrainConfig(depth=5, image_size=32), 6)


@pytest.mark.parametrize(
    "change, message",
    [({"depth": 0}, "depth=0"), ({"dropout": 1.0}, "dropout=1.0"), ({"bn_momentum": 1.0}, "bn_momentum=1.0"),
     ({"momentum_grid": (0.5, 1.0)}, r"momentum_grid=\(0.5, 1.0\) is invalid"),
     ({"momentum_grid": (0.9, 0.9)}, r"momentum_grid=\(0.9, 0.9\) is invalid")],
)
def test_invalid_values_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        build_model(TrainConfig(image_size=32).replace(**change), 6)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="seed-initial, seed-deeper, seed-bn, seed-final"):
        build_preset("seed-huge")


def test_portable_copy_predicts_like_the_runtime_model():
    config = TrainConfig(image_size=16, depth=2, bn_momentum=0.9, dropout=0.3)
    runtime = build_model(config, 6, runtime_hyperparameters=True)
    portable = to_portable(runtime, config, 6)
    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("uint8")
    np.testing.assert_allclose(portable.predict(x, verbose=0), runtime.predict(x, verbose=0), rtol=1e-5)
    assert type(portable.get_layer("bn1")).__name__ == "BatchNormalization"
    assert portable.get_layer("bn1").momentum == pytest.approx(0.9)


@pytest.mark.parametrize("grid", [(0.0, 0.5, 0.99), (0.9,), ()])
def test_config_round_trips_through_string_params(grid):
    config = TrainConfig(depth=2, batchnorm=False, bn_momentum=0.8, dropout=0.25, batch_size=64, momentum_grid=grid)
    as_strings = {key: str(value) for key, value in config.as_params().items()}
    assert TrainConfig.from_params(as_strings) == config


def test_the_momentum_grid_is_layer_state_not_weights():
    from gaplab.model import batchnorm_layers

    with_grid = build_model(TrainConfig(image_size=16, depth=2), 6, runtime_hyperparameters=True)
    without = build_model(TrainConfig(image_size=16, depth=2, momentum_grid=()), 6, runtime_hyperparameters=True)
    assert with_grid.count_params() == without.count_params()
    assert [w.shape for w in with_grid.get_weights()] == [w.shape for w in without.get_weights()]
    grid = TrainConfig().momentum_grid
    # Per BN layer: momenta, means and variances of the grid, beside momentum and dropout rate.
    assert len(with_grid.variables) == len(without.variables) + 3 * 2
    for layer in batchnorm_layers(with_grid):
        means, variances = layer.grid_statistics()
        assert means.shape == variances.shape == (len(grid), layer.moving_mean.shape[0])
        assert (means == 0).all() and (variances == 1).all(), "Keras's initial moving statistics"
        np.testing.assert_allclose(layer.momentum_grid, grid, rtol=1e-6)


@pytest.fixture
def mixed_float16():
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_training_step_under_mixed_float16_keeps_the_grid_in_float32(mixed_float16):
    # Runs in this process on the default backend; tests/test_mixed_precision.py trains on both.
    from gaplab.model import batchnorm_layers

    config = TrainConfig(image_size=16, depth=2, bn_momentum=0.999, dropout=0.3, momentum_grid=(0.5, 0.999))
    model = build_model(config, 3, runtime_hyperparameters=True)
    assert model.get_layer("conv1").compute_dtype == "float16"
    x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype("float32")
    assert model(x, training=True).shape == (8, 3)
    for layer in batchnorm_layers(model):
        means, variances = layer.grid_statistics()
        assert means.dtype == variances.dtype == np.float32
        assert np.abs(layer.moving_mean.numpy()).max() > 1e-4, "0.999 must not read as 1.0"
        np.testing.assert_allclose(means[1], layer.moving_mean.numpy(), rtol=0, atol=1e-7)
        np.testing.assert_allclose(variances[1], layer.moving_variance.numpy(), rtol=0, atol=1e-7)
