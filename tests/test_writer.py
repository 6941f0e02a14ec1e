"""The tracking writer (study.tracking.writer): trial runs are written off the training path and still end only once
written.

Real processes and real signals where a signal is involved: a study whose writer is slowed down (the
subprocess wraps study.tracking.writer.write_trial in a sleep) is stopped by Ctrl-C, SIGTERM or kill -9 while
the writer holds a finished trial, and that trial's run must end FINISHED or KILLED, never RUNNING.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from study import stopping
from study.tracking import Tracker, writer
from tests.helpers import fake_train, run_mocked, subprocess_env

STUDY = "shapes-16px"
SMALL = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]

# `python -m study.run` with the mock trainer, each trial's write slowed by argv[1] seconds and the
# stop's drain bound set to argv[2] seconds.
SLOW_WRITER_STUDY = r"""
import sys, time
from study import run
from study.tracking import writer
from tests.helpers import fake_train

delay, drain = float(sys.argv[1]), float(sys.argv[2])
write_now = writer.write_trial

def slow_write(write):
    time.sleep(delay)
    write_now(write)

writer.write_trial = slow_write
writer.STOP_DRAIN_SECONDS = drain
sys.exit(run.main(sys.argv[3:], train_fn=fake_train))
"""


def _start_slow_study(tmp_path, delay: float, drain: float, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**subprocess_env(tmp_path), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", SLOW_WRITER_STUDY, str(delay), str(drain), "--trials", "6",
                             *SMALL], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_a_held_trial(tmp_path, timeout: float = 240) -> tuple[int, str]:
    """(number, run id) of a trial finished in Optuna whose MLflow run is still RUNNING: the writer holds it."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name=STUDY, storage=storage)
            for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
                run_id = trial.user_attrs["mlflow_run_id"]
                if client.get_run(run_id).info.status == "RUNNING":
                    return trial.number, run_id
        except KeyError:
            pass  # the study is not created yet
        time.sleep(0.2)
    raise AssertionError(f"no finished trial with a RUNNING run within {timeout} s")


def _runs(tmp_path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(STUDY).experiment_id], max_results=1000)


@pytest.mark.slow
def test_ctrl_c_while_the_writer_holds_a_trial_waits_for_it_and_its_run_ends_finished(tmp_path):
    process = _start_slow_study(tmp_path, delay=3, drain=30)
    number, run_id = _wait_for_a_held_trial(tmp_path)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_CODE, stderr[-3000:]
    runs = {run.info.run_id: run for run in _runs(tmp_path)}
    assert "RUNNING" not in {run.info.status for run in runs.values()}
    held = runs[run_id]
    assert (held.info.status, held.data.tags["trial_state"]) == ("FINISHED", "COMPLETE"), held.data.tags
    assert "val_accuracy" in held.data.metrics
    artifacts = {item.path for item in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(run_id)}
    assert {"confusion_matrix.json", "learning_curves.png"} <= artifacts, (number, artifacts)


@pytest.mark.slow
def test_sigterm_with_a_writer_slower_than_the_bound_ends_the_held_run_killed_and_says_so(tmp_path):
    process = _start_slow_study(tmp_path, delay=600, drain=1)
    number, run_id = _wait_for_a_held_trial(tmp_path)
    stopped = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_CODE, stderr[-3000:]
    assert time.time() - stopped < 60, "the drain is bounded"
    assert f"the MLflow run(s) of trial(s) {number} could not be written within 1 s" in stderr, stderr[-3000:]
    runs = {run.info.run_id: run for run in _runs(tmp_path)}
    assert "RUNNING" not in {run.info.status for run in runs.values()}
    held = runs[run_id]
    assert held.info.status == "KILLED" and held.data.tags["trial_state"] == "COMPLETE"
    assert held.data.tags["error"].startswith("not written: the process stopped and its writer did not finish "
                                              "within 1 s"), held.data.tags["error"]


