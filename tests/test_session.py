"""The open study (study.session): what `run_study` returns agrees with both stores; the run and launcher helpers;
across reruns, presets first and once, top-ups to the total, failed trials and presets, and the progress line's ETA."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from study import contract, session, stopping, workers
from study import run as run_module
from study.objective import Trainer
from tests.helpers import child_runs, fake_train, load_study, run_mocked, without_confirmation

STUDY = "shapes-16px"


def _settings(*args: str):
    return run_module.validate(run_module.build_parser().parse_args(["--image_size", "16",
                                                                     *without_confirmation(list(args))]))


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


# -- across reruns (moved from tests/test_study.py) -----------------------------------------------------


def test_resume_tops_up_to_the_total_without_duplicates(mock_study):
    args = ["--epochs", "2", "--image_size", "16", "--pruner", "none"]
    assert run_mocked(["--trials", "3", *args]) == 0
    assert run_mocked(["--trials", "5", *args]) == 0
    assert run_mocked(["--trials", "5", *args]) == 0  # already there: runs nothing
    study = load_study(mock_study)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    presets = [t.user_attrs.get("preset") for t in study.trials]
    assert presets == ["seed-initial", "seed-deeper", "seed-bn", "seed-final", None], "presets once, first"
    children = child_runs("shapes-16px")
    assert sorted(int(r.data.tags["optuna_trial_number"]) for r in children) == [0, 1, 2, 3, 4]
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert parents == {study.user_attrs["mlflow_parent_run_id"]}, "every invocation attaches to the study's run"
    experiment = MlflowClient().get_experiment_by_name("shapes-16px")
    runs = MlflowClient().search_runs([experiment.experiment_id])
    assert len(runs) == 6, "one parent run, five trial runs: the rerun with nothing to do creates no run"
    assert {r.info.status for r in runs} == {"FINISHED"}



def test_a_failing_trial_is_recorded_and_the_study_goes_on(mock_study, monkeypatch):
    from study import space

    real_suggest = space.suggest

    def crash_trial_5(trial, base):
        config = real_suggest(trial, base)
        return config.replace(dropout=0.99) if trial.number == 5 else config

    monkeypatch.setattr(space, "suggest", crash_trial_5)
    assert run_mocked(["--trials", "6", "--epochs", "1", "--image_size", "16", "--pruner", "none"]) == 0
    study = load_study(mock_study)
    states = {t.number: t.state.name for t in study.trials}
    assert states[5] == "FAIL" and list(states.values()).count("COMPLETE") == 6
    failed = next(r for r in child_runs("shapes-16px") if r.data.tags["optuna_trial_number"] == "5")
    assert failed.info.status == "FAILED" and failed.data.tags["trial_state"] == "FAIL"
    assert "simulated crash" in failed.data.tags["error"]



def test_the_eta_is_bounded_and_readable_for_any_trial_count():
    # A huge --trials printed "ETA 2522579688333431852236m48s".
    from study.progress import format_seconds

    assert [format_seconds(s) for s in (7, 303, 7500, 3 * 86400 + 4 * 3600 + 59)] == ["7s", "5m03s", "2h05m", "3d04h"]
    assert format_seconds(2.0 * 10**9 * 60) == format_seconds(1e300) == "over a year"
    assert format_seconds(float("inf")) == format_seconds(float("nan")) == "?"



def test_presets_past_the_trials_total_are_not_called_interrupted(mock_study):
    # After --trials 3 the fourth preset stayed queued, and the report said the study "was interrupted or has not
    # been resumed". Presets are now queued as they start: the fourth is not queued at all.
    from study.report.build import build_report

    args = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]
    assert run_mocked(["--trials", "3", *args]) == 0
    study = load_study(mock_study)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    caveats = build_report(study, MlflowClient()).section("caveats").bullets
    assert not any("interrupted" in line for line in caveats), caveats
    [unreached] = [line for line in caveats if "seed-final" in line]
    assert "--trials=3" in unreached and "larger --trials" in unreached, unreached



def test_a_preset_that_failed_by_its_own_error_is_not_retried_and_does_not_block_reruns(mock_study):
    # Before, a failed preset was trained again first by every later command: one that always fails (too
    # deep for the images, out of memory) failed each rerun, which then stopped at its allowed failures.
    def deeper_fails(config, data, **options):
        if config.depth == 3 and not config.batchnorm:
            raise RuntimeError("out of memory")
        return fake_train(config, data, **options)

    args = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]
    assert run_mocked(["--trials", "3", *args], train_fn=deeper_fails) == 0
    assert run_mocked(["--trials", "5", *args], train_fn=deeper_fails) == 0
    study = load_study(mock_study)
    trials = [(t.user_attrs.get(contract.PRESET_ATTR), t.state.name) for t in study.trials]
    assert trials[:5] == [("seed-initial", "COMPLETE"), ("seed-deeper", "FAIL"), ("seed-bn", "COMPLETE"),
                          ("seed-final", "COMPLETE"), (None, "COMPLETE")]
    assert study.trials[1].user_attrs[contract.FAILED_BY_ERROR_ATTR] == "RuntimeError"
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 5 and len(study.trials) == 6
