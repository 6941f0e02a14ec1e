"""`--confirm K` (study.confirm): the arms retrained on K fresh seeds after the search, in a companion study.

With the mock trainer in this process: the arms, their seeds and configs, their MLflow runs and the parent's
description; a top-up; a changed recommendation; `--confirm 0`. With real processes: kill -9 during a
confirmation, then a rerun. With the real trainer (slow): generated images at 16 px, 1 epoch.
"""

from __future__ import annotations

import dataclasses
import signal
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from study import contract
from tests.helpers import (
    fake_train,
    finish,
    make_folder,
    run_mocked,
    start_mocked,
    wait_for_running_trial,
)

STUDY = "shapes-16px"
COMPANION = contract.confirmation_study_name(STUDY)
SMALL = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]


class OrderedTrainer:
    """fake_train, but each search trial scores 0.01 higher than the one before (the latest trial is the best), and
    every confirmation training (a seed other than the study's 0) scores 0.6. Records each config it trains."""

    def __init__(self):
        self.configs = []

    def __call__(self, config, data, callbacks=(), verbose=0, **options):
        self.configs.append((config, data))
        result = fake_train(config, data, callbacks, verbose, **options)
        searched = sum(c.seed == 0 for c, _ in self.configs)
        val = 0.5 + 0.01 * searched if config.seed == 0 else 0.6
        return dataclasses.replace(result, val_accuracy=val, test_accuracy=val - 0.02)


def _companion(folder):
    return optuna.load_study(study_name=COMPANION, storage=f"sqlite:///{folder / 'optuna.db'}")


def _pairs(folder, key: str | None = None) -> list[tuple[str, int]]:
    """(arm, seed) of the companion's complete trials (of the recommendation `key`, where given), sorted."""
    return sorted((t.user_attrs[contract.ARM_ATTR], t.user_attrs[contract.SEED_ATTR])
                  for t in _companion(folder).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                  if key is None or t.user_attrs[contract.CONFIRMS_ATTR] == key)


