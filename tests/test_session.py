"""The open study (study.session): what `run_study` returns agrees with both stores; the run and launcher helpers."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from study import run as run_module
from study import session, stopping, workers
from study.objective import Trainer
from tests.conftest import fake_train

STUDY = "shapes-16px"


def _settings(*args: str):
    return run_module.validate(run_module.build_parser().parse_args(["--image_size", "16", *args]))


def _stores(tmp_path) -> tuple[optuna.Study, list]:
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id], max_results=1000)
    return study, runs


def _count(study: optuna.Study, *states: str) -> int:
    return sum(trial.state.name in states for trial in study.trials)


def test_the_outcome_counts_the_trials_and_names_the_parent_run_as_the_stores_hold_them(mock_study):
    def seed_bn_crashes(config, data, callbacks=(), verbose=0, **options):
        if config.batchnorm and config.bn_momentum == 0.99:  # the seed-bn preset
            raise RuntimeError("simulated crash")
        return fake_train(config, data, callbacks, **options)

    settings = _settings("--trials", "12", "--epochs", "2", "--pruner", "median")
    outcome = session.run_study(settings, [], Trainer(seed_bn_crashes))

    study, runs = _stores(mock_study)
    assert outcome.exit_code == 0 and outcome.study_name == STUDY
    assert outcome.finished == _count(study, "COMPLETE", "PRUNED") == 12
    assert outcome.pruned == _count(study, "PRUNED") > 0
    assert outcome.failed == _count(study, "FAIL") == 1
    assert outcome.parent_run_id == study.user_attrs["mlflow_parent_run_id"]
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert [(run.info.run_id, run.info.status) for run in parents] == [(outcome.parent_run_id, "FINISHED")]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == len(study.trials) == 13
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {outcome.parent_run_id}


def test_a_study_whose_every_trial_fails_ends_with_exit_1_and_its_parent_run_failed(mock_study, capsys):
    def crashes(config, data, callbacks=(), verbose=0, **options):
        raise RuntimeError("simulated crash")

    outcome = session.run_study(_settings("--trials", "2", "--epochs", "1", "--pruner", "none"), [], Trainer(crashes))

    study, runs = _stores(mock_study)
    assert (outcome.exit_code, outcome.finished, outcome.pruned, outcome.failed) == (1, 0, 0, 2)
    assert [(trial.state.name, trial.user_attrs["preset"]) for trial in study.trials] == [
        ("FAIL", "seed-initial"), ("FAIL", "seed-deeper")], "two presets failed; none is queued before it trains"
    assert MlflowClient().get_run(outcome.parent_run_id).info.status == "FAILED"
    assert "error: the study has 0/2 finished trials and no worker is left" in capsys.readouterr().err


def test_an_interrupt_during_a_trial_ends_with_the_stop_exit_code_and_every_run_killed(mock_study):
    def interrupted_in_the_second_trial(config, data, callbacks=(), verbose=0, **options):
        if not config.batchnorm and config.depth == 3:  # seed-deeper, the second preset
            raise KeyboardInterrupt("Ctrl-C")
        return fake_train(config, data, callbacks, **options)

    settings = _settings("--trials", "3", "--epochs", "1", "--pruner", "none")
    outcome = session.run_study(settings, [], Trainer(interrupted_in_the_second_trial))

    study, runs = _stores(mock_study)
    assert (outcome.exit_code, outcome.finished, outcome.failed) == (stopping.EXIT_CODE, 1, 1)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL"]
    statuses = {run.info.run_id: run.info.status for run in runs}
    assert statuses.pop(outcome.parent_run_id) == "KILLED"
    assert sorted(statuses.values()) == ["FINISHED", "KILLED"]
    assert mlflow.active_run() is None


@pytest.mark.parametrize("environ, taken", [({"MLFLOW_RUN_ID": "abc", "PATH": "/bin"}, "abc"),
                                            ({"MLFLOW_RUN_ID": "", "PATH": "/bin"}, None),
                                            ({"PATH": "/bin"}, None)])
def test_the_launchers_run_id_is_read_once_and_dropped(environ, taken):
    assert workers.take_launcher_run(environ) == taken
    assert environ == {"PATH": "/bin"}


def test_a_rerun_after_an_interrupted_preset_trains_it_first_and_ends_as_an_uninterrupted_run(mock_study, capsys):
    # The interrupted preset was re-queued at the back: the rerun printed "queued presets seed-deeper", trained
    # seed-bn and seed-final, stopped at 3 and left seed-deeper WAITING.
    def interrupted_in_seed_deeper(config, data, callbacks=(), verbose=0, **options):
        if not config.batchnorm and config.depth == 3:
            raise KeyboardInterrupt("Ctrl-C")
        return fake_train(config, data, callbacks, **options)

    settings = _settings("--trials", "3", "--epochs", "1", "--pruner", "none")
    assert session.run_study(settings, [], Trainer(interrupted_in_seed_deeper)).exit_code == stopping.EXIT_CODE
    capsys.readouterr()
    assert session.run_study(settings, [], Trainer(fake_train)).exit_code == 0
    assert ("to train: 2 trial(s), first the preset(s) seed-deeper, seed-bn"
            in capsys.readouterr().out.splitlines()[0])
    study, _ = _stores(mock_study)
    assert [(t.state.name, t.user_attrs["preset"]) for t in study.trials] == [
        ("COMPLETE", "seed-initial"), ("FAIL", "seed-deeper"), ("COMPLETE", "seed-deeper"), ("COMPLETE", "seed-bn")]
