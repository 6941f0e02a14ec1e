"""What a user meets in the MLflow UI: params as Optuna stores them, no momentum without batchnorm,
models and figures named after their trial, and a registered model version that says what it is."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from gaplab.compiled import variable_values
from gaplab.model import build_model
from study import shared_figures as figures
from study import space
from study.contract import BN_MOMENTUM_ATTR, MODEL_URI_ATTR, PRESET_ATTR, confirmation_study_name
from tests.helpers import child_runs, fake_train, load_study, run_mocked

ARGS = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]


def _with_model(config, data, callbacks=(), verbose=0, best_momentum_at_epoch=None):
    """The mock trainer, holding a real (untrained) model so that the study logs one."""
    result = fake_train(config, data, callbacks, verbose, best_momentum_at_epoch)
    result.trained_values = variable_values(build_model(config, data.num_classes, runtime_hyperparameters=True))
    return result


def _record_titles(monkeypatch) -> list[str]:
    titles: list[str] = []
    for factory in ("trial_confusion_renderer", "trial_curves_renderer", "trial_momentum_renderer"):
        real = getattr(figures, factory)

        def recording(*key, real=real):
            renderer = real(*key)

            def render(data, title):
                titles.append(title)
                return renderer(data, title)

            return render

        monkeypatch.setattr(figures, factory, recording)
    return titles


def test_mlflow_params_match_optuna_and_models_without_batchnorm_have_no_momentum(mock_study):
    assert run_mocked(["--trials", "7", *ARGS]) == 0
    study = load_study(mock_study)
    runs = {int(r.data.tags["optuna_trial_number"]): r for r in child_runs("shapes-16px")}
    for trial in study.trials:
        params = runs[trial.number].data.params
        public = space.public_params(trial.params)
        assert params["dropout"] == str(public["dropout"]) and len(params["dropout"]) <= 4
        if params["batchnorm"] == "True":
            assert params["bn_momentum"] == str(public["bn_momentum"]) == str(trial.user_attrs[BN_MOMENTUM_ATTR])
            assert len(params["bn_momentum"]) <= 5
        else:
            assert trial.user_attrs[PRESET_ATTR] in ("seed-initial", "seed-deeper")
            assert "bn_momentum" not in params and "bn_momentum" not in public
            assert BN_MOMENTUM_ATTR not in trial.user_attrs
    # The mock trainer makes the BN-less presets best (no momentum to cost accuracy).
    assert study.best_trial.user_attrs[PRESET_ATTR] == "seed-initial"
    parent = MlflowClient().get_run(study.user_attrs["mlflow_parent_run_id"]).data.metrics
    assert "best_bn_momentum" not in parent
    assert parent["best_dropout"] == 0.5 and parent["best_depth"] == 2 and parent["best_trial_number"] == 0
    from study.tracking.summary import trials_table

    table = trials_table(study)
    assert {"params_bn_momentum", "params_dropout"} <= set(table.columns)
    assert table["params_bn_momentum"].isna().tolist()[:2] == [True, True]
    assert table["params_bn_momentum"].tolist()[2:4] == [0.99, 0.8]
    assert table["params_dropout"].tolist()[:4] == [0.5, 0.5, 0.5, 0.0]


def test_models_and_figures_name_their_trial_and_the_registered_version_says_what_it_is(mock_study, monkeypatch):
    titles = _record_titles(monkeypatch)
    assert run_mocked(["--trials", "4", *ARGS, "--confirm", "3"], _with_model) == 0
    study = load_study(mock_study)
    client = MlflowClient()
    runs = {int(r.data.tags["optuna_trial_number"]): r for r in child_runs("shapes-16px")}
    for trial in study.trials:
        model = mlflow.get_logged_model(trial.user_attrs[MODEL_URI_ATTR].removeprefix("models:/"))
        assert model.name == f"trial-{trial.number:03d}" and model.source_run_id == runs[trial.number].info.run_id
        with_curve = trial.user_attrs["batchnorm"]
        assert sum(f"Trial {trial.number}:" in title for title in titles) == 3 + with_curve, titles
    assert "Trial 2: confusion matrix (val)" in titles and "Trial 0: learning curves" in titles
    # The confirmation's runs (study.confirm) name their figures and models after the run, not trial-NNN.
    companion = load_study(mock_study, confirmation_study_name("shapes-16px"))
    for trial in companion.trials:
        name = f"confirm-{trial.user_attrs['arm']}-seed-{trial.user_attrs['seed']}"
        assert mlflow.get_logged_model(trial.user_attrs[MODEL_URI_ATTR].removeprefix("models:/")).name == name
        assert f"{name}: learning curves" in titles
    assert len(companion.trials) == 6 and sum(title.startswith("confirm-") for title in titles) == 6 * 3 + 3
    best = study.best_trial
    version = client.get_model_version_by_alias("shapes-16px", "best")
    run_id = runs[best.number].info.run_id
    assert version.run_id == run_id
    assert version.tags == {"study_name": "shapes-16px", "optuna_trial_number": str(best.number),
                            "val_accuracy": f"{best.value:.4f}",
                            "test_accuracy": f"{best.user_attrs['test_accuracy']:.4f}", "mlflow_run_id": run_id,
                            # --confirm 3 retrained this trial on 3 fresh seeds (the mock scores alike).
                            "confirmed_test_accuracy": f"{best.user_attrs['test_accuracy']:.4f}", "confirmed_n": "3"}
    assert version.description == (
        f"The best trial of study 'shapes-16px' when registered: trial {best.number}, val_accuracy {best.value:.4f} "
        f"(the objective), test_accuracy {best.user_attrs['test_accuracy']:.4f}; MLflow run {run_id}.")
    assert best.value == pytest.approx(0.85)