def _runs(folder) -> list:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_the_arms_train_on_fresh_seeds_in_the_companion_study_and_mlflow_names_them(mock_study):
    trainer = OrderedTrainer()
    assert run_mocked(["--trials", "6", *SMALL, "--confirm", "2"], train_fn=trainer) == 0

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{mock_study / 'optuna.db'}")
    assert len(study.trials) == 6, "confirmations never count towards --trials"
    companion = _companion(mock_study)
    # Trial 5 is the best (the latest); trial 1 (seed-deeper, 0.52) the best without batchnorm.
    recommendation = companion.user_attrs[contract.RECOMMENDATION_ATTR]
    assert recommendation == {"key": "trial-5/own", "trial": 5, "option": "own", "momentum": None}
    assert companion.user_attrs[contract.CONFIRM_K_ATTR] == 2
    trials = companion.trials
    assert [(t.state.name, t.user_attrs[contract.ARM_ATTR], t.user_attrs[contract.SEED_ATTR],
             t.user_attrs[contract.SOURCE_TRIAL_ATTR], t.user_attrs[contract.CONFIRMS_ATTR]) for t in trials] == [
        ("COMPLETE", "recommended", 1001, 5, "trial-5/own"),
        ("COMPLETE", "best_without_bn", 1001, 1, "trial-5/own"),
        ("COMPLETE", "starting_point", 1001, 2, "trial-5/own"),
        ("COMPLETE", "recommended", 1002, 5, "trial-5/own"),
        ("COMPLETE", "best_without_bn", 1002, 1, "trial-5/own"),
        ("COMPLETE", "starting_point", 1002, 2, "trial-5/own")]
    # Each confirmation stores what a search trial stores: the final metrics and the momentum curve.
    assert all(t.user_attrs["test_accuracy"] == pytest.approx(0.58) and "gap" in t.user_attrs for t in trials)
    assert contract.MOMENTUM_CURVE_ATTR in trials[0].user_attrs
    assert contract.MOMENTUM_CURVE_ATTR not in trials[1].user_attrs  # no batchnorm, no curve

    # The configs: the source trials' values with the confirmation seed; the same data object (same split).
    confirmed = [(c, d) for c, d in trainer.configs if c.seed != 0]
    searched = {i: c for i, (c, _) in enumerate(trainer.configs[:6])}
    assert [c.seed for c, _ in confirmed] == [1001] * 3 + [1002] * 3
    assert confirmed[0][0] == searched[5].replace(seed=1001)
    assert confirmed[1][0] == searched[1].replace(seed=1001)
    assert confirmed[2][0] == searched[2].replace(seed=1001)
    assert all(d is trainer.configs[0][1] for _, d in confirmed)

    runs = _runs(mock_study)
    parent_id = study.user_attrs[contract.PARENT_RUN_ID_ATTR]
    confirm_runs = sorted((r for r in runs if contract.ARM_TAG in r.data.tags), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in confirm_runs] == [
        "confirm-best_without_bn-seed-1001", "confirm-best_without_bn-seed-1002", "confirm-recommended-seed-1001",
        "confirm-recommended-seed-1002", "confirm-starting_point-seed-1001", "confirm-starting_point-seed-1002"]
    for run in confirm_runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["mlflow.parentRunId"] == parent_id
        assert (tags[contract.SEED_TAG], tags[contract.CONFIRMS_TAG], tags[contract.STUDY_TAG]) == (
            run.info.run_name.rsplit("-", 1)[1], "trial-5/own", COMPANION)
        assert run.data.params["seed"] == tags[contract.SEED_TAG]
    parent = next(r for r in runs if r.info.run_id == parent_id)
    # The parent's description states the report's numbers (study.report.confirmation): 0.58 on each seed.
    assert ("**Confirmed** (trial-5/own, 2 fresh seeds per arm): mean test_accuracy recommended 0.5800 (n=2, 95 % "
            "interval 0.5800 to 0.5800); best_without_bn 0.5800 (n=2, 95 % interval 0.5800 to 0.5800); "
            "starting_point 0.5800 (n=2, 95 % interval 0.5800 to 0.5800).") in parent.data.tags["mlflow.note.content"]


def test_the_command_confirms_by_default_with_the_contracts_k(mock_study):
    trainer = OrderedTrainer()
    assert run_mocked(["--trials", "5", *SMALL], train_fn=trainer, confirm_default=True) == 0
    seeds = (1001, 1002, 1003)
    assert contract.DEFAULT_CONFIRM_K == len(seeds)
    assert _pairs(mock_study) == sorted((arm, seed) for arm in ("recommended", "best_without_bn", "starting_point")
                                        for seed in seeds)
    assert len(trainer.configs) == 5 + 3 * len(seeds)


def test_a_rerun_with_a_larger_k_tops_up_and_one_with_the_same_k_trains_nothing(mock_study, capsys):
    trainer = OrderedTrainer()
    assert run_mocked(["--trials", "6", *SMALL, "--confirm", "2"], train_fn=trainer) == 0
    capsys.readouterr()
    assert run_mocked(["--trials", "6", *SMALL, "--confirm", "3"], train_fn=trainer) == 0
    out = capsys.readouterr().out
    assert len(trainer.configs) == 6 + 6 + 3, "exactly one more seed for each of the 3 arms"
    assert ("confirmation of trial-5/own: 3 arm(s) (recommended, best_without_bn, starting_point) x 3 seed(s) = "
            "9 training(s), 3 to train; about ") in out
    assert _pairs(mock_study) == sorted((arm, seed) for arm in contract.ARMS for seed in (1001, 1002, 1003))
    assert run_mocked(["--trials", "6", *SMALL, "--confirm", "3"], train_fn=trainer) == 0
    assert len(trainer.configs) == 15
    assert "= 9 training(s), all trained" in capsys.readouterr().out