@pytest.mark.slow
def test_kill_9_while_the_writer_holds_a_trial_its_run_is_ended_killed_by_the_next_start(tmp_path):
    grace = {"GAPLAB_HEARTBEAT_GRACE": "3"}
    process = _start_slow_study(tmp_path, delay=600, drain=30, env_extra=grace)
    number, run_id = _wait_for_a_held_trial(tmp_path)
    process.kill()
    process.communicate()
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "RUNNING"
    # The target (1) is met: the rerun trains nothing, yet ends the run the dead process's writer held.
    env = {**subprocess_env(tmp_path), **grace}
    done = subprocess.run([sys.executable, "-m", "study.run", "--confirm", "0", "--trials", "1", *SMALL],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {run.info.run_id: run for run in _runs(tmp_path)}
    assert "RUNNING" not in {run.info.status for run in runs.values()}, \
        [(run.info.run_name, run.info.status) for run in runs.values()]
    held = runs[run_id]
    assert held.info.status == "KILLED" and held.data.tags["trial_state"] == "COMPLETE"
    assert held.data.tags["error"].startswith(f"not written: its process {socket.gethostname()}:{process.pid} "
                                              "stopped"), held.data.tags["error"]


def _three_trials_whose_trial_1_ends_failed(folder, error: str) -> dict:
    """Run a 3-trial mock study in `folder` whose trial 1's record fails to be written: every trial COMPLETE in
    Optuna, trial 1's run FAILED with tag `error`, the others FINISHED. The runs by trial number."""
    assert run_mocked(["--trials", "3", *SMALL]) == 0
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [trial.state.name for trial in study.trials[:3]] == ["COMPLETE"] * 3, "the measurement stands"
    runs = {int(run.data.tags["optuna_trial_number"]): run for run in _runs(folder)
            if "mlflow.parentRunId" in run.data.tags}
    assert runs[1].info.status == "FAILED" and runs[1].data.tags["trial_state"] == "COMPLETE"
    assert runs[1].data.tags["error"] == error
    assert [runs[number].info.status for number in (0, 2)] == ["FINISHED", "FINISHED"]
    return runs


def test_a_failing_write_ends_that_run_failed_with_the_error_and_the_study_goes_on(mock_study, monkeypatch, capsys):
    write_now = writer.write_trial

    def fails_for_trial_1(write):
        if write.run.trial_number == 1:
            raise OSError("disk full")
        write_now(write)

    monkeypatch.setattr(writer, "write_trial", fails_for_trial_1)
    runs = _three_trials_whose_trial_1_ends_failed(mock_study, "writing the run failed: OSError: disk full")
    client = MlflowClient()
    details = Path(client.download_artifacts(runs[1].info.run_id, "error.txt", str(mock_study))).read_text()
    assert "Traceback" in details and "OSError: disk full" in details
    assert "trial 1: writing the run failed (OSError: disk full); its run ends FAILED and the study goes on." \
        in capsys.readouterr().err


def _with_a_model(config, data, callbacks=(), verbose=0, **options):
    """The mock trainer, with the variables of a real (untrained) model so that the trial logs a model."""
    from gaplab.compiled import variable_values
    from gaplab.model import build_model

    result = fake_train(config, data, callbacks, verbose, **options)
    model = build_model(config, data.num_classes, runtime_hyperparameters=True)
    return dataclasses.replace(result, trained_values=variable_values(model))


def test_the_best_alias_points_at_a_written_model_though_the_writer_is_slow(mock_study, monkeypatch):
    write_now = writer.write_trial

    def slow_write(write):
        time.sleep(1.0)
        write_now(write)

    monkeypatch.setattr(writer, "write_trial", slow_write)
    assert run_mocked(["--trials", "2", *SMALL], train_fn=_with_a_model) == 0
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{mock_study / 'optuna.db'}")
    client = MlflowClient()
    version = client.get_model_version_by_alias(STUDY, "best")
    assert version.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    assert client.get_run(version.run_id).info.status == "FINISHED"
    assert client.get_logged_model(version.source.removeprefix("models:/")).status == LoggedModelStatus.READY
    model = mlflow.keras.load_model(f"models:/{STUDY}@best")
    assert model.output_shape == (None, len(study.user_attrs["class_names"]))


def test_a_best_model_that_was_never_written_is_not_registered(mock_study, monkeypatch, capsys):
    def fails(write):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "write_trial", fails)
    assert run_mocked(["--trials", "1", *SMALL], train_fn=_with_a_model) == 0
    client = MlflowClient()
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_registered_model(STUDY)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{mock_study / 'optuna.db'}")
    model_id = study.best_trial.user_attrs["model_uri"].removeprefix("models:/")
    assert client.get_logged_model(model_id).status == LoggedModelStatus.FAILED
    assert f"the best trial ({study.best_trial.number})'s model models:/{model_id} was not written" \
        in capsys.readouterr().err


