"""The command line: `python -m study.report` (and MLproject's `report` entry point).

    python -m study.report                                   # the only study in the default storage
    python -m study.report --study_name shapes-32px --out reports
    python -m study.report --storage sqlite:///runs/optuna.db --tracking_uri sqlite:///runs/mlflow.db
    mlflow run . -e report -P study_name=shapes-32px --env-manager local

Writes <out>/<study>/report.md, report.html and the figures, then logs those files to the
study's parent MLflow run under `report/` (and to the run `mlflow run` created, if any). The
study is only read, so one that is still running can be reported at any time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from study import contract
from study.cli import ArgumentParser, UsageError, check_storage_url, default_storage, fail, quiet_logging
from study.report.build import build_report
from study.report.render import write_report


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m study.report",
                            description="Write a study's report: findings, tables and figures.")
    add = parser.add_argument
    add("--study_name", "--study-name", type=str, default="",
        help="study to report (default: the only study in the storage)")
    add("--storage", type=str, default="", help="Optuna storage URL (default: as python -m study.run)")
    add("--tracking_uri", "--tracking-uri", type=str, default="",
        help="MLflow tracking URI (default: MLflow's current)")
    add("--out", type=str, default="", help="output folder; the report goes to <out>/<study>/ (default: reports)")
    return parser


def resolve_study_name(storage: str, requested: str) -> str:
    import optuna

    names = sorted(optuna.get_all_study_names(storage=storage))
    listing = ", ".join(repr(n) for n in names) if names else "none"
    if requested:
        if requested not in names:
            raise UsageError(f"--study_name={requested!r} is not in {storage}; studies there: {listing}.")
        return requested
    if not names:
        raise UsageError(f"{storage} holds no study; run python -m study.run first, or pass the --storage it used.")
    if len(names) != 1:
        raise UsageError(f"{storage} holds {len(names)} studies ({listing}); pick one with --study_name.")
    return names[0]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_logging()
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracking = args.tracking_uri or mlflow.get_tracking_uri()
    storage = args.storage or default_storage(tracking)
    try:
        check_storage_url(storage, must_exist=True)
        name = resolve_study_name(storage, args.study_name)
    except UsageError as error:
        return fail(str(error))
    study = optuna.load_study(study_name=name, storage=storage)
    client = MlflowClient(tracking)
    report = build_report(study, client)
    folder = Path(args.out or "reports") / _safe_folder(name)
    paths = write_report(report, folder)
    # The study's parent run keeps the report; a run `mlflow run . -e report` created gets a copy.
    targets = [run for run in (study.user_attrs.get(contract.PARENT_RUN_ID_ATTR), os.environ.get("MLFLOW_RUN_ID"))
               if run]
    logged = []
    for run in dict.fromkeys(targets):
        try:
            for path in paths:
                client.log_artifact(run, str(path), "report")
            logged.append(run)
        except Exception as error:  # noqa: BLE001 - the files on disk are the report; logging is a copy
            print(f"warning: could not log the report to MLflow run {run}: {type(error).__name__}: {error}",
                  file=sys.stderr)
    print(f"report for study {name!r}: {folder / 'report.html'} and report.md"
          + (f"; logged to MLflow run{'s' * (len(logged) > 1)} {' and '.join(logged)} under report/" if logged else ""))
    return 0


def _safe_folder(name: str) -> str:
    """The study name as one path component (study.run allows letters, digits, space, '.', '_', '-')."""
    cleaned = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip() or "study"
    return "_" + cleaned if cleaned.startswith(".") else cleaned