def test_a_changed_recommendation_keeps_the_old_runs_labelled_and_gets_its_own(mock_study):
    trainer = OrderedTrainer()
    assert run_mocked(["--trials", "6", *SMALL, "--confirm", "2"], train_fn=trainer) == 0
    # Two more trials: trial 7 is now the best.
    assert run_mocked(["--trials", "8", *SMALL, "--confirm", "2"], train_fn=trainer) == 0

    assert _companion(mock_study).user_attrs[contract.RECOMMENDATION_ATTR]["key"] == "trial-7/own"
    both = sorted((arm, seed) for arm in contract.ARMS for seed in (1001, 1002))
    assert _pairs(mock_study, "trial-5/own") == both
    assert _pairs(mock_study, "trial-7/own") == both
    sources = {t.user_attrs[contract.SOURCE_TRIAL_ATTR] for t in _companion(mock_study).trials
               if t.user_attrs[contract.CONFIRMS_ATTR] == "trial-7/own"
               and t.user_attrs[contract.ARM_ATTR] == "recommended"}
    assert sources == {7}
    labels = sorted(r.data.tags[contract.CONFIRMS_TAG] for r in _runs(mock_study) if contract.ARM_TAG in r.data.tags)
    assert labels == ["trial-5/own"] * 6 + ["trial-7/own"] * 6


def test_confirm_0_trains_no_confirmation(mock_study):
    trainer = OrderedTrainer()
    assert run_mocked(["--trials", "5", *SMALL, "--confirm", "0"], train_fn=trainer) == 0
    assert len(trainer.configs) == 5
    assert COMPANION not in optuna.get_all_study_names(f"sqlite:///{mock_study / 'optuna.db'}")
    assert not [r for r in _runs(mock_study) if contract.ARM_TAG in r.data.tags]


@pytest.mark.parametrize("value", ["-1", "101"])
def test_a_confirm_out_of_range_is_refused_in_one_line(mock_study, capsys, value):
    assert run_mocked(["--trials", "5", *SMALL, "--confirm", value]) == 2
    assert capsys.readouterr().err == (f"error: --confirm={value} is invalid; use 0 (no confirmation) to 100 seeds "
                                       "per arm.\n")
    assert not (mock_study / "optuna.db").exists()


