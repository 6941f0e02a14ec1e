"""The command line: `python -m study.report` (and MLproject's `report` entry point).

    python -m study.report                                   # the only study in the default storage
    python -m study.report --study_name shapes-32px --out reports
    python -m study.report --storage sqlite:///runs/optuna.db --tracking_uri sqlite:///runs/mlflow.db
    mlflow run . -e report -P study_name=shapes-32px --env-manager local

Writes <out>/<study>/report.md, report.html and the figures, then logs those files to the
study's parent MLflow run under `report/` (and to the run `mlflow run` created, if any). The
study is only read, so one that is still running can be reported at any time, and no store is
ever created: a missing or unusable store, or an --out that cannot hold the report, is one line
and exit code 2. The MLflow store is the one the study recorded, unless --tracking_uri is given;
a tracking server gets one try of at most study.storage.TRACKING_SERVER_TIMEOUT_S (10) seconds.
A study with no finished trial has nothing to report: one line ("no trial has finished yet", or "all N
trials failed; the first error was ..."), exit code 3 (NOTHING_TO_REPORT), and no report is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from study import contract
from study.commands import ArgumentParser, UsageError, command, fail, quiet_logging
from study.report.build import build_report
from study.report.links import DEFAULT_UI_URL, check_ui_url
from study.report.render import write_report
from study.storage import check_storage_url, check_tracking_uri, default_storage, masked, open_optuna_storage

# Exit code of a report on a study with no finished (complete or pruned) trial: not bad input (2), but
# nothing to write either.
NOTHING_TO_REPORT = 3
# How much of a trial's error the one line quotes.
ERROR_QUOTE_LIMIT = 300


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=command("study.report"),
                            description="Write a study's report: findings, tables and figures.")
    add = parser.add_argument
    add("--study_name", "--study-name", type=str, default="",
        help="study to report (default: the only study in the storage)")
    add("--storage", type=str, default="", help=f"Optuna storage URL (default: as {command('study.run')})")
    add("--tracking_uri", "--tracking-uri", type=str, default="",
        help="MLflow tracking URI (default: the one the study recorded, else MLflow's current)")
    add("--out", type=str, default="", help="output folder; the report goes to <out>/<study>/ (default: reports)")
    add("--ui_url", "--ui-url", type=str, default="",
        help="the MLflow UI's address that run ids and the registered model link to (default: the tracking server, "
             f"else {DEFAULT_UI_URL}, where `mlflow ui` serves a local store)")
    return parser


def resolve_study_name(storage, url: str, requested: str) -> str:
    """The study to report from Optuna's `storage` (opened from `url`); UsageError naming the choices."""
    stored = set(optuna.get_all_study_names(storage=storage))
    # A study's confirmation (--confirm K) lives in a companion study beside it: its report is the study's.
    companions = {contract.confirmation_study_name(name) for name in stored} & stored
    names = sorted(stored - companions)
    listing = ", ".join(repr(n) for n in names) if names else "none"
    where = masked(url)
    if requested in companions:
        study = requested.removesuffix(contract.CONFIRMATION_SUFFIX)
        raise UsageError(f"--study_name={requested!r} holds the confirmation of study {study!r}; its report is "
                         f"that study's: pass --study_name {study!r}.")
    if requested:
        if requested not in names:
            raise UsageError(f"--study_name={requested!r} is not in {where}; studies there: {listing}.")
        return requested
    if not names:
        raise UsageError(f"{where} holds no study; run {command('study.run')} first, or pass the --storage it used.")
    if len(names) != 1:
        raise UsageError(f"{where} holds {len(names)} studies ({listing}); pick one with --study_name.")
    return names[0]


def check_out_folder(out: str) -> Path:
    """`out` as a path, once the folder (or its nearest existing parent) is a folder this process can write."""
    path = Path(out).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out={out!r}: {existing} is a file, not a folder; pass a folder for the report.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out={out!r}: folder {existing} is read-only; pass a folder you can write.")
    return path