def test_the_writer_overlaps_with_training(tmp_path, tiny_data):
    """A trainer and a writer that each take 1 s per trial: trials train while the previous one is written, and
    the study takes less than their sum."""
    from gaplab.config import TrainConfig
    from study.objective import Objective

    seconds = 1.0
    spans = {"train": [], "write": []}

    def sleepy_train(config, data, callbacks=(), verbose=0, **options):
        started = time.perf_counter()
        time.sleep(seconds)
        result = fake_train(config, data, callbacks, verbose, **options)
        spans["train"].append((started, time.perf_counter()))
        return result

    def slow_write(write):
        started = time.perf_counter()
        time.sleep(seconds)
        spans["write"].append((started, time.perf_counter()))

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(STUDY)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    tracking_writer = writer.TrackingWriter(write=slow_write)
    base = TrainConfig(image_size=16, epochs=1)
    with mlflow.start_run() as parent:
        tracker = Tracker(STUDY, parent_run_id=parent.info.run_id, tracking_writer=tracking_writer)
        objective = Objective(tracker, tiny_data, base, {}, train_fn=sleepy_train)
        trials = 4
        started = time.perf_counter()
        study.optimize(objective, n_trials=trials)
        assert tracking_writer.drain() == []
        wall = time.perf_counter() - started
    assert len(spans["write"]) == trials
    # Seconds during which a trial's run was being written while another trial trained.
    together = sum(max(0.0, min(write[1], train[1]) - max(write[0], train[0]))
                   for write in spans["write"] for train in spans["train"])
    assert together > 0.5 * seconds * (trials - 1), spans
    assert wall < 2 * seconds * trials, f"wall {wall:.1f} s against {2 * seconds * trials:.1f} s in series"
    client = MlflowClient()
    statuses = [client.get_run(trial.user_attrs["mlflow_run_id"]).info.status for trial in study.trials]
    assert statuses == ["FINISHED"] * trials


def test_writing_a_trial_on_another_thread_leaves_the_training_threads_random_state_alone(tmp_path, tiny_data):
    """Building a Keras model draws seeds from Python's global `random`: the writer only saves a model built
    on the training thread, so the next trial's seeded initial weights cannot change under it."""
    from gaplab.config import TrainConfig

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(STUDY)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = study.ask()
    config = TrainConfig(image_size=16, epochs=1, depth=2)
    result = _with_a_model(config, tiny_data)
    threads = []

    def write_noting_the_thread(write):
        threads.append(threading.current_thread().name)
        writer.write_trial(write)

    with mlflow.start_run() as parent, Tracker(STUDY, parent_run_id=parent.info.run_id, tracking_writer=(
            writer.TrackingWriter(write=write_noting_the_thread))) as tracker:
        with tracker.trial(trial, {}) as run:
            write = tracker.prepare_write(run, result, tiny_data, "COMPLETE", with_model=True)
            states = random.getstate(), np.random.get_state()[1].copy()
            tracker.hand_over(write)
    assert threads == ["tracking-writer"]
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert MlflowClient().get_logged_model(write.model_id).status == LoggedModelStatus.READY


