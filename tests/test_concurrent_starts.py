"""Any number of starts at once is one study: identical commands started at the same moment on fresh stores.

Real processes (`python -m tests.mocked_run`, the command with the mock trainer), on SQLite and on a throwaway
PostgreSQL cluster with a real `mlflow server`. Before the study lock (study.storage.StudyLock) each process
made its own parent run, both queued the presets, and a top-up trained duplicates.
"""

from __future__ import annotations

import pytest

from tests.helpers import assert_one_study, finish, start_mocked

SMALL = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]


def test_two_commands_started_together_on_fresh_sqlite_stores_make_one_study(tmp_path):
    args = ["--trials", "6", *SMALL]
    results = finish([start_mocked(tmp_path, args) for _ in range(2)])
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert_one_study(f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}", 6)
    # Each command's start line says what it will train; between them, every trial of the study.
    assert sum("to train: 6 trial(s)" in out for _, out, _ in results) >= 1


@pytest.mark.slow
def test_many_commands_started_together_on_fresh_sqlite_stores_make_one_study(tmp_path):
    # Four at once, twice (two commands at once are the fast test above).
    for attempt in range(2):
        folder = tmp_path / str(attempt)
        results = finish([start_mocked(folder, ["--trials", "7", *SMALL]) for _ in range(4)])
        assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
        assert_one_study(f"sqlite:///{folder / 'optuna.db'}", f"sqlite:///{folder / 'mlflow.db'}", 7)


@pytest.mark.slow
def test_two_machines_joining_a_fresh_postgresql_study_make_one_study(tmp_path, postgres, mlflow_server):
    # Each "machine" has its own working folder and data cache; the stores are shared. The first attempt also
    # creates Optuna's tables in the new database, the second joins a new study in the existing tables.
    storage = f"{postgres}/optuna"
    for attempt, trials in enumerate((3, 6)):
        name = f"joined-{attempt}"
        args = ["--trials", str(trials), *SMALL, "--storage", storage, "--study_name", name]
        results = finish([start_mocked(tmp_path / f"machine{attempt}-{index}", args, MLFLOW_TRACKING_URI=mlflow_server)
                          for index in range(2)])
        assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
        assert_one_study(storage, mlflow_server, trials, name)


def test_a_study_lock_held_past_the_wait_is_one_line_naming_the_file(tmp_path):
    import sqlite3

    import optuna

    from study.storage import StudyLock, StudyLocked

    path = tmp_path / "optuna.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 0.2}})
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's set-up, stopped with Ctrl-Z
    try:
        with pytest.raises(StudyLocked) as refused:
            StudyLock(storage, "shapes-16px").__enter__()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = str(refused.value)
    assert str(path) in message and "'shapes-16px'" in message and "\n" not in message
    with StudyLock(storage, "shapes-16px"):  # nothing of the refused attempt is left holding the file
        optuna.create_study(study_name="shapes-16px", storage=storage)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["shapes-16px"]
