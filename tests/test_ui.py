"""What a user meets first in the MLflow UI: the experiment's kind, a trial's first metrics, and the parent run's
description."""

from __future__ import annotations

import re

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from gaplab.curve import momentum_step
from study.contract import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARENT_RUN_ID_ATTR,
    TEST_ACCURACY_AT_MOMENTUM_METRIC,
    TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC,
    VAL_ACCURACY_AT_MOMENTUM_METRIC,
)
from study.tracking import Tracker, summary
from tests.helpers import fake_train, run_mocked

ARGS = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]
NAME = "shapes-16px"


def _study(folder) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=f"sqlite:///{folder / 'optuna.db'}")


def _description(study: optuna.Study) -> str:
    run = MlflowClient().get_run(study.user_attrs[PARENT_RUN_ID_ATTR])
    return run.data.tags["mlflow.note.content"]


def _best_line(study: optuna.Study) -> str:
    best = study.best_trial
    return f"**Best: trial {best.number}** ([trial-{best.number:03d}](#/experiments/"


def test_the_study_experiment_is_tagged_as_model_training(mock_study):
    assert run_mocked(["--trials", "1", *ARGS]) == 0
    experiment = MlflowClient().get_experiment_by_name(NAME)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def _ui_sections(metric_keys) -> dict[str, list[str]]:
    """A run's metric chart sections as the MLflow UI lays them out on its *Model metrics* tab, in order.

    The rule of MLflow 3's run page (RunViewMetricChartsV2 and RunsChartsCardConfig.extractChartSectionName in
    mlflow/server/js): keys under "system/" go to the *System metrics* tab; the rest form sections named by
    their prefix before the last "/", sorted, with the unprefixed keys ("Model metrics") last.
    """
    sections: dict[str, list[str]] = {}
    for key in sorted(k for k in metric_keys if not k.startswith("system/")):
        sections.setdefault(key.rpartition("/")[0] or "Model metrics", []).append(key)
    return {name: sections[name] for name in sorted(sections, key=lambda name: (name == "Model metrics", name))}


def test_a_trial_s_model_metrics_open_on_the_momentum_curve_whose_section_says_what_its_step_is(mock_study):
    assert run_mocked(["--trials", "3", *ARGS]) == 0
    client = MlflowClient()
    curves = [run for run in client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
              if VAL_ACCURACY_AT_MOMENTUM_METRIC in run.data.metrics]
    assert curves, "a trial with batchnorm logs its momentum curve"
    metrics = curves[0].data.metrics
    sections = _ui_sections(metrics)
    first, rest = list(sections), "Model metrics"
    assert first == ["momentum curve - step 1000 2000 3000 is momentum 0.9 0.99 0.999", rest]
    # test_accuracy where the trainer measured it (the mock trainer does not).
    assert {TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC, VAL_ACCURACY_AT_MOMENTUM_METRIC} <= set(sections[first[0]]) <= {
        TEST_ACCURACY_AT_MOMENTUM_METRIC, TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC, VAL_ACCURACY_AT_MOMENTUM_METRIC}
    assert {"gap", "val_accuracy", "train_accuracy"} <= set(sections[rest])
    # The timings are on the System metrics tab, none among the model's.
    timings = [key for key in metrics if key.endswith("_seconds")]
    assert "system/timing/fit_seconds" in timings and all(key.startswith("system/") for key in timings)
    # What the header says is how the steps are made: momentum 0.9, 0.99 and 0.999 are logged at 1000, 2000, 3000.
    steps = {m.step for m in client.get_metric_history(curves[0].info.run_id, VAL_ACCURACY_AT_MOMENTUM_METRIC)}
    assert {momentum_step(m) for m in (0.9, 0.99, 0.999)} == {1000, 2000, 3000} <= steps