def _objective_with(tmp_path, tiny_data, train_fn, tracking_writer, epochs: int = 3):
    """A study and the objective, in stores under tmp_path, started inside a parent run (the caller ends it)."""
    from gaplab.config import TrainConfig
    from study.objective import Objective

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(STUDY)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize",
                                pruner=optuna.pruners.NopPruner())
    parent = mlflow.start_run()
    tracker = Tracker(STUDY, parent_run_id=parent.info.run_id, tracking_writer=tracking_writer)
    objective = Objective(tracker, tiny_data, TrainConfig(image_size=16, epochs=epochs), {}, train_fn=train_fn)
    return study, objective


def _slow_epoch_writes(seconds: float, done: list[tuple[str, float]]):
    def write(epoch: writer.EpochMetrics) -> None:
        time.sleep(seconds)
        writer.write_epoch(epoch)
        done.append((threading.current_thread().name, time.time()))
    return write


def test_epoch_metrics_are_written_off_the_training_thread_and_before_their_run_ends(tmp_path, tiny_data):
    done: list[tuple[str, float]] = []
    trained: list[float] = []

    def timed_train(*call, **options):
        started = time.perf_counter()
        result = fake_train(*call, **options)
        trained.append(time.perf_counter() - started)
        return result

    tracking_writer = writer.TrackingWriter(log_epoch_metrics=_slow_epoch_writes(0.3, done))
    study, objective = _objective_with(tmp_path, tiny_data, timed_train, tracking_writer)
    try:
        study.optimize(objective, n_trials=2)
        assert tracking_writer.drain() == []
    finally:
        mlflow.end_run()
    assert max(trained) < 0.3, f"train() waited for the epochs' writes: {trained}"
    assert {name for name, _ in done} == {"tracking-writer-epochs"} and len(done) == 2 * 3
    client = MlflowClient()
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert [point.step for point in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    last_epoch_written = max(moment for _, moment in done[:3])
    first_run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert first_run.info.end_time / 1000 >= last_epoch_written - 0.001, "the run ended before its epochs"


def test_a_run_that_fails_in_training_ends_after_its_epochs_are_written(tmp_path, tiny_data):
    from gaplab.trainer import EpochCallback

    done: list[tuple[str, float]] = []

    def fails_at_epoch_3(config, data, callbacks=(), verbose=0, **options):
        for epoch in (1, 2):
            for callback in callbacks:
                if isinstance(callback, EpochCallback):
                    callback.on_epoch(epoch, {"train_loss": 1.0 / epoch, "val_accuracy": 0.5})
        raise RuntimeError("out of memory at epoch 3")

    tracking_writer = writer.TrackingWriter(log_epoch_metrics=_slow_epoch_writes(0.5, done))
    study, objective = _objective_with(tmp_path, tiny_data, fails_at_epoch_3, tracking_writer)
    try:
        study.optimize(objective, n_trials=1, catch=(RuntimeError,))
    finally:
        mlflow.end_run()
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    client = MlflowClient()
    run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: out of memory at epoch 3"
    assert [point.step for point in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.info.end_time / 1000 >= max(moment for _, moment in done) - 0.001, "the run ended before its epochs"


def test_an_epoch_that_cannot_be_written_ends_its_run_failed_with_the_error_and_the_study_goes_on(
        mock_study, monkeypatch, capsys):
    write_now = writer.write_epoch

    def fails_for_trial_1(epoch):
        if MlflowClient().get_run(epoch.run_id).data.tags["optuna_trial_number"] == "1":
            raise OSError("database is locked")
        write_now(epoch)

    monkeypatch.setattr(writer, "write_epoch", fails_for_trial_1)
    runs = _three_trials_whose_trial_1_ends_failed(mock_study, "writing the run failed: OSError: database is locked")
    assert "confusion_matrix.json" in {item.path for item in MlflowClient().list_artifacts(runs[1].info.run_id)}, \
        "the rest of the run is still written"
    assert "trial 1: writing the run failed (OSError: database is locked)" in capsys.readouterr().err
