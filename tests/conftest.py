"""Fixtures: no test touches the user's caches or stores, every store under tmp_path, generated image folders
and datasets, a throwaway PostgreSQL cluster and an MLflow tracking server.

The plain helpers (the mock trainer, `run_mocked`, `start_mocked`, `assert_one_study`, ...) live in
tests/helpers.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import PG_BIN, free_port, make_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _no_stop_request_carried_over():
    # A stop request is process-wide and outlives the command on purpose (the writer's exit hook reads it):
    # left set by one test's command, it would interrupt the next test's trial in the same process.
    yield
    stopping = sys.modules.get("study.stopping")
    if stopping is not None:
        stopping.requested.clear()
        stopping.repeated.clear()


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    # No test may read or write the user's caches or tracking stores.
    monkeypatch.setenv("GAPLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GAPLAB_COMPILE_CACHE_DIR", str(tmp_path / "xla"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    yield
    # A test that set MLflow's global tracking URI must not point later tests at its store.
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)


@pytest.fixture
def mock_study(tmp_path, monkeypatch):
    """A working folder with its own MLflow store, for studies run in this process (`run_mocked`)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "photos", {"cat": 10, "dog": 10, "emu": 10})


@pytest.fixture(scope="session")
def tiny_data():
    from gaplab.data import generate_shapes

    return generate_shapes(image_size=16, n_images=96, seed=0)


@pytest.fixture(scope="session")
def _postgres_cluster():
    """A throwaway PostgreSQL cluster on a free loopback port, one per test process (xdist worker): initdb takes
    about 20 s, so each test gets fresh databases on it instead (`postgres`). Yields (port, the `runuser` prefix)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries absent ({PG_BIN}); apt-get install postgresql (.ci/run does)")
    folder = Path(tempfile.mkdtemp(prefix="gaplab-pg-"))
    shutil.chown(folder, "postgres")
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(folder / "data"), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w",
                    "-o", f"-p {port} -h 127.0.0.1 -k {folder}", "start"], check=True, capture_output=True)
    try:
        yield port, as_postgres
    finally:
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres(_postgres_cluster):
    """Empty databases `optuna` and `mlflow` on a throwaway PostgreSQL cluster; yields its base URL (user postgres,
    trust). Whatever an earlier test left there (a killed worker's connections included) is dropped first."""
    port, as_postgres = _postgres_cluster
    server = ["-h", "127.0.0.1", "-p", str(port)]
    for database in ("optuna", "mlflow"):
        subprocess.run([*as_postgres, str(PG_BIN / "dropdb"), *server, "--if-exists", "--force", database],
                       check=True, capture_output=True)
        subprocess.run([*as_postgres, str(PG_BIN / "createdb"), *server, database], check=True, capture_output=True)
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}"


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{postgres}/mlflow", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)