def open_study(args: argparse.Namespace):
    """(study, tracking URI): the study read from its storage and the MLflow store it recorded (or the one
    given), both checked; nothing is created or written."""
    storage = args.storage or default_storage(args.tracking_uri or mlflow.get_tracking_uri())
    check_storage_url(storage, must_exist=True)
    optuna_storage = open_optuna_storage(storage, create=False)
    name = resolve_study_name(optuna_storage, storage, args.study_name)
    study = optuna.load_study(study_name=name, storage=optuna_storage)
    stored = study.user_attrs.get(contract.TRACKING_URI_ATTR)
    if args.tracking_uri:
        uri, label = args.tracking_uri, ""
    elif stored:
        uri, label = stored, f"the study's tracking URI {masked(stored)!r} (recorded by {command('study.run')})"
    else:
        uri = mlflow.get_tracking_uri()
        label = f"MLflow's tracking URI {masked(uri)!r} (the study recorded none)"
    return study, check_tracking_uri(uri, create=False, label=label, option="--tracking_uri")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = args.out or "reports"
    try:
        out_folder = check_out_folder(out)
        check_ui_url(args.ui_url)
        study, tracking = open_study(args)
        client = MlflowClient(tracking)
        empty = nothing_to_report(study, client)
        if empty:
            return fail(empty, NOTHING_TO_REPORT)
        report = build_report(study, client, args.ui_url or None)
        folder = out_folder / _safe_folder(study.study_name)
        try:
            paths = write_report(report, folder)
        except OSError as error:
            raise UsageError(f"--out={out!r}: the report cannot be written to {folder} "
                             f"({error.strerror or error}); pass a folder you can write.") from None
    except UsageError as error:
        return fail(str(error))
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
    print(f"report for study {study.study_name!r}: {folder / 'report.html'} and report.md"
          + (f"; logged to MLflow run{'s' * (len(logged) > 1)} {' and '.join(logged)} under report/" if logged else ""))
    return 0


def nothing_to_report(study, client) -> str | None:
    """Why `study` has nothing to report (no complete or pruned trial yet), in one line; None when it has."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state in contract.FINISHED_STATES for t in trials):
        return None
    failed = [t for t in trials if t.state == TrialState.FAIL]
    unfinished = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    where = f"study {study.study_name!r}"
    if not failed or unfinished:
        named = {TrialState.RUNNING: "running", TrialState.WAITING: "queued", TrialState.FAIL: "failed"}
        counts = ", ".join(f"{sum(t.state == state for t in trials)} {word}" for state, word in named.items()
                           if any(t.state == state for t in trials))
        return (f"{where}: no trial has finished yet{f' ({counts})' if counts else ''}; rerun the report once one "
                "has (python -m study.run trains them).")
    first = min(failed, key=lambda t: t.number)
    return (f"{where}: all {len(failed)} trials failed; the first error was (trial {first.number}) "
            f"{_trial_error(first, client)}. Fix it and rerun python -m study.run.")


def _trial_error(trial, client) -> str:
    """The error a failed trial's MLflow run recorded, first line, shortened; what is known otherwise."""
    run_id = trial.user_attrs.get(contract.RUN_ID_ATTR)
    if not run_id:
        return "not recorded: the trial has no MLflow run"
    try:
        error = client.get_run(run_id).data.tags.get(contract.ERROR_TAG, "")
    except Exception as problem:  # noqa: BLE001 - the line names what could not be read instead
        return f"not readable: its MLflow run {run_id} could not be read ({type(problem).__name__})"
    line = error.strip().splitlines()[0] if error.strip() else ""
    if not line:
        return f"not recorded in its MLflow run {run_id}"
    return line if len(line) <= ERROR_QUOTE_LIMIT else line[:ERROR_QUOTE_LIMIT - 1] + "…"


def _safe_folder(name: str) -> str:
    """The study name as one path component (study.run allows letters, digits, space, '.', '_', '-')."""
    cleaned = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip() or "study"
    return "_" + cleaned if cleaned.startswith(".") else cleaned
