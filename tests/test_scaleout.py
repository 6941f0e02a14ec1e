"""Scale-out: several workers on one study, GPU placement, bad storage input, and real faults (kill -9, Ctrl-C).

The heavy tests run real worker processes and send them real signals, on SQLite and on a throwaway
PostgreSQL cluster with a real `mlflow server`; a short heartbeat grace keeps them quick.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from study import stopping, workers
from tests.helpers import ROOT, finish, run_mocked, start_mocked, subprocess_env, wait_for_running_trial

GRACE_S = 3
STUDY = "shapes-16px"
SMALL = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]


# -- placement, environment and seeds: no processes ---------------------------------------------


def test_worker_i_gets_gpu_i_mod_g_without_preallocation_and_without_the_launchers_run():
    base = {"MLFLOW_RUN_ID": "launcher", "PATH": "/bin"}
    envs = [workers.worker_environment(base, index, ("0", "3"), seed=index) for index in range(3)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0", "3", "0"]
    assert all(env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
               for env in envs)
    assert all("MLFLOW_RUN_ID" not in env and env["PATH"] == "/bin" for env in envs)
    assert [env[workers.WORKER_INDEX_ENV] for env in envs] == ["0", "1", "2"]
    cpu_only = workers.worker_environment(base, 1, (), seed=5)
    assert "CUDA_VISIBLE_DEVICES" not in cpu_only and cpu_only[workers.SAMPLER_SEED_ENV] == "5"


def test_gpus_default_to_all_and_a_missing_one_is_named_with_those_that_exist():
    here = ["0 NVIDIA H200", "1 NVIDIA H200"]
    assert workers.parse_gpus("", here) == ("0", "1")
    assert workers.parse_gpus("1,0", here) == ("1", "0")
    with pytest.raises(workers.UsageError, match=r"--gpus='0,2' names GPU 2 that does not exist; the GPUs "
                                                 r"here are: 0 NVIDIA H200; 1 NVIDIA H200"):
        workers.parse_gpus("0,2", here)
    with pytest.raises(workers.UsageError, match="none"):
        workers.parse_gpus("0", [])


def test_sampler_seeds_are_reproducible_but_differ_per_resume_and_worker():
    seed = workers.sampler_seed
    assert seed(0, 4, 0, False) == seed(0, 4, 0, False)
    assert len({seed(0, count, index, False) for count in (0, 4, 5) for index in range(3)}) == 9
    assert seed(0, 4, 0, True) != seed(0, 4, 0, True), "two joiners of a live study must not draw alike"


# -- bad input: one line, exit 2, password masked --------------------------------------------------


@pytest.mark.parametrize("args, env_extra, expected", [
    (["--workers", "0"], {}, "--workers=0 is invalid; use at least 1."),
    (["--workers", "-2"], {}, "--workers=-2 is invalid"),
    (["--gpus", "7"], {}, "--gpus='7' names GPU 7 that does not exist"),
    (["--storage", "postgresql+psycopg://gaplab:s3cret@127.0.0.1:1/optuna"], {},
     "--storage='postgresql+psycopg://gaplab:***@127.0.0.1:1/optuna' cannot be opened"),
    (["--storage", "postgresql+pg8000://gaplab:s3cret@127.0.0.1:1/optuna"], {},
     "needs the database driver 'pg8000', which is not installed; install that driver, or use PostgreSQL, "
     "which this project supports: pip install -e \".[postgres]\""),
    (["--storage", "mysql://gaplab:s3cret@127.0.0.1:1/optuna"], {},
     "--storage='mysql://gaplab:***@127.0.0.1:1/optuna' needs the database driver 'MySQLdb'"),
    ([], {"MLFLOW_TRACKING_URI": "http://gaplab:s3cret@127.0.0.1:1"},
     "MLFLOW_TRACKING_URI='http://gaplab:***@127.0.0.1:1' cannot be used"),
])
def test_bad_workers_gpus_storage_or_tracking_uri_exit_2_with_the_password_masked(
        tmp_path, monkeypatch, capsys, args, env_extra, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(workers, "list_gpus", lambda: [])
    for key, value in env_extra.items():
        monkeypatch.setenv(key, value)
    started = time.perf_counter()
    assert run_mocked(["--trials", "1", *SMALL, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err
    assert "s3cret" not in err
    assert time.perf_counter() - started < 60


# -- defects, with the mock trainer (in one process, fast) -----------------------------------------


def test_resume_with_other_settings_is_refused_naming_them(mock_study, capsys):
    assert run_mocked(["--trials", "2", "--study_name", "mine", *SMALL]) == 0
    args = ["--trials", "3", "--study_name", "mine", "--pruner", "none"]
    assert run_mocked([*args, "--epochs", "2", "--image_size", "24"]) == 2
    err = capsys.readouterr().err
    assert "study 'mine' was run with" in err and "image_size=16, epochs=1" in err and "image_size=24, epochs=2" in err
    assert "another --study_name" in err
    study = optuna.load_study(study_name="mine", storage=f"sqlite:///{mock_study / 'optuna.db'}")
    assert len(study.trials) == 2 and sum(t.state.name == "COMPLETE" for t in study.trials) == 2


def test_resumes_never_repeat_a_sampled_point(mock_study):
    for total in (5, 6, 7, 8):
        assert run_mocked(["--trials", str(total), *SMALL]) == 0
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{mock_study / 'optuna.db'}")
    searched = [tuple(sorted(t.params.items())) for t in study.trials if "preset" not in t.user_attrs]
    assert len(searched) == 4 and len(set(searched)) == 4, searched


def test_under_mlflow_run_without_an_experiment_the_study_still_goes_in_its_own_and_the_launcher_links_to_it(
        mock_study, monkeypatch, capsys):
    # `mlflow run .` (the README's command) creates its run in "Default" and passes MLFLOW_RUN_ID and
    # MLFLOW_EXPERIMENT_ID; the study went in "Default", and a search by its name found nothing.
    client = MlflowClient(f"sqlite:///{mock_study / 'mlflow.db'}")
    client.search_experiments()  # creates the store and its Default experiment, as `mlflow run` does
    launcher = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    assert run_mocked(["--trials", "4", *SMALL]) == 0
    assert "MLFLOW_RUN_ID" not in os.environ
    assert "--experiment-name" not in capsys.readouterr().out, "no hint the README's command makes unnecessary"
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{mock_study / 'optuna.db'}")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.run_id != launcher and parent.info.run_name == STUDY and parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == STUDY
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in study.trials}
    assert [r.info.run_id for r in client.search_runs(["0"])] == [launcher], "only the launcher's run in Default"
    # A search by the study's name, across experiments, finds the launcher's run, which links to the study.
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.study_name = '{STUDY}' "
                               "and tags.study_role = 'launcher'")
    assert [r.info.run_id for r in found] == [launcher]
    tags = found[0].data.tags
    assert tags["study_parent_run_id"] == parent.info.run_id and tags["study_experiment"] == STUDY
    assert (f"[{STUDY}](#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id})"
            in tags["mlflow.note.content"])
    assert found[0].info.run_name == f"{STUDY} (launcher)"
    # A rerun under another `mlflow run` resumes the same study and parent, and links its own launcher run.
    second = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", second)
    assert run_mocked(["--trials", "5", *SMALL]) == 0
    assert optuna.load_study(study_name=STUDY, storage=f"sqlite:///{mock_study / 'optuna.db'}").user_attrs[
        "mlflow_parent_run_id"] == parent.info.run_id
    assert client.get_run(second).data.tags["study_parent_run_id"] == parent.info.run_id


def test_under_mlflow_run_with_the_experiment_named_the_launchers_run_is_the_parent(mock_study, monkeypatch):
    # `mlflow run . --experiment-name launched`: the study goes where the user said, under the launcher's run.
    client = MlflowClient(f"sqlite:///{mock_study / 'mlflow.db'}")
    launcher = client.create_run(client.create_experiment("launched")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    assert run_mocked(["--trials", "4", *SMALL]) == 0
    assert client.get_run(launcher).info.run_name == STUDY
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{mock_study / 'optuna.db'}")
    assert study.user_attrs["mlflow_parent_run_id"] == launcher
    trial_runs = {t.user_attrs["mlflow_run_id"] for t in study.trials}
    assert len(trial_runs) == 4 and launcher not in trial_runs
    children = client.search_runs([client.get_run(launcher).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{launcher}'")
    assert {r.info.run_id for r in children} == trial_runs


def test_the_injected_trainer_trains_every_worker_of_a_command(tmp_path):
    """study.objective.Trainer: a command with a stand-in trainer runs its `--workers` processes as its own
    program, so that they train with the stand-in too (the mock's train_accuracy is 0.9, a CNN's is not)."""
    process = start_mocked(tmp_path, ["--trials", "4", "--workers", "2", *SMALL, "--device", "cpu", "--confirm", "2"])
    [(code, out, err)] = finish([process], timeout=300)
    assert code == 0, err[-3000:]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert all(not trial.user_attrs["worker"].endswith(f":{process.pid}") for trial in study.trials), \
        "the workers train, not the command"
    assert [trial.user_attrs["train_accuracy"] for trial in study.trials] == [0.9] * 4
    # The workers shared the confirmation (study.confirm): exactly 2 trainings per arm, nothing doubled.
    companion = optuna.load_study(study_name=f"{STUDY}/confirmation", storage=storage)
    confirmed = [(t.user_attrs["arm"], t.user_attrs["seed"]) for t in companion.trials]
    assert len(confirmed) == len(set(confirmed)) == 2 * len({arm for arm, _ in confirmed}) >= 4, confirmed
    assert {t.state.name for t in companion.trials} == {"COMPLETE"}


@pytest.mark.slow
def test_the_readmes_mlflow_run_files_the_study_under_its_own_name(tmp_path):
    # `mlflow run . --env-manager local`, as the README has it (no --experiment-name), with a real trainer.
    env = {**subprocess_env(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
                           "-P", "trials=1", "-P", "epochs=1", "-P", "image_size=16", "-P", "pruner=none",
                           "-P", "confirm=0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--experiment-name" not in done.stdout + done.stderr
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    [launcher] = client.search_runs(["0"])
    experiment = client.get_experiment_by_name(STUDY)
    runs = {r.data.tags.get("study_role", "trial"): r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["parent", "trial"] and runs["trial"].data.tags["mlflow.parentRunId"] == \
        runs["parent"].info.run_id
    assert launcher.data.tags["study_parent_run_id"] == runs["parent"].info.run_id
    assert launcher.info.status == runs["parent"].info.status == "FINISHED"


# -- real processes, real signals ---------------------------------------------------------------


def _children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _assert_study_is_whole(storage: str, trials: int, killed: int | None, tracking_uri: str) -> None:
    """Exactly `trials` finished, the killed trial FAIL with its run KILLED, one run per trial, nothing RUNNING."""
    study = optuna.load_study(study_name=STUDY, storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    assert sum(state in ("COMPLETE", "PRUNED") for state in states.values()) == trials, states
    assert "RUNNING" not in states.values(), states
    searched = [tuple(sorted(t.params.items())) for t in study.trials if t.params and "preset" not in t.user_attrs]
    assert len(searched) == len(set(searched)), "no sampled point is repeated across workers or reruns"
    client = MlflowClient(tracking_uri)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent_id}
    numbers = [int(r.data.tags["optuna_trial_number"]) for r in children]
    assert len(numbers) == len(set(numbers)), "no trial number has two runs"
    finished = {n for n, state in states.items() if state in ("COMPLETE", "PRUNED")}
    assert finished <= set(numbers), "every finished trial has its run"
    assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert parent.info.status == "FINISHED"
    if killed is not None:
        assert states[killed] == "FAIL"
        run = next(r for r in children if r.data.tags["optuna_trial_number"] == str(killed))
        assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "FAIL"
        assert run.data.tags["error"].startswith("worker died:"), run.data.tags["error"]


@pytest.mark.slow
def test_kill_9_of_a_lone_worker_then_reruns_lose_nothing(tmp_path):
    env = {**subprocess_env(tmp_path), "GAPLAB_HEARTBEAT_GRACE": str(GRACE_S)}
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [sys.executable, "-m", "study.run", "--confirm", "0",
               "--epochs", "2", "--image_size", "16", "--pruner", "none"]
    process = subprocess.Popen([*command, "--trials", "4"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid, number = wait_for_running_trial(storage, STUDY, [process.pid])
    process.kill()
    process.wait()
    killed_at = time.time()
    time.sleep(GRACE_S + 1)
    # The target (1) is met: the rerun trains nothing, yet fails the dead trial and ends its runs.
    done = subprocess.run([*command, "--trials", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    failed_after = time.time() - killed_at
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert study.trials[number].state.name == "FAIL"
    print(f"kill -9 -> FAIL: {failed_after:.1f} s (grace {GRACE_S} s, including the rerun's start)")
    done = subprocess.run([*command, "--trials", "4"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_study_is_whole(storage, 4, number, env["MLFLOW_TRACKING_URI"])
    study = optuna.load_study(study_name=STUDY, storage=storage)
    complete_presets = sorted(t.user_attrs["preset"] for t in study.trials
                              if t.state.name == "COMPLETE" and "preset" in t.user_attrs)
    assert complete_presets == sorted(["seed-initial", "seed-deeper", "seed-bn", "seed-final"]), \
        "the killed preset is queued again, none doubled"


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_a_rerun_finishes_exactly(tmp_path):
    env = subprocess_env(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [sys.executable, "-m", "study.run", "--confirm", "0", "--trials", "4", "--workers", "2", "--epochs", "2",
               "--image_size", "16", "--pruner", "none", "--storage", storage]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(_children_of(process.pid)) < 2:
        time.sleep(0.2)
    wait_for_running_trial(storage, STUDY, _children_of(process.pid))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_CODE, stderr[-3000:]
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert "RUNNING" not in {t.state.name for t in study.trials}
    runs = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(
        [MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment_by_name(STUDY).experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}
    assert "KILLED" in {r.info.status for r in runs}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_study_is_whole(storage, 4, None, env["MLFLOW_TRACKING_URI"])


# -- PostgreSQL and an MLflow tracking server ------------------------------------------------------


@pytest.mark.slow
def test_two_workers_on_postgresql_and_an_mlflow_server_survive_a_kill_9(tmp_path, postgres, mlflow_server):
    env = {**subprocess_env(tmp_path), "MLFLOW_TRACKING_URI": mlflow_server, "GAPLAB_HEARTBEAT_GRACE": str(GRACE_S)}
    storage = f"{postgres}/optuna"
    trials = 5
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "study.run", "--confirm", "0", "--trials", str(trials), "--workers", "2",
         "--epochs", "1", "--image_size", "16", "--pruner", "none", "--storage", storage],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(_children_of(process.pid)) < 2:
        time.sleep(0.2)
    pid, number = wait_for_running_trial(storage, STUDY, _children_of(process.pid))
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    assert f"(pid {pid}) died from signal SIGKILL during trial {number}" in stderr, stderr[-3000:]
    study = optuna.load_study(study_name=STUDY, storage=storage)
    fail_time = (study.trials[number].datetime_complete.timestamp() - killed_at)
    print(f"postgres --workers 2: kill -9 -> FAIL {fail_time:.1f} s (grace {GRACE_S} s); "
          f"total {time.time() - started:.0f} s")
    _assert_study_is_whole(storage, trials, number, mlflow_server)

    from study.commands import UsageError
    from study.storage import open_optuna_storage

    assert open_optuna_storage(storage).engine.pool._pre_ping, "dropped connections are re-opened"
    with pytest.raises(UsageError, match=r'cannot be opened \(.*"nosuchdb" does not exist\); check the host'):
        open_optuna_storage(f"{postgres}/nosuchdb")

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "study.report", "--storage", storage, "--out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (out / STUDY / "report.md").read_text()
    assert "seed-final" in text and "still running" not in text
