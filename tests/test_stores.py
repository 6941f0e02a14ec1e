"""The study's stores: created whole or not at all, and refused in one line, before anything is written,
when they cannot be used.

Interrupts are real SIGINTs to real `python -m study.run` processes; read-only files are really read-only
(chmod for a user, `chattr +i` for root, whom permissions do not stop).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study import space
from study.contract import PRESET_ATTR

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, "-m", "study.run", "--confirm", "0", "--trials", "1", "--epochs", "1", "--image_size", "16"]


def command_env(folder: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "GAPLAB_CACHE_DIR": str(folder.parent / "cache"), "GAPLAB_COMPILE_CACHE_DIR": str(folder.parent / "xla")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_command(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=command_env(cwd), capture_output=True, text=True, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


def rows(path: Path, query: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(query).fetchall()


def table_names(path: Path) -> set[str]:
    return {name for (name,) in rows(path, "select name from sqlite_master where type='table'")}


@contextlib.contextmanager
def read_only(path: Path):
    """`path` cannot be written, not even by root (chattr +i), until the block ends."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    locked = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if locked.returncode != 0:
        pytest.skip(f"root ignores file modes, and chattr +i failed here: {locked.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def assert_whole_stores(folder: Path) -> None:
    """Every store file in `folder` is complete and no temporary file is left."""
    names = sorted(p.name for p in folder.iterdir())
    assert set(names) <= {"mlflow.db", "optuna.db", "mlruns"}, names
    if (folder / "mlflow.db").exists():
        # MLflow adds its Default experiment after the last schema migration.
        assert rows(folder / "mlflow.db", "select name from experiments where experiment_id = 0") == [("Default",)]
        assert not [t for t in table_names(folder / "mlflow.db") if t.startswith("_alembic_tmp")]
    if (folder / "optuna.db").exists():
        assert len(rows(folder / "optuna.db", "select * from alembic_version")) == 1


@pytest.mark.slow
def test_an_interrupt_while_the_stores_are_created_leaves_them_whole_and_the_rerun_completes(tmp_path):
    # Each delay is counted from the moment the first store file appears, so the SIGINTs land in
    # MLflow's schema creation (seconds of migrations) and in Optuna's.
    folders = []
    for delay in (0.0, 0.3, 1.0, 2.5):
        folder = tmp_path / f"after_{delay}s"
        folder.mkdir()
        process = subprocess.Popen(RUN, cwd=folder, env=command_env(folder), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while not any("mlflow.db" in p.name for p in folder.iterdir()):
            assert process.poll() is None and time.monotonic() < deadline, "no store was created"
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=180)
        assert process.returncode == 130, err[-3000:]
        assert "rerun the same command to resume" in err
        assert_whole_stores(folder)
        folders.append(folder)
    # A SIGINT in MLflow's schema creation (seconds of migrations) leaves no store at all.
    assert not (folders[0] / "mlflow.db").exists()
    # The rerun resumes where an interrupt left a store, if one did.
    resumed = next((folder for folder in folders if (folder / "mlflow.db").exists()), folders[0])
    # A SIGINT that came after the stores (on a fast machine, the one 2.5 s on) ended the first
    # preset's trial FAIL; the rerun trains that preset again.
    interrupted = trial_presets(resumed / "optuna.db", "FAIL") if (resumed / "optuna.db").exists() else []
    rerun = run_command(RUN, resumed)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # One finished trial, the first preset, as an uninterrupted --trials 1 makes; nothing queued (presets are
    # queued as they start).
    assert trial_presets(resumed / "optuna.db", "FAIL") == interrupted
    finished, queued = trial_presets(resumed / "optuna.db", "COMPLETE"), trial_presets(resumed / "optuna.db", "WAITING")
    assert finished == list(space.PRESETS)[:1] and queued == [], (finished, queued)
    assert set(interrupted) <= set(finished)
    assert rows(resumed / "optuna.db", "select count(*) from trials where state not in "
                                       "('COMPLETE', 'FAIL')") == [(0,)]


def trial_presets(store: Path, state: str) -> list[str]:
    """The preset of each trial in `state`, in trial order."""
    found = rows(store, "select json_extract(a.value_json, '$') from trials t join trial_user_attributes a "
                        f"on a.trial_id = t.trial_id and a.key = '{PRESET_ATTR}' where t.state = '{state}' "
                        "order by t.number")
    return [name for (name,) in found]


def half_created(store: Path) -> Path:
    """What an interrupted first run of an older version left: MLflow's first tables, a migration's temporary
    table, and no experiment (MLflow then fails with "table _alembic_tmp_metrics already exists")."""
    with contextlib.closing(sqlite3.connect(store)) as connection:
        connection.executescript("create table experiments (experiment_id integer primary key, name text);"
                                 "create table runs (run_uuid text); create table _alembic_tmp_metrics (x int);"
                                 "create table alembic_version (version_num text);")
    return store


def test_a_store_an_older_version_left_half_created_is_named_and_created_anew(tmp_path, capsys):
    from study.storage import check_tracking_store, check_tracking_uri

    store = half_created(tmp_path / "mlflow.db")
    check_tracking_store(f"sqlite:///{store}", create=True)
    assert check_tracking_uri(f"sqlite:///{store}") == f"sqlite:///{store}"
    # (MLflow's own INFO lines follow here; the commands silence them with study.commands.quiet_logging.)
    assert capsys.readouterr().err.splitlines()[0] == (f"note: {store} was left half-created by an interrupted run "
                                                       "of an older version and held no experiment or run; creating "
                                                       "it anew.")
    assert_whole_stores(tmp_path)


def test_a_reader_names_a_half_created_store_and_leaves_it(tmp_path):
    from study.commands import UsageError
    from study.storage import check_tracking_store

    store = half_created(tmp_path / "mlflow.db")
    before = store.read_bytes()
    with pytest.raises(UsageError) as refused:
        check_tracking_store(f"sqlite:///{store}", create=False, option="--tracking_uri")
    assert str(refused.value) == (f"--tracking_uri='sqlite:///{store}': {store} was left half-created by an "
                                  "interrupted first run and holds no experiment or run; run python -m study.run "
                                  "to create it anew, or delete it.")
    assert store.read_bytes() == before


def test_the_checks_write_nothing_and_creation_leaves_only_the_store(tmp_path, monkeypatch):
    from study.storage import check_tracking_store, check_tracking_uri, open_optuna_storage

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check_tracking_store(uri, create=True)
    assert list(tmp_path.iterdir()) == []
    assert check_tracking_uri(uri) == uri
    open_optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "optuna.db"]
    assert_whole_stores(tmp_path)


