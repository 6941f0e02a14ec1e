"""Opening the study's two stores, Optuna's RDB storage and MLflow's tracking store, for many processes.

* `open_optuna_storage`: an `RDBStorage` with heartbeats (a dead process's trial is failed after
  `heartbeat_grace()` seconds), `pool_pre_ping` so connections a database server dropped while a
  long trial trained are re-opened, and a long SQLite busy timeout for several local workers;
* `check_tracking_uri`: MLflow's store answers before any worker starts;
* bad URLs, missing drivers, wrong passwords and absent databases become a `UsageError` that names
  the URL with its password masked.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable

from study.cli import UsageError

# Seconds without a heartbeat after which a RUNNING trial counts as dead. Tests shorten it.
HEARTBEAT_GRACE_ENV = "GAPLAB_HEARTBEAT_GRACE"
DEFAULT_HEARTBEAT_GRACE = 45
# SQLite serialises writers; several workers wait this long for the lock instead of failing.
SQLITE_BUSY_TIMEOUT_S = 60


def masked(url: str) -> str:
    """The URL with its password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _scrubbed(message: str, url: str) -> str:
    """`message` without the URL's password (driver errors may quote the URL)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        return message
    return message.replace(password, "***") if password else message


def _first_line(error: BaseException, url: str) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return _scrubbed(text.splitlines()[0][:300] if text else type(error).__name__, url)


def heartbeat_grace() -> int:
    raw = os.environ.get(HEARTBEAT_GRACE_ENV, "")
    if not raw:
        return DEFAULT_HEARTBEAT_GRACE
    if not raw.isdigit() or int(raw) < 2:
        raise UsageError(f"{HEARTBEAT_GRACE_ENV}={raw!r} is invalid; use whole seconds, at least 2.")
    return int(raw)


def _missing_module(error: ImportError) -> str:
    if isinstance(error.__cause__, ImportError):  # Optuna re-raises the driver's ImportError in its words
        error = error.__cause__
    found = re.search(r"No module named '([^']+)'", str(error))
    return error.name or (found.group(1) if found else str(error))


def _driver_hint(url: str, error: ImportError) -> str:
    module = _missing_module(error)
    if "psycopg" in module:
        remedy = "install it with pip install -e \".[postgres]\" (psycopg 3) and use postgresql+psycopg://user@host/db"
    else:
        remedy = ("install that driver, or use PostgreSQL, which this project supports: pip install -e \".[postgres]\" "
                  "and postgresql+psycopg://user@host/db")
    return f"--storage={masked(url)!r} needs the database driver {module!r}, which is not installed; {remedy}."


def open_optuna_storage(url: str, on_stale_trial: Callable | None = None):
    """Optuna's storage at `url`, checked by a first query; UsageError if it cannot be used."""
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    engine_kwargs: dict[str, object] = {}
    if backend == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        # Optuna turns this on for MySQL only; PostgreSQL servers and proxies also drop idle
        # connections while a long trial trains.
        engine_kwargs["pool_pre_ping"] = True
    grace = heartbeat_grace()
    try:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental in Optuna 5 but are its only way to fail the trial
            # of a process that died; the warning would print on every run.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=max(1, grace // 3), grace_period=grace,
                heartbeat_stale_trial_callback=on_stale_trial)
        storage.get_all_studies()
    except ImportError as error:
        raise UsageError(_driver_hint(url, error)) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        check = ("that the file is a readable, writable SQLite database" if url.startswith("sqlite")
                 else "the host, port, user, password and that the database exists")
        raise UsageError(f"--storage={masked(url)!r} cannot be opened ({_first_line(error, url)}); check "
                         f"{check}.") from None
    return storage


def fail_stale_trials(study) -> None:
    """Fail the study's RUNNING trials whose process stopped beating; the storage's callback ends their runs."""
    import optuna

    with warnings.catch_warnings():
        # Experimental in Optuna 5 (see open_optuna_storage), and Optuna calls it itself before each trial.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def check_tracking_uri() -> str:
    """MLflow's tracking URI, once it answered a query; UsageError naming it (password masked) if not."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        # MLflow retries an unreachable server for minutes by default; one try answers the question.
        saved = {name: os.environ.get(name) for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                                         "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        MlflowClient().search_experiments(max_results=1)
    except ImportError as error:
        raise UsageError(f"MLFLOW_TRACKING_URI={masked(uri)!r} needs the database driver "
                         f"{_missing_module(error)!r}; install it with pip install -e \".[postgres]\".") from None
    except (MlflowException, OSError) as error:
        raise UsageError(f"MLFLOW_TRACKING_URI={masked(uri)!r} cannot be used ({_first_line(error, uri)}); check "
                         "that the server runs and the URI, user and password are right.") from None
    finally:
        if uri.startswith(("http://", "https://")):
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return uri
