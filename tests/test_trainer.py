"""The trainer: gap identities, determinism, hooks, divergence, recalibration, memory, JAX."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from gaplab.config import ConfigError, TrainConfig
from gaplab.metrics import accuracy, predict_classes, recalibrated_batchnorm
from gaplab.trainer import EPOCH_METRICS, EpochCallback, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = TrainConfig(depth=2, bn_momentum=0.9, dropout=0.2, batch_size=16, epochs=2, image_size=16)


def test_result_has_history_gaps_and_identities(tiny_data):
    result = train(SMALL, tiny_data)
    assert set(result.history) == set(EPOCH_METRICS)
    assert all(len(values) == 2 for values in result.history.values())
    assert result.epochs == 2 and result.steps == 2 * (len(tiny_data.train) // 16)
    assert result.train_accuracy == result.history["train_accuracy"][-1]
    assert result.gap == pytest.approx(result.mode_gap + result.generalization_gap)
    assert result.gap == pytest.approx(result.train_accuracy - result.val_accuracy)
    assert result.mode_gap == pytest.approx(result.train_accuracy - result.train_eval_accuracy)
    for name in ("train_eval_accuracy", "val_accuracy", "test_accuracy", "val_accuracy_recalibrated"):
        assert 0.0 <= getattr(result, name) <= 1.0
    assert result.confusion_val.shape == (6, 6) and result.confusion_val.sum() == len(tiny_data.val)
    assert result.confusion_test.sum() == len(tiny_data.test)
    assert np.trace(result.confusion_val) / len(tiny_data.val) == pytest.approx(result.val_accuracy)
    assert set(result.timings) >= {"data_seconds", "build_seconds", "fit_seconds", "eval_seconds",
                                   "first_epoch_seconds", "steady_epoch_seconds"}
    assert not result.diverged and not result.stopped_early
    assert result.final_metrics()["gap"] == result.gap
    assert {"grid_validation_seconds", "momentum_curve_seconds"} <= set(result.timings)


def test_same_config_and_seed_give_the_same_metrics(tiny_data):
    first, second = train(SMALL, tiny_data), train(SMALL, tiny_data)
    assert first.history == second.history
    assert first.val_accuracy == second.val_accuracy
    third = train(SMALL.replace(seed=1), tiny_data)
    assert third.history["train_loss"] != first.history["train_loss"]


def test_a_reused_compiled_model_trains_exactly_like_a_freshly_built_one(tiny_data):
    from gaplab.compiled import CompiledModels

    models = CompiledModels()
    fresh = train(SMALL, tiny_data, compiled_models=models)
    # Same architecture, other momentum, dropout and seed: the next runs reuse this compiled model.
    train(SMALL.replace(bn_momentum=0.5, dropout=0.4, seed=3), tiny_data, compiled_models=models)
    reused = train(SMALL, tiny_data, compiled_models=models)
    assert len(models) == 1
    assert reused.history == fresh.history
    for got, want in zip(reused.trained_values, fresh.trained_values, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_prepared_model_is_reset_to_a_fresh_build_of_the_configs_seed(tiny_data):
    from gaplab.compiled import CompiledModels, variable_values
    from gaplab.model import build_model

    models = CompiledModels(capacity=1)
    model = models.prepared(SMALL, tiny_data.num_classes)
    model.fit(tiny_data.train.x, tiny_data.train.y, epochs=1, verbose=0)
    assert model.optimizer.iterations.numpy() > 0
    keras.utils.set_random_seed(4)  # as train() does before preparing
    again = models.prepared(SMALL.replace(seed=4, bn_momentum=0.6), tiny_data.num_classes)
    assert again is model and again.optimizer.iterations.numpy() == 0
    keras.utils.set_random_seed(4)
    fresh = build_model(SMALL.replace(seed=4, bn_momentum=0.6), tiny_data.num_classes, runtime_hyperparameters=True)
    for got, want in zip(variable_values(again), variable_values(fresh), strict=True):
        np.testing.assert_array_equal(got, want)
    # Beyond its capacity the least recently prepared architecture is dropped and built again.
    models.prepared(SMALL.replace(depth=1), tiny_data.num_classes)
    assert len(models) == 1 and models.prepared(SMALL, tiny_data.num_classes) is not model


def test_the_model_of_an_earlier_run_keeps_its_weights_when_a_later_run_reuses_the_compiled_model(tiny_data):
    from gaplab.compiled import CompiledModels, variable_values

    models = CompiledModels()
    first = train(SMALL, tiny_data, compiled_models=models)
    second = train(SMALL.replace(seed=5), tiny_data, compiled_models=models)
    assert len(models) == 1
    for got, want in zip(variable_values(first.model), first.trained_values, strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(first.trained_values, second.trained_values))
    # The copy predicts as the trained model did: its val accuracy is the run's.
    assert accuracy(predict_classes(first.model, tiny_data.val.x), tiny_data.val.y) == first.val_accuracy
    assert first.model is first.model, "built once, on first read"


def test_the_portable_model_is_built_from_the_trained_weights_without_the_runtime_model(tiny_data):
    from gaplab.model import to_portable

    result = train(SMALL, tiny_data)
    portable = result.portable_model()
    assert "model" not in vars(result), "the runtime model was not built"
    assert all(type(layer).__module__.startswith("keras.") for layer in portable.layers)
    for got, want in zip(portable.get_weights(), to_portable(result.model, SMALL, tiny_data.num_classes).get_weights(),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    assert accuracy(predict_classes(portable, tiny_data.val.x), tiny_data.val.y) == result.val_accuracy


class Recorder(EpochCallback):
    def __init__(self, stop_after=None):
        super().__init__()
        self.seen, self.stop_after = [], stop_after

    def on_epoch(self, epoch, metrics):
        self.seen.append((epoch, metrics))
        if epoch == self.stop_after:
            self.model.stop_training = True


def test_epoch_hooks_see_named_metrics_and_can_stop_training(tiny_data):
    recorder = Recorder(stop_after=1)
    result = train(SMALL.replace(epochs=3), tiny_data, callbacks=[recorder])
    assert [epoch for epoch, _ in recorder.seen] == [1]
    assert set(recorder.seen[0][1]) == set(EPOCH_METRICS)
    assert result.stopped_early and result.epochs == 1
    assert result.val_accuracy == result.val_accuracy  # measured at the stopping epoch, not NaN


@pytest.mark.skipif(keras.backend.backend() == "jax", reason=(
    "known bug on JAX: TerminateOnNaN runs off the training thread there (async_safe) and reads a loss buffer "
    "the next step has donated: 'Buffer has been deleted or donated'; the trial then fails instead of diverging"))
def test_a_nan_loss_stops_training_and_is_reported_as_diverged(tiny_data):
    result = train(SMALL.replace(learning_rate=1e30, epochs=3), tiny_data)
    assert result.diverged and not result.stopped_early
    assert math.isnan(result.val_accuracy) and math.isnan(result.gap)


def test_image_size_must_match_the_data(tiny_data):
    with pytest.raises(ConfigError, match=r"image_size=32 .* 16 px"):
        train(SMALL.replace(image_size=32), tiny_data)


def test_recalibration_closes_the_mode_gap_of_a_high_momentum_model():
    from gaplab.data import generate_shapes

    data = generate_shapes(image_size=16, n_images=240, seed=1)
    # 168 training images in full batches of 15: 11 steps per epoch, 44 in all.
    config = TrainConfig(depth=2, bn_momentum=0.99, dropout=0.0, batch_size=15, epochs=4, image_size=16)
    result = train(config, data)
    assert result.steps == 44
    model = result.model
    before = accuracy(predict_classes(model, data.train.x), data.train.y)
    with recalibrated_batchnorm(model, data.train.x):
        after = accuracy(predict_classes(model, data.train.x), data.train.y)
    restored = accuracy(predict_classes(model, data.train.x), data.train.y)
    assert before == pytest.approx(result.train_eval_accuracy)
    # At least 20 points on either backend (TensorFlow and JAX train to different weights: 0.23 seen on JAX).
    assert result.train_accuracy - before > 0.2, "momentum .99 after 44 steps should leave stale statistics"
    assert after > before + 0.2
    assert after > result.train_accuracy - 0.1
    assert restored == before, "recalibration must restore the trained statistics"


def test_recalibrated_statistics_are_the_exact_moments_of_each_layer_input(tiny_data):
    from gaplab.model import batchnorm_layers

    model = train(SMALL.replace(depth=3, epochs=1), tiny_data).model
    trained = [layer.moving_mean.numpy().copy() for layer in batchnorm_layers(model)]
    with recalibrated_batchnorm(model, tiny_data.train.x):
        # Inside the block each layer's input already passes through the recalibrated layers before it.
        for layer in batchnorm_layers(model):
            inputs = keras.ops.convert_to_numpy(
                keras.Model(model.input, layer.input)(tiny_data.train.x, training=False)).astype(np.float64)
            flat = inputs.reshape(-1, inputs.shape[-1])
            np.testing.assert_allclose(layer.moving_mean.numpy(), flat.mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(layer.moving_variance.numpy(), flat.var(0), rtol=1e-3, atol=1e-5)
    for layer, mean in zip(batchnorm_layers(model), trained):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this platform")


@pytest.mark.slow
def test_twenty_trainings_do_not_grow_memory_without_bound(tiny_data):
    config = SMALL.replace(epochs=1)
    rss = []
    for index in range(20):
        train(config.replace(bn_momentum=0.5 + index * 0.02), tiny_data)
        rss.append(_rss_mib())
    # Allow warm-up in the first runs; after that growth must flatten out.
    growth_late = rss[-1] - rss[9]
    assert growth_late < 60, f"RSS grew {growth_late:.0f} MiB over the last 10 trainings: {rss}"


JAX_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    from gaplab.config import TrainConfig
    from gaplab.data import generate_shapes
    from gaplab.trainer import train

    data = generate_shapes(image_size=16, n_images=96, seed=0)
    config = TrainConfig(depth=2, bn_momentum=0.9, dropout=0.2, batch_size=16, epochs=2, image_size=16)
    cache = sys.argv[1]
    first = train(config, data)
    files_after_first = len(os.listdir(cache))
    second = train(config.replace(bn_momentum=0.5, dropout=0.4), data)
    files_after_second = len(os.listdir(cache))
    print(json.dumps({"backend": keras.backend.backend(), "val": first.val_accuracy,
                      "gap": first.gap, "mode_gap": first.mode_gap, "gen": first.generalization_gap,
                      "files_first": files_after_first, "files_second": files_after_second}))
    """
)


