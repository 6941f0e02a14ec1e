"""Opening the study's two stores, Optuna's RDB storage and MLflow's tracking store, for many processes.

* `default_storage` / `check_storage_url`: the Optuna storage URL, its default beside a sqlite
  MLflow store, and its checks (study.run and study.report accept the same URLs and default to the
  same file);
* `check_sqlite_file` / `check_tracking_store`: whether a store can be read (or written, and created
  where it is missing), answered without writing anything, so that a store that cannot be used is
  refused before either store is touched;
* a new SQLite store (MLflow's schema is seconds of migrations, Optuna's a few tables) is created
  under a temporary name beside it, then linked into place with Ctrl-C and SIGTERM deferred
  (`signals_deferred`): an interrupt or a crash never leaves a half-created store. One an older
  version left (tables but no experiment, so nothing to lose) is named and created anew;
* `StudyLock`: one process at a time through a study's set-up and each trial start, by the database's own
  lock: a PostgreSQL advisory lock keyed on the study's name, or an exclusive SQLite transaction on the
  Optuna file (which the process's own Optuna calls then run inside);
* `open_optuna_storage`: an `RDBStorage` with heartbeats (a dead process's trial is failed after
  `heartbeat_grace()` seconds), `pool_pre_ping` so connections a database server dropped while a
  long trial trained are re-opened, and a long SQLite busy timeout for several local workers;
* `check_tracking_uri`: MLflow's store answers before any worker starts; a tracking server gets one
  try of at most TRACKING_SERVER_TIMEOUT_S seconds instead of MLflow's minutes of retries;
* bad URLs, missing drivers, wrong passwords and absent databases become a `UsageError` that names
  the URL with its password masked.

The imports of SQLAlchemy, Optuna and MLflow sit inside the functions that use them: study.run imports this
module before it checks its flags, and a bad flag is answered before any of them loads (tests/test_startup.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import ssl
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from study.commands import UsageError, command
from study.stopping import signals_deferred

# Seconds without a heartbeat after which a RUNNING trial counts as dead. Tests shorten it.
HEARTBEAT_GRACE_ENV = "GAPLAB_HEARTBEAT_GRACE"
DEFAULT_HEARTBEAT_GRACE = 45
# SQLite serialises writers; several workers wait this long for the lock instead of failing.
SQLITE_BUSY_TIMEOUT_S = 60
# An MLflow tracking server that does not answer one request within this time is reported as down.
TRACKING_SERVER_TIMEOUT_S = 10
# A database server (Optuna's storage, or MLflow's store) that accepts no connection within this time is
# reported as down, before anything loads.
DATABASE_CONNECT_TIMEOUT_S = 5
# SQLAlchemy dialects whose drivers take a `connect_timeout` connection argument.
_CONNECT_TIMEOUT_DIALECTS = ("postgresql", "mysql", "mariadb")
SQLITE_HEADER = b"SQLite format 3\x00"
# Enough of a driver's first line to hold its advice (MLflow's file-store refusal ends with the fix).
MESSAGE_LIMIT = 1000


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
    return _scrubbed(text.splitlines()[0][:MESSAGE_LIMIT] if text else type(error).__name__, url)


def heartbeat_grace() -> int:
    raw = os.environ.get(HEARTBEAT_GRACE_ENV, "")
    if not raw:
        return DEFAULT_HEARTBEAT_GRACE
    if not raw.isdigit() or int(raw) < 2:
        raise UsageError(f"{HEARTBEAT_GRACE_ENV}={raw!r} is invalid; use whole seconds, at least 2.")
    return int(raw)


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL; None for other databases and for in-memory SQLite."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or is_in_memory(url):
        return None
    return Path(parsed.database).expanduser()


def is_in_memory(url: str) -> bool:
    """Whether `url` is an in-memory SQLite database, which lives and dies with one connection's process."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and (
        parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory")


