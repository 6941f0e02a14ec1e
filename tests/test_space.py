"""The search space: conditional momentum, values a person would write, importances over batchnorm trials,
and what optuna-dashboard shows."""

from __future__ import annotations

import warnings

import optuna
import pytest

from gaplab.config import PRESETS, TrainConfig
from study import describe, space
from study.contract import BATCHNORM_ATTR, PRESET_ATTR
from study.importance import param_importances
from tests.helpers import load_study, run_mocked

BASE = TrainConfig(image_size=16, epochs=1)
WITHOUT_BATCHNORM = {name for name, preset in PRESETS.items() if not preset.batchnorm}


def _sampled_study(trials: int) -> tuple[optuna.Study, dict[int, TrainConfig]]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    for name in PRESETS:
        space.enqueue_preset(study, BASE, name)
    configs = {}

    def objective(trial):
        configs[trial.number] = space.suggest(trial, BASE)
        return configs[trial.number].dropout - configs[trial.number].bn_momentum

    study.optimize(objective, n_trials=trials)
    return study, configs


def test_models_without_batchnorm_have_no_momentum_anywhere():
    study, configs = _sampled_study(8)
    assert WITHOUT_BATCHNORM == {"seed-initial", "seed-deeper"}
    for trial in study.trials:
        config = configs[trial.number]
        preset = trial.user_attrs.get(PRESET_ATTR)
        assert config.batchnorm == (preset not in WITHOUT_BATCHNORM)
        if config.batchnorm:
            assert space.MOMENTUM_PARAM in trial.params and "bn_momentum" in space.logged_params(config)
        else:
            assert set(trial.params) == {space.DROPOUT_PARAM, "batch_size", "depth"}
            assert set(space.logged_params(config)) == set(config.as_params()) - {"bn_momentum"}
            assert "bn_momentum" not in space.public_params(trial.params)


def test_presets_are_enqueued_with_their_own_values():
    study, configs = _sampled_study(4)
    for trial in study.trials:
        preset = PRESETS[trial.user_attrs[PRESET_ATTR]]
        config = configs[trial.number]
        assert (config.depth, config.batchnorm, config.dropout) == (preset.depth, preset.batchnorm, preset.dropout)
        if preset.batchnorm:
            assert config.bn_momentum == preset.bn_momentum


def test_optuna_stores_exactly_the_values_that_are_trained_and_logged():
    study, configs = _sampled_study(30)
    searched = [t for t in study.trials if PRESET_ATTR not in t.user_attrs]
    assert len({t.params[space.MOMENTUM_PARAM] for t in searched}) > 5, "the sampler explores momentum"
    for trial in study.trials:
        config = configs[trial.number]
        logged = {key: str(value) for key, value in space.logged_params(config).items()}
        public = space.public_params(trial.params)
        assert logged["dropout"] == str(public["dropout"]) == str(config.dropout)
        # A value a person writes: at most two decimals, no 0.5700000000000001.
        assert config.dropout == round(config.dropout, 2) and len(str(config.dropout)) <= 4
        assert 0.0 <= config.dropout <= 0.6
        if config.batchnorm:
            assert logged["bn_momentum"] == str(public["bn_momentum"]) == str(config.bn_momentum)
            assert config.bn_momentum == round(config.bn_momentum, 3) and len(str(config.bn_momentum)) <= 5
            assert 0.5 <= config.bn_momentum <= 0.999
            assert space.to_optuna("bn_momentum", config.bn_momentum) == trial.params[space.MOMENTUM_PARAM]


@pytest.mark.parametrize("name, public, stored", [("bn_momentum", 0.995, 5), ("bn_momentum", 0.5, 500),
                                                  ("bn_momentum", 0.99, 10), ("dropout", 0.57, 57),
                                                  ("dropout", 0.0, 0), ("depth", 3, 3)])
def test_public_and_optuna_values_convert_exactly_both_ways(name, public, stored):
    assert space.to_optuna(name, public) == stored
    assert space.to_public(space.optuna_name(name), stored) == public
    assert space.public_name(space.optuna_name(name)) == name


def test_a_value_off_the_step_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"bn_momentum=0.9985 is not on the search space's step of 1/1000"):
        space.to_optuna("bn_momentum", 0.9985)


