"""What `python -m study.run` does before and around its trials (issue 17, items 5, 7 and 10): a bad data folder
is answered before anything heavy loads and leaves no file, the study's fixed settings include the pruning rule,
a data folder's name becomes a valid study name, and the one-line messages of a rerun and of --gpus."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest

from study import contract, workers
from study.settings import STUDY_NAME_PATTERN, default_study_name
from study.storage import open_optuna_storage
from tests.helpers import make_folder, run_mocked, subprocess_env

SMALL = ["--epochs", "1", "--image_size", "16"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder holding the MLflow store, apart from the data folders under tmp_path."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    yield folder
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def test_a_bad_data_folder_is_answered_before_any_heavy_import_and_leaves_no_file(tmp_path):
    make_folder(tmp_path / "one-class", {"cat": 3}, size=16)
    work = tmp_path / "work"
    work.mkdir()
    probe = ("import sys; from study import run; code = run.main(['--data_dir', '../one-class', '--image_size', '16']);"
             "print(code, sorted(m for m in ('keras', 'tensorflow', 'jax', 'mlflow') if m in sys.modules))")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe], cwd=work, env=subprocess_env(work), capture_output=True,
                          text=True, timeout=120)
    assert done.stdout == "2 []\n", done.stderr[-3000:]
    assert done.stderr == ("error: --data_dir='../one-class': ../one-class has a single class ('cat'); classification "
                           "needs at least two class folders with images, e.g. ../one-class/cat/ and "
                           "../one-class/other/.\n")
    assert list(work.iterdir()) == [], "no mlflow.db, optuna.db or mlruns/"
    assert time.perf_counter() - started < 30, "answered without loading the backend (10-15 s alone)"


def test_a_bad_image_stops_the_command_before_either_store_is_created(work, tmp_path, capsys):
    root = make_folder(tmp_path / "photos", {"cat": 6, "dog": 6}, size=16)
    (root / "dog" / "broken.jpg").write_bytes(b"not an image")
    assert run_mocked(["--trials", "1", "--data_dir", str(root), *SMALL]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert list(work.iterdir()) == [], "no mlflow.db, optuna.db or mlruns/"


@pytest.mark.parametrize("dataset, name", [
    ("<img src=x>", "img src-x-16px"),
    ("photos", "photos-16px"),
    ("été 2024", "t- 2024-16px"),
    ("...", "data-16px"),
    ("a" * 150, "a" * 95 + "-16px"),
])
def test_a_dataset_name_becomes_a_valid_study_name(dataset, name):
    assert default_study_name(dataset, 16) == name
    assert STUDY_NAME_PATTERN.match(name)


def test_a_data_folder_with_an_odd_name_gives_a_study_name_by_the_study_name_rules(work, tmp_path):
    root = make_folder(tmp_path / "<img src=x>", {"cat": 6, "dog": 6}, size=16)
    assert run_mocked(["--trials", "1", "--data_dir", str(root), "--pruner", "none", *SMALL]) == 0
    assert optuna.get_all_study_names(f"sqlite:///{work / 'optuna.db'}") == ["img src-x-16px"]


def _stored_settings(work) -> dict:
    study = optuna.load_study(study_name="shapes-16px", storage=f"sqlite:///{work / 'optuna.db'}")
    return study.user_attrs[contract.SETTINGS_ATTR]


@pytest.mark.parametrize("first, second, differing", [
    (["--pruner", "none"], ["--pruner", "median"], "pruner"),
    (["--prune_on", "own_momentum"], ["--prune_on", "best_momentum"], "prune_on"),
])
def test_a_rerun_with_another_pruning_rule_is_refused_naming_it(work, capsys, first, second, differing):
    assert run_mocked(["--trials", "1", *SMALL, *first]) == 0
    assert _stored_settings(work)[differing] == first[1]
    capsys.readouterr()
    assert run_mocked(["--trials", "2", *SMALL, *second]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: study 'shapes-16px' was run with "), err
    assert f"{differing}={first[1]!r}" in err and f"this run has {differing}={second[1]!r}" in err
    assert len(optuna.load_study(study_name="shapes-16px", storage=f"sqlite:///{work / 'optuna.db'}").trials) == 1, \
        "the refused rerun queued or ran nothing"


def test_a_study_stored_before_the_pruning_rule_was_fixed_resumes_and_is_not_given_one(work):
    assert run_mocked(["--trials", "1", "--pruner", "none", *SMALL]) == 0
    study = optuna.load_study(study_name="shapes-16px", storage=f"sqlite:///{work / 'optuna.db'}")
    older = {key: value for key, value in _stored_settings(work).items() if key not in ("pruner", "prune_on")}
    study.set_user_attr(contract.SETTINGS_ATTR, older)
    assert run_mocked(["--trials", "2", "--pruner", "median", "--prune_on", "own_momentum", *SMALL]) == 0
    assert _stored_settings(work) == older, "what its first trials were pruned on stays unknown"


def test_a_rerun_that_fails_a_dead_trial_says_which_and_from_which_worker(work, monkeypatch, capsys):
    monkeypatch.setenv("GAPLAB_HEARTBEAT_GRACE", "2")
    assert run_mocked(["--trials", "1", "--pruner", "none", *SMALL]) == 0
    storage = open_optuna_storage(f"sqlite:///{work / 'optuna.db'}")
    study = optuna.load_study(study_name="shapes-16px", storage=storage)
    dead = study.ask()  # a trial whose process beat once and then died
    dead.set_user_attr(contract.WORKER_ATTR, "elsewhere:4242")
    storage.record_heartbeat(dead._trial_id)
    time.sleep(3)
    capsys.readouterr()
    assert run_mocked(["--trials", "1", "--pruner", "none", *SMALL]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "heartbeat" in line]
    assert lines == [f"trial {dead.number} of worker elsewhere:4242 stopped sending heartbeats: marked FAIL; it "
                     "does not count towards --trials."]
    assert study.trials[dead.number].state.name == "FAIL"


def test_an_empty_gpu_entry_is_named_in_one_line():
    with pytest.raises(workers.UsageError) as error:
        workers.parse_gpus(",", ["0 NVIDIA H200"])
    assert str(error.value) == ("--gpus=',' has an empty entry; give GPU indices separated by commas, e.g. --gpus 0,1. "
                                "The GPUs here are: 0 NVIDIA H200.")


@pytest.mark.slow
def test_a_short_real_study_prints_no_library_chatter(tmp_path):
    env = subprocess_env(tmp_path)
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # as a user runs it
    done = subprocess.run([sys.executable, "-m", "study.run", "--confirm", "0",
                           "--trials", "1", *SMALL], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "", "no absl lines from TensorFlow, no INFO lines or prints from MLflow"
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("device auto:") and lines[1].startswith("study 'shapes-16px'")
    assert lines[2].startswith("[1/1] trial 0 [seed-initial] COMPLETE"), lines


def test_the_backends_start_up_lines_are_dropped_below_the_threshold_and_the_rest_kept(monkeypatch, capfd):
    from study.commands import native_logs_filtered

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    written = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1795995405.379396   22575 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
        "E0000 00:00:1795995414.027196   22575 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n",
        "F0000 00:00:1795995414.027196   22575 main.cc:1] a fatal one\n",
        "Fatal Python error: something that is not absl's\n",
    ]
    with native_logs_filtered():
        for line in written:
            os.write(2, line.encode())
    assert capfd.readouterr().err == "".join(written[3:])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    with native_logs_filtered():
        os.write(2, written[1].encode())
    assert capfd.readouterr().err == written[1]
