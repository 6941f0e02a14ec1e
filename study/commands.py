"""Command-line plumbing shared by `study.run`, `study.bench` and `study.report`.

* `UsageError`: a bad command-line value, printed as one line with exit code 2;
* `fail` / `ArgumentParser`: that line, and the parser whose own errors are that line too (from
  gaplab.usage, so `python -m gaplab` answers bad input in the same way);
* `command`: how the user runs one of the study's commands from here (`gaplab-study` once installed,
  `python -m study.run` otherwise), for usage lines and hints;
* `quiet_logging`: no Keras/TF/Optuna/MLflow chatter by default; `native_logs_filtered`: the same
  for the lines the backend's C++ libraries write to stderr while it is imported.

Nothing here imports Keras, so the report starts without loading a deep learning backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gaplab.usage import ArgumentParser, fail

__all__ = ["INSTALLED_COMMANDS", "ArgumentParser", "UsageError", "command", "fail", "native_logs_filtered",
           "quiet_logging"]

# The commands pyproject.toml's [project.scripts] installs, by the module each runs.
INSTALLED_COMMANDS = {"study.run": "gaplab-study", "study.report": "gaplab-report", "study.bench": "gaplab-bench"}


def command(module: str) -> str:
    """How the user runs `module` (a key of INSTALLED_COMMANDS): by its installed name when this process was
    started as one of the installed commands, else as `python -m <module>`. Usage lines and hints name it so,
    as a user can type it in the folder they are in."""
    started = Path(sys.argv[0]).name.removesuffix(".exe") if sys.argv and sys.argv[0] else ""
    if started in INSTALLED_COMMANDS.values():
        return INSTALLED_COMMANDS[module]
    return f"python -m {module}"


class UsageError(ValueError):
    """A bad command-line value; reported as one line with exit code 2."""


# TensorFlow's C++ log threshold (0 info, 1 warning, 2 error, 3 fatal), unless the user set one.
DEFAULT_NATIVE_LOG_LEVEL = "3"
# absl's C++ log line, e.g. "I0000 00:00:1795995405.379396   22575 cudart_stub.cc:31] Could not find cuda drivers".
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\] ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def quiet_logging() -> None:
    """Per-trial progress lines only: no Keras/TF/Optuna/MLflow chatter by default. Errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_NATIVE_LOG_LEVEL)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow sets its loggers to MLFLOW_LOGGING_LEVEL when imported, so it is imported here, after setting it,
    # rather than later, when it would undo the levels below.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    from mlflow.utils import logging_utils

    # MLflow prints some notes ("Successfully registered model ...", "Created version '1' of model ...") with
    # `eprint` to this stream, whatever the level, and its own context managers switch the stream back on;
    # `eprint` looks the stream up when it prints, while MLflow's log handlers keep the original one.
    logging_utils.MLFLOW_LOGGING_STREAM = _DISCARDED
    for name in ("tensorflow", "absl", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _Discarded:
    """A text stream that drops what is written to it."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


_DISCARDED = _Discarded()


@contextlib.contextmanager
def native_logs_filtered() -> Iterator[None]:
    """Within the block, what C++ libraries write to stderr (file descriptor 2) is held back; at its end it is
    written out less absl's log lines below TF_CPP_MIN_LOG_LEVEL and absl's banner about InitializeLog.

    For importing the Keras backend and listing its devices: TensorFlow's and XLA's libraries log there
    before anything reads TF_CPP_MIN_LOG_LEVEL ("Could not find cuda drivers", "failed call to cuInit").
    """
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    threshold = int(level) if level.isdigit() else 0
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _below_threshold(line, threshold)))
            sys.stderr.flush()


def _below_threshold(line: str, threshold: int) -> bool:
    if threshold and line.startswith(_ABSL_BANNER):
        return True
    found = _ABSL_LINE.match(line)
    return bool(found) and "IWEF".index(found.group(1)) < threshold