def check_sqlite_file(path: Path, label: str, *, write: bool, option: str, missing: str = "") -> None:
    """UsageError unless `path` is an SQLite database this process can read (and write, if `write`), or,
    for a writer, a new file its folder lets SQLite create. Writes nothing.

    `label` names the value as given (e.g. "--storage='sqlite:///x.db'"), `option` where to pass another,
    `missing` what to do when a reader finds no file.
    """
    if path.is_dir():
        raise UsageError(f"{label}: {path} is a folder, not a database file; pass a file path.")
    folder = path.resolve().parent
    if not path.exists():
        if not write:
            raise UsageError(f"{label}: {path} does not exist; {missing or f'pass another {option}.'}")
        if not folder.is_dir():
            raise UsageError(f"{label}: folder {folder} does not exist; create it or pick another path.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{label}: folder {folder} is read-only, so {path.name} cannot be created there; "
                             f"pass a path in a writable folder with {option}.")
        return
    if not os.access(path, os.R_OK):
        raise UsageError(f"{label}: {path} cannot be read; make it readable (chmod u+r), or pass another {option}.")
    with open(path, "rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise UsageError(f"{label}: {path} is not an SQLite database; pass the store's database file with {option}.")
    if write and not os.access(path, os.W_OK):
        raise UsageError(f"{label}: {path} is read-only; make it writable (chmod u+w), or pass another {option}.")
    if write and not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{label}: folder {folder} is read-only, and SQLite writes its journal beside "
                         f"{path.name}; make the folder writable, or move the file and pass it with {option}.")


def check_tracking_store(uri: str, *, create: bool, label: str = "", option: str = "MLFLOW_TRACKING_URI") -> None:
    """UsageError, writing nothing, unless MLflow's store at `uri` can be read, or (`create`) written and
    created where missing. Servers (http, databases other than SQLite) are asked by `check_tracking_uri`."""
    label = label or f"{option}={masked(uri)!r}"
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file"):
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

        folder = Path(uri[len("file://"):] if scheme else uri).expanduser()
        if not create and not folder.is_dir():
            raise UsageError(f"{label} is not a tracking URI, and no MLflow folder {folder} exists; pass the study's "
                             f"store with {option}, e.g. sqlite:///path/to/mlflow.db or http://host:5000.")
        if not MLFLOW_ALLOW_FILE_STORE.get():
            raise UsageError(f"{label} is a folder (MLflow's file store), which MLflow 3 refuses; use a database, "
                             "e.g. sqlite:///mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true to keep the folder.")
        return
    if not scheme.startswith("sqlite"):
        return
    if is_in_memory(uri):
        raise UsageError(f"{label} is an in-memory database: runs there vanish when this process ends; use a file, "
                         "e.g. sqlite:///mlflow.db.")
    path = sqlite_file(uri)
    check_sqlite_file(path, label, write=create, option=option,
                      missing=f"pass the MLflow store the study used with {option}; a reader never creates one.")
    if not create and path.is_file() and _unfinished(path, label):
        raise UsageError(f"{label}: {path} was left half-created by an interrupted first run and holds no "
                         f"experiment or run; run {command('study.run')} to create it anew, or delete it.")