def test_momentum_importance_is_computed_over_the_batchnorm_trials_only():
    study = optuna.create_study(direction="maximize")
    bn = {space.MOMENTUM_PARAM: optuna.distributions.IntDistribution(1, 500, log=True),
          space.DROPOUT_PARAM: optuna.distributions.IntDistribution(0, 60)}
    no_bn = {space.DROPOUT_PARAM: bn[space.DROPOUT_PARAM]}
    for index in range(10):
        permille, percent = (1, 3, 10, 30, 100, 300, 2, 20, 200, 5)[index], (index * 7) % 60
        # The gap follows momentum; dropout does nothing.
        gap = 0.5 * (1 - permille / 500)
        study.add_trial(optuna.trial.create_trial(
            params={space.MOMENTUM_PARAM: permille, space.DROPOUT_PARAM: percent}, distributions=bn, value=0.5,
            user_attrs={"gap": gap, "val_accuracy": 0.5, BATCHNORM_ATTR: True}))
    for percent in (0, 50):  # the BN-less presets: the smallest gaps, at no momentum
        study.add_trial(optuna.trial.create_trial(
            params={space.DROPOUT_PARAM: percent}, distributions=no_bn, value=0.9,
            user_attrs={"gap": -0.2, "val_accuracy": 0.9, BATCHNORM_ATTR: False}))
    result = param_importances(study)
    assert result["trials"] == 10 and result["without_batchnorm_left_out"] == 2
    assert set(result["gap"]) == {"bn_momentum", "dropout"}
    assert result["gap"]["bn_momentum"] > 0.6 > result["gap"]["dropout"]


@pytest.mark.parametrize("prune_on, says", [("best_momentum", "not the objective"),
                                            ("own_momentum", "the objective as it stood")])
def test_the_study_names_the_objective_and_says_what_intermediate_values_are(tmp_path, prune_on, says):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        describe.describe_study(study, prune_on)
    reloaded = optuna.load_study(study_name="s", storage=storage)
    assert reloaded.metric_names == ["val_accuracy"]
    text = reloaded.user_attrs[describe.INTERMEDIATE_VALUES_ATTR]
    assert says in text and text.startswith(f"val accuracy at the {'best' if prune_on == 'best_momentum' else 'trial'}")
    assert "pruned trial" in text and "user attribute val_accuracy" in text


