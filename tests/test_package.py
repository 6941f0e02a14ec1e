"""The package's front door: `from gaplab import train` is the function, whatever was imported before."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest


def test_from_gaplab_import_train_is_the_function_after_every_submodule_was_imported():
    import gaplab

    # Importing a submodule sets the package attribute of its name; one named like an export
    # (gaplab.train, once) would shadow the export from then on.
    submodules = {module.name for module in pkgutil.iter_modules(gaplab.__path__)}
    for name in sorted(submodules):
        importlib.import_module(f"gaplab.{name}")
    assert "trainer" in submodules and not submodules & set(gaplab.__all__)

    from gaplab import train
    from gaplab.trainer import train as trainer_train

    assert train is trainer_train and callable(train)
    assert [name for name in gaplab.__all__ if isinstance(getattr(gaplab, name), types.ModuleType)] == []


@pytest.mark.parametrize("name", ["training", "Train"])
def test_an_unknown_name_is_an_attribute_error_naming_it(name):
    import gaplab

    with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
        getattr(gaplab, name)


def test_the_readme_library_example_trains_on_generated_data():
    import gaplab.trainer  # noqa: F401 - the submodule first, as the bug needed
    from gaplab import TrainConfig, generate_shapes, train

    data = generate_shapes(image_size=16, n_images=96)
    result = train(TrainConfig(image_size=16, depth=2, epochs=1, batch_size=16), data)
    assert result.epochs == 1 and result.steps == len(data.train) // 16
    assert result.gap == pytest.approx(result.mode_gap + result.generalization_gap)
    assert 0.0 <= result.val_accuracy_recalibrated <= 1.0
    assert result.momentum_curve.own_momentum == 0.99