def test_a_kind_the_user_chose_is_kept(mock_study):
    client = MlflowClient()
    client.create_experiment(NAME, tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert run_mocked(["--trials", "1", *ARGS]) == 0
    assert client.get_experiment_by_name(NAME).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_parent_run_describes_the_study_and_its_report_also_after_reruns(mock_study):
    storage = f"sqlite:///{mock_study / 'optuna.db'}"
    report = (f"`python -m study.report --study_name {NAME} --storage {storage}` writes "
              f"reports/{NAME}/report.html")
    assert run_mocked(["--trials", "3", *ARGS]) == 0
    study = _study(mock_study)
    text = _description(study)
    assert text.startswith(f"**Study {NAME}**: 3 trials finished (3 complete, 0 pruned), 0 failed.")
    best = study.best_trial
    assert _best_line(study) in text
    run_id = best.user_attrs["mlflow_run_id"]
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    assert f"[trial-{best.number:03d}](#/experiments/{experiment_id}/runs/{run_id})" in text
    assert (f"val_accuracy {best.value:.4f} (the objective), test_accuracy {best.user_attrs['test_accuracy']:.4f}, "
            f"gap {best.user_attrs['gap']:+.4f}") in text
    assert report in text
    assert text.endswith("when `python -m study.run` finished.")

    assert run_mocked(["--trials", "5", *ARGS]) == 0  # tops up: the description follows
    study = _study(mock_study)
    text = _description(study)
    assert text.startswith(f"**Study {NAME}**: 5 trials finished (5 complete, 0 pruned), 0 failed.")
    assert _best_line(study) in text and report in text

    assert run_mocked(["--trials", "5", *ARGS]) == 0  # nothing to do: still described
    assert _description(_study(mock_study)).startswith(f"**Study {NAME}**: 5 trials finished")


def test_the_best_trial_line_gives_its_params_and_says_when_it_has_no_batchnorm(mock_study):
    # The mock trainer's no-batchnorm presets beat every batchnorm model (stale statistics cost accuracy there).
    assert run_mocked(["--trials", "4", *ARGS]) == 0
    study = _study(mock_study)
    best = study.best_trial
    assert "bn_momentum" not in summary.best_values(best)
    line = next(line for line in _description(study).split("\n\n") if line.startswith("**Best"))
    values = summary.best_values(best)
    assert line.endswith(f"; dropout {values['dropout']:g}, batch_size {values['batch_size']:g}, "
                         f"depth {values['depth']:g}, no batchnorm.")
    assert f", preset {best.user_attrs['preset']})" in line


def test_failed_trials_and_an_interrupted_command_are_described(mock_study):
    calls = []

    def fail_second(config, data, **options):
        calls.append(config)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return fake_train(config, data, **options)

    assert run_mocked(["--trials", "3", *ARGS], train_fn=fail_second) == 0
    study = _study(mock_study)
    assert _description(study).startswith(f"**Study {NAME}**: 3 trials finished (3 complete, 0 pruned), 1 failed.")
    text = summary.describe_parent_run(study, NAME, ending="interrupted")
    assert _description(study) == text
    assert re.search(r"Updated \d{4}-\d\d-\d\d \d\d:\d\d UTC, when `python -m study.run` was interrupted "
                     r"\(Ctrl-C or SIGTERM\); rerun the same command to resume\.$", text)
    with pytest.raises(ValueError, match="ending='crashed' is unknown; use one of finished, interrupted, incomplete"):
        summary.describe_parent_run(study, NAME, ending="crashed")


def test_a_study_without_complete_trials_names_none(mock_study):
    def always_fail(config, data, **options):
        raise RuntimeError("simulated crash")

    assert run_mocked(["--trials", "1", *ARGS], train_fn=always_fail) == 1
    study = _study(mock_study)
    text = summary.describe_parent_run(study, NAME, ending="incomplete")
    assert text.startswith(f"**Study {NAME}**: 0 trials finished (0 complete, 0 pruned), 1 failed.")
    assert "**Best" not in text
    assert "stopped short of --trials with no worker left" in text


def test_a_study_without_a_recorded_parent_run_describes_the_active_run(tmp_path):
    # As study.bench uses the summary: its own run, and a study that never recorded a parent run.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("bench")
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"depth": 2}, distributions={"depth": optuna.distributions.IntDistribution(1, 5)}, value=0.75,
        user_attrs={"test_accuracy": 0.7, "gap": 0.05}))
    with mlflow.start_run() as run:
        mlflow.log_param("storage", "sqlite:///bench.db")
        Tracker("bench", parent_run_id=run.info.run_id).summarize(study)
    text = MlflowClient().get_run(run.info.run_id).data.tags["mlflow.note.content"]
    assert text.startswith("**Study bench**: 1 trials finished (1 complete, 0 pruned), 0 failed.")
    assert ("**Best: trial 0** (trial-000): val_accuracy 0.7500 (the objective), test_accuracy 0.7000, "
            "gap +0.0500 (train − val accuracy); depth 2, no batchnorm.") in text
    assert "`python -m study.report --study_name bench --storage sqlite:///bench.db`" in text