@pytest.mark.slow
def test_trains_under_the_jax_backend_and_reuses_compiled_programs(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "GAPLAB_COMPILE_CACHE_DIR": str(tmp_path / "xla"),
           "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "xla")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert 0.0 <= report["val"] <= 1.0
    assert report["gap"] == pytest.approx(report["mode_gap"] + report["gen"])
    # A second config that differs only in momentum and dropout rate compiles nothing new.
    assert report["files_first"] > 0
    assert report["files_second"] == report["files_first"]


# -- momentum measured in pairs ------------------------------------------------------------------


def _trainable(model) -> list[np.ndarray]:
    return [np.array(w.numpy()) for w in model.trainable_weights]


def test_the_curve_of_one_training_equals_training_at_each_momentum():
    """Weights do not depend on momentum; a tracked grid momentum is exactly that momentum's run."""
    from gaplab.data import generate_shapes
    from gaplab.model import batchnorm_layers

    data = generate_shapes(image_size=16, n_images=240, seed=1)
    config = TrainConfig(depth=2, dropout=0.2, batch_size=16, epochs=2, image_size=16)
    trained_099 = train(config.replace(bn_momentum=0.99), data)
    weights_099 = _trainable(trained_099.model)
    grid_099 = [layer.grid_statistics() for layer in batchnorm_layers(trained_099.model)]
    own_099 = [layer.moving_mean.numpy() for layer in batchnorm_layers(trained_099.model)]
    curve_099 = trained_099.momentum_curve
    trained_08 = train(config.replace(bn_momentum=0.8), data)

    for got, want in zip(_trainable(trained_08.model), weights_099):
        np.testing.assert_array_equal(got, want)
    at_08 = config.momentum_grid.index(0.8)
    for (means, variances), layer in zip(grid_099, batchnorm_layers(trained_08.model)):
        np.testing.assert_allclose(means[at_08], layer.moving_mean.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(variances[at_08], layer.moving_variance.numpy(), rtol=1e-6, atol=1e-7)
    point = curve_099.momentum.index(0.8)
    assert curve_099.val_accuracy[point] == trained_08.val_accuracy
    # The curve's train-eval is on the subset; the 0.8 run's own point is on the same images.
    curve_08 = trained_08.momentum_curve
    assert curve_099.train_eval_accuracy[point] == curve_08.train_eval_accuracy[curve_08.momentum.index(0.8)]
    assert curve_099.test_accuracy[point] == trained_08.test_accuracy
    # The own entry is Keras's own statistics, and the tracked grid entry at 0.99 equals them.
    own = curve_099.momentum.index(0.99)
    assert curve_099.val_accuracy[own] == trained_099.val_accuracy
    for (means, _), own_means in zip(grid_099, own_099):
        np.testing.assert_allclose(means[config.momentum_grid.index(0.99)], own_means, rtol=1e-6, atol=1e-7)
    # Momentum 0.99 after 22 steps leaves stale statistics; 0.8 has settled.
    assert curve_099.val_accuracy[point] > curve_099.val_accuracy[own]


def test_the_curve_holds_the_grid_and_own_momentum_with_gaps_and_the_recalibrated_limit(tiny_data):
    result = train(SMALL.replace(bn_momentum=0.97, momentum_grid=(0.0, 0.9, 0.99)), tiny_data)
    curve = result.momentum_curve.as_dict()
    assert curve["own_momentum"] == 0.97 and curve["momentum"] == [0.0, 0.9, 0.97, 0.99]
    assert {len(curve[key]) for key in ("val_accuracy", "train_eval_accuracy", "test_accuracy", "gap",
                                        "mode_gap")} == {4}
    assert curve["val_accuracy"][2] == result.val_accuracy
    assert curve["test_accuracy"][2] == result.test_accuracy
    # The curve's train-eval is on the subset of val's size (the final train_eval_accuracy on the whole split).
    from gaplab.metrics import accuracy, predict_classes
    from gaplab.momentum import train_eval_subset

    picked = train_eval_subset(tiny_data.train.y, len(tiny_data.val.y), SMALL.seed)
    assert curve["train_eval_images"] == len(picked) == len(tiny_data.val.y)
    model = result.model
    model.compile()
    on_subset = accuracy(predict_classes(model, tiny_data.train.x[picked]), tiny_data.train.y[picked])
    assert curve["train_eval_accuracy"][2] == on_subset
    assert result.train_eval_accuracy == accuracy(predict_classes(model, tiny_data.train.x), tiny_data.train.y)
    assert curve["gap"] == pytest.approx([result.train_accuracy - v for v in curve["val_accuracy"]])
    assert curve["mode_gap"] == pytest.approx([result.train_accuracy - t for t in curve["train_eval_accuracy"]])
    assert curve["recalibrated"]["val_accuracy"] == result.val_accuracy_recalibrated
    assert curve["recalibrated"]["gap"] == pytest.approx(result.train_accuracy - result.val_accuracy_recalibrated)
    best = max(range(4), key=lambda i: (curve["val_accuracy"][i], curve["momentum"][i]))
    metrics = result.final_metrics()
    assert metrics["best_momentum"] == curve["momentum"][best]
    assert metrics["val_accuracy_at_best_momentum"] == max(curve["val_accuracy"])


def test_the_curve_scores_precise_bn_on_test_and_counts_the_test_images_each_momentum_classifies_differently(
        tiny_data):
    from gaplab.metrics import accuracy, predict_classes, recalibrated_batchnorm
    from gaplab.momentum import _grid_statistics, grid_layers, train_eval_subset

    result = train(SMALL.replace(bn_momentum=0.97, momentum_grid=(0.0, 0.9, 0.99)), tiny_data)
    curve = result.momentum_curve
    assert (curve.val_images, curve.test_images) == (len(tiny_data.val.y), len(tiny_data.test.y))
    model = result.model
    model.compile()
    own = predict_classes(model, tiny_data.test.x)
    with _grid_statistics(grid_layers(model), 0):  # grid entry 0: momentum 0, the curve's first point
        at_zero = predict_classes(model, tiny_data.test.x)
    assert curve.test_differs_from_own[curve.own] == 0
    assert curve.test_differs_from_own[0] == int(np.sum(at_zero != own))
    picked = train_eval_subset(tiny_data.train.y, len(tiny_data.val.y), SMALL.seed)
    with recalibrated_batchnorm(model, tiny_data.train.x[picked]):
        precise = predict_classes(model, tiny_data.test.x)
    assert curve.recalibrated_test_accuracy == accuracy(precise, tiny_data.test.y)
    assert curve.recalibrated_test_differs_from_own == int(np.sum(precise != own))
    stored = curve.as_dict()
    assert stored["recalibrated"]["test_accuracy"] == curve.recalibrated_test_accuracy
    assert stored["test_images"] == len(tiny_data.test.y)


def test_momenta_closer_than_the_curves_resolution_are_one_point_the_own_one(tiny_data):
    result = train(SMALL.replace(bn_momentum=0.90005, momentum_grid=(0.5, 0.9)), tiny_data)
    assert result.momentum_curve.momentum == (0.5, 0.90005)
    assert result.momentum_curve.val_accuracy[1] == result.val_accuracy


def test_without_a_grid_or_batchnorm_there_is_no_curve(tiny_data):
    from gaplab.compiled import CompiledModels

    for config in (SMALL.replace(momentum_grid=()), SMALL.replace(batchnorm=False)):
        result = train(config, tiny_data)
        assert result.momentum_curve is None and result.timings["momentum_curve_seconds"] == 0.0
        assert math.isnan(result.final_metrics()["best_momentum"])
    # Grid values are runtime state like momentum: another grid of the same length reuses the model.
    models = CompiledModels()
    train(SMALL, tiny_data, compiled_models=models)
    halved = train(SMALL.replace(momentum_grid=tuple(m / 2 for m in SMALL.momentum_grid)), tiny_data,
                   compiled_models=models)
    assert len(models) == 1 and halved.momentum_curve.momentum[1] == 0.25
    train(SMALL.replace(momentum_grid=()), tiny_data, compiled_models=models)
    assert len(models) == 2


def test_each_epoch_can_carry_the_val_accuracy_at_the_best_momentum(tiny_data):
    recorder = Recorder()
    result = train(SMALL, tiny_data, callbacks=[recorder], best_momentum_at_epoch=lambda epoch: True)
    for _, metrics in recorder.seen:
        assert set(metrics) == set(EPOCH_METRICS) | {"val_accuracy_at_best_momentum", "best_momentum"}
        assert metrics["val_accuracy_at_best_momentum"] >= metrics["val_accuracy"] - 1e-6
        assert metrics["best_momentum"] in (*SMALL.momentum_grid, SMALL.bn_momentum)
    last = recorder.seen[-1][1]
    final = result.final_metrics()
    assert last["val_accuracy_at_best_momentum"] == pytest.approx(final["val_accuracy_at_best_momentum"], abs=1e-6)
    assert last["best_momentum"] == final["best_momentum"]
    assert result.history["val_accuracy_at_best_momentum"][-1] == last["val_accuracy_at_best_momentum"]
    assert result.timings["grid_validation_seconds"] > 0


def _counting_predictions(monkeypatch) -> list[np.ndarray]:
    """The image arrays each inference pass of gaplab.metrics is asked to predict, in order."""
    from gaplab import metrics

    passes: list[np.ndarray] = []
    real = metrics._predict

    def counting(model, x, batch_size):
        passes.append(x)
        return real(model, x, batch_size)

    monkeypatch.setattr(metrics, "_predict", counting)
    return passes


def test_the_grid_val_pass_runs_only_at_the_epochs_asked_and_the_last_ones_is_the_curves(tiny_data, monkeypatch):
    config = SMALL.replace(epochs=3)
    whole = train(config, tiny_data, best_momentum_at_epoch=lambda epoch: True)
    passes = _counting_predictions(monkeypatch)
    recorder = Recorder()
    asked: list[int] = []
    result = train(config, tiny_data, callbacks=[recorder],
                   best_momentum_at_epoch=lambda epoch: asked.append(epoch) or epoch in (2, 3))
    assert asked == [1, 2, 3]
    assert [("best_momentum" in metrics) for _, metrics in recorder.seen] == [False, True, True]
    # The skipped epochs change nothing: same curve as with a pass at every epoch.
    assert result.momentum_curve == whole.momentum_curve
    val_passes = sum(x is tiny_data.val.x for x in passes)
    grid_passes = result.timings["grid_validation_passes"]
    others = len(result.momentum_curve.momentum) - 1
    # At epoch 2 a climb from the own momentum (at least its one neighbour, fewer than all), at the last
    # epoch every momentum but the own one.
    assert others + 1 <= grid_passes < 2 * others
    # Fit's validation at each of 3 epochs, those grid passes, the recalibrated val after fit, and no val
    # pass at any momentum for the curve.
    assert val_passes == 3 + grid_passes + 1


def test_a_full_search_measures_every_momentum_at_every_epoch_asked_and_gives_the_same_curve(tiny_data):
    config = SMALL.replace(epochs=3)
    climb = train(config, tiny_data, best_momentum_at_epoch=lambda epoch: True)
    full = train(config, tiny_data, best_momentum_at_epoch=lambda epoch: True, best_momentum_search="full")
    assert full.timings["grid_validation_passes"] == 3 * (len(full.momentum_curve.momentum) - 1)
    assert climb.timings["grid_validation_passes"] < full.timings["grid_validation_passes"]
    assert full.momentum_curve == climb.momentum_curve
    assert full.history["best_momentum"][-1] == climb.history["best_momentum"][-1] == full.momentum_curve.best_momentum


def test_a_curve_without_a_pass_at_the_last_epoch_measures_val_itself(tiny_data, monkeypatch):
    reused = train(SMALL, tiny_data, best_momentum_at_epoch=lambda epoch: epoch == SMALL.epochs)
    measured = train(SMALL, tiny_data, best_momentum_at_epoch=lambda epoch: epoch < SMALL.epochs)
    assert measured.momentum_curve == reused.momentum_curve


def test_the_curves_train_eval_subset_is_stratified_seeded_and_about_vals_size():
    from gaplab.momentum import train_eval_subset

    labels = np.repeat(np.arange(3), [600, 301, 99])
    picked = train_eval_subset(labels, val_size=300, seed=5)
    assert len(picked) == 300  # val's size: it fills val's evaluation batches
    assert np.bincount(labels[picked]).tolist() == [180, 90, 30]  # 60/30.1/9.9 %, by largest remainder
    assert np.array_equal(picked, train_eval_subset(labels, val_size=300, seed=5))
    assert not np.array_equal(picked, train_eval_subset(labels, val_size=300, seed=6))
    assert np.array_equal(train_eval_subset(labels[:200], val_size=200, seed=5), np.arange(200))


COMPILE_COUNT_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, re
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    jax.config.update("jax_log_compiles", True)
    compiled = []

    class CompileLog(logging.Handler):
        def emit(self, record):
            found = re.search(r"Finished XLA compilation of (\\S+)", record.getMessage())
            if found:
                compiled.append(found.group(1))

    logging.getLogger("jax").addHandler(CompileLog())
    from gaplab.config import TrainConfig
    from gaplab.data import generate_shapes
    from gaplab.trainer import train

    data = generate_shapes(image_size=16, n_images=100, seed=0)
    config = TrainConfig(depth=2, bn_momentum=0.9, dropout=0.2, batch_size=16, epochs=2, image_size=16)
    counts = {}
    for name, trial in (("first", config), ("other_momentum_and_dropout", config.replace(bn_momentum=0.5, dropout=0.4)),
                        ("new_batch_size", config.replace(batch_size=12))):
        compiled.clear()
        train(trial, data)
        counts[name] = sorted(compiled)
    print(json.dumps(counts))
    """
)


@pytest.mark.slow
def test_jax_compiles_each_train_eval_and_recalibration_program_once(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "GAPLAB_COMPILE_CACHE_DIR": str(tmp_path / "xla"),
           "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", COMPILE_COUNT_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    # One train step whatever the ragged split sizes (full batches only); one predict program for
    # validation and all measurements (padded batches), one for recalibrating all BN layers; no test step.
    assert counts["first"].count("jit(train_step)") == 1
    assert counts["first"].count("jit(predict_step)") == 2
    assert not any("test_step" in name for name in counts["first"])
    assert counts["other_momentum_and_dropout"] == []
    assert counts["new_batch_size"] == ["jit(train_step)"]


@pytest.mark.slow
def test_the_curve_on_the_train_eval_subset_is_close_to_the_whole_split_and_chooses_the_same_momentum():
    """The built-in data (840 training images): the curve's train-eval and recalibration on 180 of them
    (val's size) against all of them."""
    from gaplab.data import generate_shapes
    from gaplab.metrics import accuracy, predict_classes, recalibrated_batchnorm
    from gaplab.momentum import measure_curve

    data = generate_shapes(image_size=32, n_images=1200, seed=0)
    result = train(TrainConfig(depth=2, bn_momentum=0.99, batch_size=32, epochs=2, image_size=32), data)
    subset = result.momentum_curve
    model = result.model
    model.compile()
    with recalibrated_batchnorm(model, data.train.x):
        recalibrated = (accuracy(predict_classes(model, data.train.x), data.train.y),
                        accuracy(predict_classes(model, data.val.x), data.val.y))
    whole = measure_curve(
        model, 0.99, result.config.momentum_grid,
        splits={"train": (data.train.x, data.train.y), "val": (data.val.x, data.val.y),
                "test": (data.test.x, data.test.y)},
        own={"train": result.train_eval_accuracy, "val": result.val_accuracy, "test": result.test_accuracy},
        train_accuracy=result.train_accuracy, recalibrated=recalibrated)
    assert (subset.train_eval_images, whole.train_eval_images) == (len(data.val), len(data.train)) == (180, 840)
    assert subset.val_accuracy == whole.val_accuracy and subset.test_accuracy == whole.test_accuracy
    assert subset.best_momentum == whole.best_momentum
    apart = [abs(a - b) for a, b in zip(subset.train_eval_accuracy, whole.train_eval_accuracy)]
    # 180 of 840 images: a standard error of at most 0.5 / sqrt(180) * sqrt(1 - 180 / 840) = 0.033.
    assert max(apart) <= 3 * 0.033, apart
    own_to_best = [curve.mode_gap[curve.own] - curve.mode_gap[curve.best] for curve in (subset, whole)]
    assert abs(own_to_best[0] - own_to_best[1]) <= 3 * 0.033, own_to_best
    # PreciseBN's statistics from 180 images instead of 840, scored on the same val images.
    recalibrated_apart = abs(subset.recalibrated_val_accuracy - whole.recalibrated_val_accuracy)
    assert recalibrated_apart <= 0.05, (subset.recalibrated_val_accuracy, whole.recalibrated_val_accuracy)
    print(f"\ntrain-eval by momentum {subset.momentum}\n subset {subset.train_eval_accuracy}\n whole  "
          f"{whole.train_eval_accuracy}\n |apart| max {max(apart):.4f} own {apart[subset.own]:.4f}; best "
          f"{subset.best_momentum}; mode gap own - best: subset {own_to_best[0]:.4f}, whole {own_to_best[1]:.4f}; "
          f"recalibrated val: subset {subset.recalibrated_val_accuracy:.4f}, whole "
          f"{whole.recalibrated_val_accuracy:.4f}")