def test_kill_9_during_a_confirmation_then_a_rerun_leaves_exactly_k_per_arm(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["--trials", "5", *SMALL, "--confirm", "2"]
    env = {"GAPLAB_HEARTBEAT_GRACE": "2"}
    [(code, _, err)] = finish([start_mocked(tmp_path, ["--trials", "5", *SMALL, "--confirm", "0"], **env)])
    assert code == 0, err[-3000:]
    process = start_mocked(tmp_path, args, GAPLAB_TEST_TRIAL_SECONDS="0.5", **env)
    wait_for_running_trial(storage, COMPANION, [process.pid], first_number=1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.communicate()  # its pipes, closed
    states = [t.state.name for t in _companion(tmp_path).trials]
    assert "RUNNING" in states, states
    time.sleep(2.5)  # the rerun fails the dead trial once its heartbeat is older than the grace

    [(code, out, err)] = finish([start_mocked(tmp_path, args, **env)])
    assert code == 0, err[-3000:]
    companion = _companion(tmp_path)
    recommended = companion.user_attrs[contract.RECOMMENDATION_ATTR]["key"]
    assert _pairs(tmp_path) == sorted((arm, seed) for arm in ("recommended", "starting_point") for seed in (1001, 1002))
    assert [t.state.name for t in companion.trials].count("FAIL") == 1, "the killed training, trained again"
    assert "RUNNING" not in {t.state.name for t in companion.trials}
    runs = [r for r in _runs(tmp_path) if contract.ARM_TAG in r.data.tags]
    assert all(r.info.status != "RUNNING" for r in _runs(tmp_path))
    # One run per confirmation trial: the complete ones' say so (a run the killed process had not written yet is
    # ended KILLED, "not written"), the killed training's says its worker died.
    by_trial = {int(r.data.tags[contract.TRIAL_NUMBER_TAG]): r for r in runs}
    assert len(by_trial) == len(runs) == len(companion.trials)
    for trial in companion.trials:
        run = by_trial[trial.number]
        assert run.data.tags[contract.TRIAL_STATE_TAG] == trial.state.name
        assert (run.data.tags[contract.ARM_TAG], run.data.tags[contract.SEED_TAG]) == (
            trial.user_attrs[contract.ARM_ATTR], str(trial.user_attrs[contract.SEED_ATTR]))
        if trial.state.name == "FAIL":
            assert run.data.tags[contract.ERROR_TAG].startswith(contract.WORKER_DIED)
    assert all(r.data.tags[contract.CONFIRMS_TAG] == recommended for r in runs)


@pytest.mark.slow
def test_the_real_trainer_confirms_on_generated_images_and_tags_the_registered_model(mock_study):
    from study import run
    from tests.helpers import exit_code

    photos = make_folder(mock_study / "photos", {"cat": 24, "dog": 24, "emu": 24}, size=20)
    argv = ["--trials", "4", "--data_dir", str(photos), "--image_size", "16", "--epochs", "1", "--pruner", "none",
            "--confirm", "1"]
    assert exit_code(run.main, argv) == 0

    storage = f"sqlite:///{mock_study / 'optuna.db'}"
    study = optuna.load_study(study_name="photos-16px", storage=storage)
    companion = optuna.load_study(study_name=contract.confirmation_study_name("photos-16px"), storage=storage)
    trials = companion.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    arms = [t.user_attrs[contract.ARM_ATTR] for t in trials]
    assert arms[0] == "recommended" and arms[-1] == "starting_point" and len(arms) == len(set(arms))
    assert {t.user_attrs[contract.SEED_ATTR] for t in trials} == {1001}
    best = study.best_trial
    for trial in trials:
        assert 0 <= trial.user_attrs["test_accuracy"] <= 1 and trial.user_attrs["steps"] > 0
        if trial.user_attrs[contract.BATCHNORM_ATTR]:
            assert trial.user_attrs[contract.MOMENTUM_CURVE_ATTR]["test_accuracy"]
    client = MlflowClient()
    version = client.get_model_version_by_alias("photos-16px", "best")
    # Under 6 curves the recommendation is the best trial as trained: the registered one.
    [retrained] = [t for t in trials if t.user_attrs.get(contract.SOURCE_TRIAL_ATTR) == best.number]
    assert version.tags[contract.CONFIRMED_TEST_ACCURACY_TAG] == f"{retrained.user_attrs['test_accuracy']:.4f}"
    assert version.tags[contract.CONFIRMED_N_TAG] == "1"


def test_the_cost_estimate_takes_each_arms_source_trial_and_else_the_median_complete_trial():
    import datetime

    from gaplab.config import TrainConfig
    from study import confirm

    study = optuna.create_study()
    start = datetime.datetime(2026, 12, 7, 12, 0, 0)
    for number, seconds in enumerate((10, 20, 60)):
        study.add_trial(optuna.trial.FrozenTrial(
            number=number, state=optuna.trial.TrialState.COMPLETE, value=0.5, values=None, datetime_start=start,
            datetime_complete=start + datetime.timedelta(seconds=seconds), params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=number))
    config = TrainConfig()
    recommended, unfinished = confirm.Arm("recommended", 2, config), confirm.Arm("starting_point", None, config)
    # Two seeds of trial 2's 60 s, and one of a preset the study never finished: the median, 20 s.
    assert confirm.estimated_seconds(study, [(recommended, 1001), (recommended, 1002), (unfinished, 1001)]) == 140
    assert confirm.confirmation_seeds(0, 3) == [1001, 1002, 1003]
    assert confirm.confirmation_seeds(2**32 - 1002, 2) == [2**32 - 1, 0], "seeds wrap into NumPy's range"