def test_a_relative_sqlite_tracking_uri_comes_back_absolute(tmp_path, monkeypatch):
    from study.storage import check_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert check_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_signals_in_a_deferred_block_arrive_when_it_ends():
    from study.stopping import signals_deferred

    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert received == []
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- refusals of study.run: one line, exit 2, nothing written -----------------------------------


@pytest.fixture(scope="module")
def finished_stores(tmp_path_factory):
    """A folder whose optuna.db holds a study and whose mlflow.db is a complete store (no training)."""
    import optuna

    from study.storage import check_tracking_uri

    folder = tmp_path_factory.mktemp("stores")
    check_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    optuna.create_study(study_name="shapes-16px", storage=f"sqlite:///{folder / 'optuna.db'}")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_read_only_optuna_file_is_refused_before_anything_is_written(finished_stores):
    before = snapshot(finished_stores)
    with read_only(finished_stores / "optuna.db"):
        error = one_line_error(run_command(RUN, finished_stores))
    assert error == (f"error: --storage='sqlite:///{finished_stores / 'optuna.db'}': {finished_stores / 'optuna.db'} "
                     "is read-only; make it writable (chmod u+w), or pass another --storage.")
    assert snapshot(finished_stores) == before


def test_a_read_only_mlflow_file_is_refused_before_anything_is_written(finished_stores):
    before = snapshot(finished_stores)
    with read_only(finished_stores / "mlflow.db"):
        error = one_line_error(run_command(RUN, finished_stores))
    assert error == (f"error: MLFLOW_TRACKING_URI='sqlite:///{finished_stores / 'mlflow.db'}': "
                     f"{finished_stores / 'mlflow.db'} is read-only; make it writable (chmod u+w), or pass another "
                     "MLFLOW_TRACKING_URI.")
    assert snapshot(finished_stores) == before


@pytest.mark.parametrize("storage, message", [
    ("sqlite://", "--storage='sqlite://' is an in-memory database: the study would vanish when this process ends "
                  "(and its MLflow runs would stay); use a file, e.g. sqlite:///optuna.db."),
    ("sqlite:///:memory:", "--storage='sqlite:///:memory:' is an in-memory database"),
    ("http://127.0.0.1:5000", "--storage='http://127.0.0.1:5000' is a tracking URI (an MLflow server), not a "
                              "storage URL; give it as MLFLOW_TRACKING_URI, and --storage a database URL, e.g. "
                              "sqlite:///optuna.db or postgresql+psycopg://user@host/db."),
    ("sqlite:///notadb.txt", "notadb.txt is not an SQLite database"),
])
def test_stores_that_cannot_hold_a_study_are_refused_in_one_line(tmp_path, storage, message):
    (tmp_path / "notadb.txt").write_text("hello\n")
    error = one_line_error(run_command([*RUN, "--storage", storage], tmp_path, timeout=120))
    assert message in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notadb.txt"]


def test_a_file_store_error_keeps_its_fix(tmp_path):
    env = {**command_env(tmp_path), "MLFLOW_TRACKING_URI": str(tmp_path / "runs")}
    done = subprocess.run(RUN, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    error = one_line_error(done)
    assert f"MLFLOW_TRACKING_URI='{tmp_path / 'runs'}'" in error and "MLFLOW_ALLOW_FILE_STORE=true" in error
    assert "sqlite:///" in error