def test_the_study_explains_momentum_and_importances_in_user_attributes_and_the_dashboard_note(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    describe.describe_study(study, "best_momentum")
    attrs = optuna.load_study(study_name="s", storage=storage).user_attrs
    momentum = attrs[space.MOMENTUM_PARAM]
    # The values a user reads off the slice plot's axis, each with the momentum it is.
    assert "1 is 0.999, 10 is 0.99, 50 is 0.95, 100 is 0.9, 500 is 0.5" in momentum
    assert space.momentum_from(10) == 0.99 and space.momentum_from(500) == 0.5
    importances = attrs[describe.IMPORTANCES_ATTR]
    assert "PED-ANOVA" in importances and "fANOVA" in importances and "below 20 trials" in importances
    note = describe.note("best_momentum")
    system = study._storage.get_study_system_attrs(study._study_id)
    assert system[describe.NOTE_VERSION_KEY] == 1
    assert "".join(v for k, v in sorted(system.items()) if k.startswith(describe.NOTE_TEXT_KEY)) == note
    for line in ("**Objective**: `val_accuracy`", "\"Objective Value\"", "1 is 0.999", "128, 16, 256, 32, 64, 8",
                 "PED-ANOVA"):
        assert line in note, line
    # Reopening the study (every run does) leaves an unchanged note as it is; another prune_on rewrites it.
    describe.describe_study(study, "best_momentum")
    assert study._storage.get_study_system_attrs(study._study_id)[describe.NOTE_VERSION_KEY] == 1
    describe.describe_study(study, "own_momentum")
    system = study._storage.get_study_system_attrs(study._study_id)
    assert system[describe.NOTE_VERSION_KEY] == 2
    assert "".join(system[f"{describe.NOTE_TEXT_KEY}{i}"] for i in range(
        sum(k.startswith(describe.NOTE_TEXT_KEY) for k in system))) == describe.note("own_momentum")


def test_describe_study_refuses_an_unknown_prune_on():
    with pytest.raises(ValueError, match="prune_on='stale' is unknown; use one of best_momentum, own_momentum"):
        describe.describe_study(optuna.create_study(), "stale")


def test_the_study_s_smallest_image_size_is_the_first_where_every_preset_fits():
    # Below it the depth-3 presets failed on every run (image_size 8 to 13); at it, every preset builds.
    from gaplab.model import allowed_depths, build_model
    from study.settings import MIN_STUDY_IMAGE_SIZE

    deepest = max(preset.depth for preset in PRESETS.values())
    assert deepest in allowed_depths(MIN_STUDY_IMAGE_SIZE)
    assert deepest not in allowed_depths(MIN_STUDY_IMAGE_SIZE - 1)
    for name, preset in PRESETS.items():
        model = build_model(preset.replace(image_size=MIN_STUDY_IMAGE_SIZE), num_classes=2)
        assert model.output_shape == (None, 2), name


# A parameter the seed's study does not search, declared as every searched parameter is: stored as an integer
# count of 1/10000 (so Optuna stores what MLflow logs), sampled on a log scale, drawn on a log axis.
LEARNING_RATE = space.Param("learning_rate", 0.0001, 0.003, log=True, per_unit=10000,
                            stored_as="learning_rate_per_10000", scale="log")


@pytest.fixture
def learning_rate_searched(monkeypatch):
    """The search space with learning_rate added, in its one place: `space.PARAMS`."""
    monkeypatch.setattr(space, "PARAMS", (*space.PARAMS, LEARNING_RATE))
    return LEARNING_RATE


def test_a_parameter_declared_once_reaches_the_study_mlflow_and_the_report(mock_study, learning_rate_searched):
    import mlflow
    from mlflow.tracking import MlflowClient

    from study.contract import PARENT_RUN_ID_ATTR, RUN_ID_ATTR
    from study.report import build_report, figures
    from study.report.next_steps import retrain
    from study.report.views import trial_views

    assert run_mocked(["--trials", "8", "--epochs", "1", "--image_size", "16", "--pruner", "none"]) == 0
    study = load_study(mock_study)
    client = MlflowClient()
    # The study: Optuna samples and stores the integer, the trainer gets the value, MLflow logs that value.
    stored = {t.number: t.params["learning_rate_per_10000"] for t in study.trials}
    assert len(stored) == 8 and all(1 <= value <= 30 for value in stored.values())
    assert len(set(stored.values())) > 2, "the sampler explores the new parameter"
    # The presets keep their own learning rate (gaplab.config.PRESETS: 0.001).
    assert {stored[t.number] for t in study.trials if PRESET_ATTR in t.user_attrs} == {10}
    for trial in study.trials:
        logged = client.get_run(trial.user_attrs[RUN_ID_ATTR]).data.params
        assert logged["learning_rate"] == str(stored[trial.number] / 10000)
    parent = client.get_run(study.user_attrs[PARENT_RUN_ID_ATTR])
    assert parent.data.metrics["best_learning_rate"] == stored[study.best_trial.number] / 10000
    with open(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="trials.csv")) as table:
        header = table.readline().strip().split(",")
    assert "params_learning_rate" in header and "params_learning_rate_per_10000" not in header
    # The report: the trials' parameters, the best setting's command, one more column of the parameter figure and
    # one more axis of the parallel coordinates.
    report = build_report(study, client)
    views = {v.number: v for v in trial_views(study)}
    assert all(v.params["learning_rate"] == stored[n] / 10000 for n, v in views.items())
    top = report.section("top_trials").tables[0]
    described = [dict(zip(top.columns, row))["parameters"] for row in top.rows]
    assert described and all("learning_rate 0.0" in text for text in described)
    best = views[study.best_trial.number]
    (_, command), = retrain(best, {"image_size": 16, "epochs": 1, "seed": 0})
    assert f"learning_rate={best.params['learning_rate']:g}" in command
    assert [label for label, *_ in figures.parallel_axes()][-3] == "learning_rate"
    png = next(f.png for f in report.figures if f.filename == "params.png")
    width = int.from_bytes(png[16:20], "big")  # the PNG header's width: 3.25 inches of 100 px per parameter
    assert width == round(3.25 * len(space.PARAMS) * 100) == 1625
