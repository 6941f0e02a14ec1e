"""A study stopped at any moment, by any signal, is resumed exactly, and no stop leaves a run RUNNING.

Real processes (`python -m tests.mocked_run`, the command with the mock trainer) and real signals:
SIGINT (one, two or three), SIGTERM and kill -9, at a sweep of moments across start-up, inside presets and
sampled trials, and around the creation of a trial's MLflow run. Each stopped study is rerun and must end
as an uninterrupted run does (tests.helpers.assert_one_study).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from study import stopping
from study.contract import PARENT_RUN_ID_ATTR, WORKER_ATTR
from study.tracking import recovery
from tests.helpers import (
    assert_one_study,
    finish,
    run_mocked,
    start_mocked,
    wait_for_running_trial,
)

STUDY = "shapes-16px"
SMALL = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]
GRACE_S = 2
# For the tests whose signals land in trials, not in the start-up: the mock trainer needs no deep learning
# backend, and Keras's NumPy backend loads about 3 s sooner than TensorFlow in each of their processes.
IN_TRIALS = {"KERAS_BACKEND": "numpy", "GAPLAB_HEARTBEAT_GRACE": str(GRACE_S)}


def _stores(folder: Path) -> tuple[str, str]:
    return f"sqlite:///{folder / 'optuna.db'}", f"sqlite:///{folder / 'mlflow.db'}"


def _rerun(folder: Path, trials: int, **env: str) -> str:
    """Rerun the command to its end; its stdout."""
    [(code, out, err)] = finish([start_mocked(folder, ["--trials", str(trials), *SMALL], **env)])
    assert code == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return out


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def _nothing_running(folder: Path) -> None:
    """No trial RUNNING in Optuna and no run RUNNING in MLflow, where the stores exist; both stores whole."""
    storage, tracking_uri = _stores(folder)
    for store in ("optuna.db", "mlflow.db"):
        if (folder / store).exists():
            with contextlib.closing(sqlite3.connect(folder / store)) as connection:
                assert connection.execute("pragma integrity_check").fetchone() == ("ok",)
    if (folder / "optuna.db").exists() and STUDY in optuna.get_all_study_names(storage):
        states = [t.state.name for t in optuna.load_study(study_name=STUDY, storage=storage).trials]
        assert "RUNNING" not in states, states
    if (folder / "mlflow.db").exists():
        client = MlflowClient(tracking_uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
        assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []


def _trained_presets(stdout: str) -> tuple[list[str], list[str]]:
    """(the presets the start line says the command trains, the presets its progress lines show it trained)."""
    announced = re.search(r"first the preset\(s\) ([\w, -]+)", stdout)
    return (announced.group(1).split(", ") if announced else [],
            re.findall(r"^\[\d+/\d+\] trial \d+ \[([\w-]+)\] (?:COMPLETE|PRUNED)", stdout, re.MULTILINE))


# -- 2. resume is exact -----------------------------------------------------------------------------


# Trials "train" 0.6 s: 0.3 s in lands in the first preset, 1.5 s in the second or third, 3.3 s in a sampled trial
# (the four presets come first). SIGINT and SIGTERM take the same path (study.stopping.SIGNALS), so SIGTERM is
# sent at one of the moments; each case is a test of its own so that xdist spreads them over its workers.
RESUME_CASES = [(signal.SIGINT, 0.3), (signal.SIGINT, 1.5), (signal.SIGINT, 3.3), (signal.SIGTERM, 3.3),
                (signal.SIGKILL, 0.3), (signal.SIGKILL, 1.5), (signal.SIGKILL, 3.3)]


@pytest.mark.slow
@pytest.mark.parametrize("signum, delay", RESUME_CASES, ids=[f"{s.name}-{d}s" for s, d in RESUME_CASES])
def test_a_study_stopped_anywhere_and_rerun_is_the_study_an_uninterrupted_run_makes(tmp_path, signum, delay):
    trials = 6
    process = start_mocked(tmp_path, ["--trials", str(trials), *SMALL], GAPLAB_TEST_TRIAL_SECONDS="0.6", **IN_TRIALS)
    wait_for_running_trial(_stores(tmp_path)[0], STUDY, [process.pid])
    time.sleep(delay)
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else stopping.EXIT_CODE), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    if signum == signal.SIGKILL:
        time.sleep(GRACE_S + 0.5)  # the rerun fails the dead trial once its heartbeat is older than the grace
    else:
        _nothing_running(tmp_path)
    out = _rerun(tmp_path, trials, **IN_TRIALS)
    announced, trained = _trained_presets(out)
    assert announced == trained, "the start line says which presets the rerun trains"
    assert_one_study(*_stores(tmp_path), trials, failed_at_most=1)


# -- 3. a dead trial's run is always ended ------------------------------------------------------------


def test_a_stale_trial_whose_run_id_never_reached_optuna_has_its_run_found_by_its_tags_and_killed(mock_study):
    assert run_mocked(["--trials", "1", *SMALL]) == 0
    study = optuna.load_study(study_name=STUDY, storage=_stores(mock_study)[0])
    client = MlflowClient()
    parent = client.get_run(study.user_attrs[PARENT_RUN_ID_ATTR])
    # What a process left that died after creating trial 1's run and before recording its id in the trial.
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, "elsewhere:1")
    run = client.create_run(parent.info.experiment_id, run_name="trial-001", tags={
        "optuna_trial_number": "1", "study_name": STUDY, "mlflow.parentRunId": parent.info.run_id})
    recovery.end_stale_trial_run(study, study.trials[1])
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert client.get_run(run.info.run_id).data.tags["error"].startswith("worker died: elsewhere:1")
    assert client.get_run(parent.info.run_id).info.status == "FINISHED", "only the trial's run is ended"


def test_a_trial_left_running_without_any_heartbeat_is_failed_by_the_next_start(mock_study):
    # On PostgreSQL Optuna commits a new trial before its first heartbeat; a process that died in between left
    # a trial that Optuna's heartbeat check skips, RUNNING for good.
    assert run_mocked(["--trials", "1", *SMALL]) == 0
    optuna.load_study(study_name=STUDY, storage=_stores(mock_study)[0]).ask()
    assert run_mocked(["--trials", "2", *SMALL]) == 0
    study = optuna.load_study(study_name=STUDY, storage=_stores(mock_study)[0])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]


def _kill_around_run_creation(folder: Path, after_created: float, storage: str = "", tracking_uri: str = "") -> None:
    """kill -9 the command `after_created` seconds after it created trial 0's MLflow run (it then pauses 1 s
    before recording the run's id in the trial, and trains 0.5 s), rerun it, and check the study is whole."""
    marker = folder / "run-created"
    env = {**IN_TRIALS, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
    args = ["--trials", "3", *SMALL, *(["--storage", storage] if storage else [])]
    process = start_mocked(folder, args, GAPLAB_TEST_PAUSE_AFTER_RUN="1.0", GAPLAB_TEST_MARKER=str(marker),
                           GAPLAB_TEST_TRIAL_SECONDS="0.5", **env)
    _wait_for(marker, process)
    time.sleep(after_created)
    process.kill()
    process.wait()
    time.sleep(GRACE_S + 0.5)
    [(code, _, err)] = finish([start_mocked(folder, args, **env)])
    assert code == 0, err[-3000:]
    killed = r"trial 0 of worker \S+ stopped sending heartbeats: marked FAIL, its MLflow run \w+ KILLED"
    assert re.search(killed, err), err[-3000:]
    assert_one_study(storage or _stores(folder)[0], tracking_uri or _stores(folder)[1], 3, failed_at_most=1)


def test_a_process_killed_between_creating_a_trials_run_and_recording_it_leaves_no_run_running(tmp_path):
    # On a tracking server the run stayed RUNNING for good: its id had not reached the Optuna trial.
    _kill_around_run_creation(tmp_path, 0.3)


# 0.9 s: just before the run's id reaches the trial; 1.3 s: after, while the trial trains. (Well before, 0.3 s, is
# the fast test above.)
@pytest.mark.slow
@pytest.mark.parametrize("after_created", [0.9, 1.3])
def test_a_process_killed_around_a_trials_run_creation_leaves_no_run_running(tmp_path, after_created):
    _kill_around_run_creation(tmp_path, after_created)


@pytest.mark.slow
def test_a_worker_killed_between_creating_its_run_and_recording_it_on_postgresql_and_a_server_leaves_no_run_running(
        tmp_path, postgres, mlflow_server):
    # Where the run's id has not reached the trial (a kill after it did, on PostgreSQL and a server, is
    # tests/test_scaleout.py's kill -9 of a worker mid-trial).
    _kill_around_run_creation(tmp_path, 0.3, f"{postgres}/optuna", mlflow_server)


# -- 4. every stop leaves nothing RUNNING -------------------------------------------------------------


def _handlers_installed(pid: int) -> bool:
    """Whether process `pid` catches SIGTERM: the command's stop handlers are in place (study.stopping)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _stop(folder: Path, signum: signal.Signals, count: int, delay: float, in_trial: bool) -> datetime.datetime:
    """Start the command (trials of 1 s), send `count` signals 0.1 s apart `delay` seconds after its stop handlers
    are in place (or after its first trial started, `in_trial`); check it exits 130 with nothing RUNNING and no
    trace, and that no trial started after the first signal."""
    process = start_mocked(folder, ["--trials", "4", *SMALL], GAPLAB_TEST_TRIAL_SECONDS="1.0")
    deadline = time.monotonic() + 120
    while not _handlers_installed(process.pid):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.01)
    if in_trial:
        wait_for_running_trial(_stores(folder)[0], STUDY, [process.pid])
    time.sleep(delay)
    signalled = datetime.datetime.now()
    for index in range(count):
        if index:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == stopping.EXIT_CODE, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert err.rstrip().endswith("rerun the same command to resume."), err[-3000:]
    _nothing_running(folder)
    storage = _stores(folder)[0]
    if (folder / "optuna.db").exists() and STUDY in optuna.get_all_study_names(storage):
        starts = [t.datetime_start for t in optuna.load_study(study_name=STUDY, storage=storage).trials]
        assert all(start <= signalled for start in starts if start), (starts, signalled)
    return signalled


def test_three_ctrl_c_in_a_row_during_a_trial_exit_130_with_nothing_left_running(tmp_path):
    # Two Ctrl-C in a row left the parent MLflow run RUNNING until the next rerun.
    _stop(tmp_path, signal.SIGINT, 3, 0.3, in_trial=True)


# `delay` from the stop handlers' installation: imports, loading the data, opening the stores, the set-up. One
# SIGINT across the whole start-up; two in a row, and three early and late (a stop that repeats while the first
# is honoured: on a loaded machine the third of the late ones can land while the command exits); SIGTERM, which
# takes SIGINT's path (study.stopping.SIGNALS), late in the set-up.
START_UP_CASES = [(signal.SIGINT, 1, 0.0), (signal.SIGINT, 1, 3.0), (signal.SIGINT, 1, 6.0), (signal.SIGINT, 2, 4.5),
                  (signal.SIGINT, 3, 0.5), (signal.SIGINT, 3, 5.0), (signal.SIGTERM, 1, 7.0)]


@pytest.mark.slow
@pytest.mark.parametrize("signum, count, delay", START_UP_CASES,
                         ids=[f"{s.name}x{c}-{d}s" for s, c, d in START_UP_CASES])
def test_signals_at_a_sweep_of_moments_across_start_up_stop_cleanly_and_a_rerun_finishes(tmp_path, signum, count,
                                                                                          delay):
    _stop(tmp_path, signum, count, delay, in_trial=False)
    _rerun(tmp_path, 4)
    assert_one_study(*_stores(tmp_path), 4, failed_at_most=1)