def _unfinished(path: Path, label: str) -> bool:
    """Whether the MLflow store at `path` has tables but no experiment, run or registered model: its creation
    was cut short (an older version of this tool created stores in place), and it holds nothing to lose.

    MLflow adds its Default experiment after the last schema migration, so a finished store has one.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            tables = {name for (name,) in connection.execute("select name from sqlite_master where type='table'")}
            counts = [connection.execute(f"select count(*) from {table}").fetchone()[0]
                      for table in ("experiments", "runs", "registered_models") if table in tables]
    except sqlite3.DatabaseError as error:
        raise UsageError(f"{label}: {path} cannot be read as an MLflow store ({error}).") from None
    return bool(tables) and not any(counts)


def _is_new(path: Path) -> bool:
    return not path.exists() or path.stat().st_size == 0


def _create_whole(path: Path, create_schema: Callable[[str], None], replaces: Callable[[Path], bool] = _is_new) -> None:
    """Create the SQLite store at `path` by `create_schema(url)` on a temporary file beside it, then move it
    into place; a file found there is replaced only if `replaces(path)` (by default: an empty one).

    Ctrl-C during the creation (seconds of MLflow's migrations) stops at once and leaves no store; the move
    and the clean-up run with signals deferred, so they are never cut short.
    """
    temporary = path.with_name(f".{path.name}.creating-{os.getpid()}")
    try:
        create_schema(f"sqlite:///{temporary}")
        with signals_deferred():
            try:
                os.link(temporary, path)  # refuses to replace: a store another process made meanwhile is kept
            except FileExistsError:
                if replaces(path):
                    os.replace(temporary, path)
            except OSError:  # a file system without hard links
                if not path.exists() or replaces(path):
                    os.replace(temporary, path)
    finally:
        with signals_deferred():
            for leftover in (temporary, Path(f"{temporary}-journal")):
                leftover.unlink(missing_ok=True)


def _create_mlflow_schema(url: str) -> None:
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # The artifact root MLflow itself gives a local store; its Default experiment records it.
    SqlAlchemyStore(url, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)._dispose_engine()


def _create_optuna_schema(url: str) -> None:
    import optuna

    optuna.storages.RDBStorage(url).engine.dispose()


def _missing_module(error: ImportError) -> str:
    if isinstance(error.__cause__, ImportError):  # Optuna re-raises the driver's ImportError in its words
        error = error.__cause__
    found = re.search(r"No module named '([^']+)'", str(error))
    return error.name or (found.group(1) if found else str(error))


def _driver_hint(url: str, error: ImportError, label: str = "") -> str:
    module = _missing_module(error)
    if "psycopg" in module:
        remedy = "install it with pip install -e \".[postgres]\" (psycopg 3) and use postgresql+psycopg://user@host/db"
    else:
        remedy = ("install that driver, or use PostgreSQL, which this project supports: pip install -e \".[postgres]\" "
                  "and postgresql+psycopg://user@host/db")
    label = label or f"--storage={masked(url)!r}"
    return f"{label} needs the database driver {module!r}, which is not installed; {remedy}."


class StudyLocked(RuntimeError):
    """The study's lock stayed taken for longer than a start may wait; one line, exit code 1."""


class StudyLock:
    """While held, no other process holds the lock of the same study (PostgreSQL) or storage (SQLite).

    Held around what must happen once however many processes start together: creating or loading the
    study, checking its settings, finding or creating its parent run, and each trial start, where the
    count to `--trials` is read and the trial created (study.session).

    * PostgreSQL: `pg_advisory_lock` on a key derived from `name`, held by a connection of its own; the
      server drops it with the connection when the process dies.
    * SQLite, which locks a whole file: `BEGIN EXCLUSIVE` on the Optuna file. While held, this thread's
      Optuna calls run inside that transaction (each in a savepoint), so that they are not locked out
      too; other threads' calls (a trial's heartbeat) wait for the release. What the block did is
      committed at the release, also when it raised; a process killed inside leaves nothing of it.
    * Other databases: no lock.

    `release()` may end the lock inside the block (a trial trains after its start); the block's end
    then does nothing more. Entering waits for the lock, at most SQLITE_BUSY_TIMEOUT_S on SQLite.
    """

    def __init__(self, storage, name: str):
        """`storage`: Optuna's RDBStorage (or anything with its `engine` and, on SQLite, `scoped_session`)."""
        self._storage = storage
        self._engine = storage.engine
        self._name = name
        self._key = int.from_bytes(hashlib.blake2b(f"gaplab-study:{name}".encode(), digest_size=8).digest(),
                                   "big", signed=True)
        self._connection = None

    def __enter__(self) -> StudyLock:
        import sqlalchemy
        from sqlalchemy.orm import Session

        backend = self._engine.dialect.name
        if backend not in ("sqlite", "postgresql"):
            return self
        with signals_deferred():
            connection = self._engine.connect()
        try:
            if backend == "sqlite":
                try:
                    connection.exec_driver_sql("BEGIN EXCLUSIVE")
                except sqlalchemy.exc.OperationalError as error:
                    if "locked" not in str(error):
                        raise
                    raise StudyLocked(
                        f"{self._engine.url.database}: another process has held study {self._name!r} for over "
                        f"{SQLITE_BUSY_TIMEOUT_S} s (a command stopped with Ctrl-Z?); let it finish or stop it, "
                        "then rerun.") from None
                self._storage.scoped_session.remove()
                # Each Optuna call commits its session: inside the lock's transaction that releases a
                # savepoint, and an Optuna call that rolls back (a duplicate study name) rolls back its own.
                self._storage.scoped_session.registry.set(
                    Session(bind=connection, join_transaction_mode="create_savepoint"))
            else:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
                connection.commit()
        except BaseException:
            with signals_deferred():
                if backend == "sqlite":
                    self._storage.scoped_session.remove()
                    connection.close()
                else:
                    # An advisory lock belongs to the database session: a connection merely returned to the
                    # pool would keep holding it, so this one is closed for good.
                    connection.invalidate()
            raise
        self._connection = connection
        return self

    def release(self) -> None:
        """Let the next process in; nothing if not held."""
        import sqlalchemy

        connection, self._connection = self._connection, None
        if connection is None:
            return
        with signals_deferred():
            try:
                if self._engine.dialect.name == "sqlite":
                    self._storage.scoped_session.remove()
                    connection.commit()
                else:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                    connection.commit()
            finally:
                connection.close()

    def __exit__(self, *exc_info) -> None:
        self.release()


def open_optuna_storage(url: str, on_stale_trial: Callable | None = None, *, create: bool = True):
    """Optuna's storage at `url`, checked by a first query; UsageError if it cannot be used.

    `create=False` is for readers: no table is created, and no heartbeat is kept.
    """
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
    heartbeat = ({"heartbeat_interval": max(1, grace // 3), "grace_period": grace,
                  "heartbeat_stale_trial_callback": on_stale_trial} if create else {"skip_table_creation": True})
    path = sqlite_file(url)
    try:
        if create and path is not None and _is_new(path):
            _create_whole(path, _create_optuna_schema)
        with warnings.catch_warnings(), (_schema_lock(url) if backend == "postgresql" and create
                                         else contextlib.nullcontext()):
            # Heartbeats are marked experimental in Optuna 5 but are its only way to fail the trial
            # of a process that died; the warning would print on every run.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        storage.get_all_studies()
    except ImportError as error:
        raise UsageError(_driver_hint(url, error)) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        check = (("that the file is a readable" + (", writable" if create else "") + " SQLite database")
                 if backend == "sqlite" else "the host, port, user, password and that the database exists")
        if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
            error = error.__cause__  # Optuna's words ("raised during the commit") hide the driver's
        raise UsageError(f"--storage={masked(url)!r} cannot be opened ({_first_line(error, url)}); check "
                         f"{check}.") from None
    return storage


@contextlib.contextmanager
def _schema_lock(url: str):
    """An advisory lock around the creation of Optuna's tables in a PostgreSQL database: processes that start
    together on a new database would otherwise each create them, and all but one fail."""
    import sqlalchemy

    class Tables:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    try:
        with StudyLock(Tables, "optuna tables"):
            yield
    finally:
        Tables.engine.dispose()


def fail_orphaned_trials(study, storage, on_failed: Callable | None = None) -> list[int]:
    """Fail the study's RUNNING trials that have no heartbeat at all; their numbers. Call with the study's lock held.

    A trial starts under the lock, which its process releases only once the trial's first heartbeat is
    recorded (study.session). Seen under the lock, a RUNNING trial without one was created by a process
    that died within its start; on PostgreSQL (on SQLite the start is one transaction, undone by the
    death) the trial was committed and Optuna's heartbeat check, which skips trials without a heartbeat,
    would leave it RUNNING for good. `on_failed(study, frozen_trial)` is called for each, as Optuna calls
    its stale-trial callback. Reads Optuna's tables `trials` and `trial_heartbeats` by name.
    """
    import optuna
    import sqlalchemy

    session = storage.scoped_session()
    try:
        found = session.execute(sqlalchemy.text(
            "SELECT t.trial_id FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name "
            "AND t.state = 'RUNNING' AND NOT EXISTS (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)"),
            {"name": study.study_name}).scalars().all()
    finally:
        session.close()
    failed = []
    for trial_id in found:
        if storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
            frozen = storage.get_trial(trial_id)
            failed.append(frozen.number)
            if on_failed is not None:
                on_failed(study, frozen)
    return failed


def fail_stale_trials(study) -> None:
    """Fail the study's RUNNING trials whose process stopped beating; the storage's callback ends their runs."""
    import optuna

    with warnings.catch_warnings():
        # Experimental in Optuna 5 (see open_optuna_storage), and Optuna calls it itself before each trial.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def check_tracking_uri(uri: str | None = None, *, create: bool = True, label: str = "",
                       option: str = "MLFLOW_TRACKING_URI") -> str:
    """MLflow's tracking URI (`uri`, else MLflow's current; an SQLite path made absolute) once its store was
    checked (`check_tracking_store`), created whole if missing and `create`, and answered a query;
    UsageError naming it (password masked) if not."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = uri or mlflow.get_tracking_uri()
    label = label or f"{option}={masked(uri)!r}"
    check_tracking_store(uri, create=create, label=label, option=option)
    path = sqlite_file(uri)
    if path is not None and "?" not in uri:
        uri = f"sqlite:///{path.resolve()}"
        if create and _is_new(path):
            _create_whole(path, _create_mlflow_schema)
        elif create and _unfinished(path, label):
            print(f"note: {path} was left half-created by an interrupted run of an older version and held no "
                  "experiment or run; creating it anew.", file=sys.stderr, flush=True)
            _create_whole(path, _create_mlflow_schema, replaces=lambda found: _unfinished(found, label))
    server = uri.startswith(("http://", "https://"))
    if server:
        # MLflow retries an unreachable server for minutes by default; one try answers the question.
        saved = {name: os.environ.get(name) for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                                         "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                          MLFLOW_HTTP_REQUEST_TIMEOUT=str(TRACKING_SERVER_TIMEOUT_S))
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except ImportError as error:
        raise UsageError(f"{label} needs the database driver {_missing_module(error)!r}; install it with "
                         "pip install -e \".[postgres]\".") from None
    except (MlflowException, OSError) as error:
        given_up = f" (one try of at most {TRACKING_SERVER_TIMEOUT_S} s)" if server else ""
        raise UsageError(f"{label} cannot be used{given_up} ({_first_line(error, uri)}); check that the server "
                         "runs and the URI, user and password are right.") from None
    finally:
        if server:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return uri


def default_storage(tracking_uri: str | None = None) -> str:
    """sqlite:///optuna.db beside a sqlite MLflow store (`tracking_uri`, else MLflow's current), else in the cwd."""
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def check_storage_url(storage: str, *, must_exist: bool = False) -> None:
    """Raise UsageError, writing nothing, unless `storage` is a database URL a study can live in; a sqlite
    file must exist and be a database (for readers, `must_exist`), or be writable or creatable (for writers).

    `must_exist` is for readers: Optuna would silently create an empty sqlite file otherwise.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
    except ArgumentError:
        raise UsageError(f"--storage={storage!r} is not a database URL; use e.g. sqlite:///optuna.db "
                         "or postgresql://user@host/db.") from None
    backend = url.get_backend_name()
    if backend in ("http", "https"):
        raise UsageError(f"--storage={url.render_as_string(hide_password=True)!r} is a tracking URI (an MLflow "
                         "server), not a storage URL; give it as MLFLOW_TRACKING_URI, and --storage a database URL, "
                         "e.g. sqlite:///optuna.db or postgresql+psycopg://user@host/db.")
    if backend != "sqlite":
        check_database_reachable(storage, f"--storage={masked(storage)!r}", "--storage")
        return
    if is_in_memory(storage):
        raise UsageError(f"--storage={storage!r} is an in-memory database: the study would vanish when this process "
                         "ends (and its MLflow runs would stay); use a file, e.g. sqlite:///optuna.db.")
    path = Path(url.database).expanduser()
    if path.is_dir():
        raise UsageError(f"--storage={storage!r}: {url.database} is a folder, not a database file; pass a file "
                         f"path, e.g. sqlite:///{path / 'optuna.db'}.")
    if must_exist and not path.is_file():
        raise UsageError(f"--storage={storage!r}: {url.database} does not exist; run {command('study.run')} "
                         "first or pass the storage it used.")
    if not path.resolve().parent.is_dir():
        raise UsageError(f"--storage={storage!r}: folder {path.resolve().parent} does not exist; "
                         "create it or pick another path.")
    check_sqlite_file(path, f"--storage={storage!r}", write=not must_exist, option="--storage")


def check_database_reachable(url: str, label: str, option: str) -> None:
    """UsageError, creating nothing, unless the database server of `url` (not SQLite) is a dialect SQLAlchemy
    knows, its driver is installed, and it accepts a connection within DATABASE_CONNECT_TIMEOUT_S seconds.

    Answered before Keras or either store loads: a typo such as `sqlit:///x.db`, a missing driver or a server
    that is down is one line at once, not after seconds of imports and a half-made study.
    """
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        name = url.split(":", 1)[0]
        raise UsageError(f"{label} names the database {name!r}, which SQLAlchemy does not know; use e.g. "
                         "sqlite:///path/to/file.db or postgresql+psycopg://user@host/db.") from None
    except ArgumentError:
        raise UsageError(f"{label} is not a database URL; use e.g. sqlite:///path/to/file.db or "
                         "postgresql+psycopg://user@host/db.") from None
    try:
        dialect.import_dbapi()
    except ImportError as error:
        raise UsageError(_driver_hint(url, error, label)) from None
    timeout = ({"connect_timeout": DATABASE_CONNECT_TIMEOUT_S}
               if parsed.get_backend_name() in _CONNECT_TIMEOUT_DIALECTS else {})
    engine = sqlalchemy.create_engine(parsed, connect_args=timeout, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as error:
        raise UsageError(f"{label} cannot be opened ({_first_line(error, url)}; one try of at most "
                         f"{DATABASE_CONNECT_TIMEOUT_S} s); check the host, port, user, password and that the "
                         "database exists.") from None
    finally:
        engine.dispose()


# MLflow's tracking schemes that name neither a local store nor a database or HTTP server.
_OTHER_TRACKING_SCHEMES = ("databricks", "databricks-uc", "uc")


def check_tracking_reachable(uri: str, *, label: str = "", option: str = "MLFLOW_TRACKING_URI") -> None:
    """UsageError, creating nothing, unless MLflow's tracking URI `uri` has a scheme MLflow knows and, for a
    server, answers: an HTTP server one request within TRACKING_SERVER_TIMEOUT_S seconds, a database server a
    connection (`check_database_reachable`). Local stores are `check_tracking_store`'s; nothing loads MLflow's
    store here."""
    import urllib.error
    import urllib.request

    label = label or f"{option}={masked(uri)!r}"
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file") or scheme.startswith("sqlite") or scheme in _OTHER_TRACKING_SCHEMES:
        return
    if scheme in ("http", "https"):
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(uri)
        # Credentials in the URL are MLflow's to send; the health check needs only the host.
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
        health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
        try:
            urllib.request.urlopen(health, timeout=TRACKING_SERVER_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return  # the server answered (a proxy's login page, say): MLflow's own query says more
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            if isinstance(reason, ssl.SSLError):
                return  # it answered; MLflow's query, with its TLS settings (MLFLOW_TRACKING_INSECURE_TLS), decides
            raise UsageError(f"{label} cannot be used (one try of at most {TRACKING_SERVER_TIMEOUT_S} s) "
                             f"({_scrubbed(str(reason), uri)}); check that the server runs and the URI, user "
                             "and password are right.") from None
        return
    if scheme.split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
        check_database_reachable(uri, label, option)
        return
    raise UsageError(f"{label} has the scheme {scheme!r}, which MLflow does not know; use e.g. "
                     "sqlite:///path/to/mlflow.db, http://host:5000 or postgresql+psycopg://user@host/db.")


def check_recorded_tracking_uri(study, tracking_uri: str) -> None:
    """UsageError, before anything is written, when `study` recorded a SQLite MLflow store that no longer exists
    and this run uses another: its stores' folder was moved (or the store deleted), and its MLflow experiment
    would go on writing artifacts under the old path, re-creating it."""
    from study import contract

    recorded = study.user_attrs.get(contract.TRACKING_URI_ATTR)
    if not recorded or recorded == tracking_uri:
        return
    path = sqlite_file(recorded)
    if path is None or path.exists():
        return
    raise UsageError(f"study {study.study_name!r} was run with the MLflow store {path}, which no longer exists; this "
                     f"run's is {masked(tracking_uri)}. If the stores' folder was moved, its runs and artifacts still "
                     f"point to {path.parent}: move the folder back there to resume, or start a new study with "
                     "another --study_name.")
