"""`python -m study.report` on bad values and bad stores: one line, exit 2, password masked, nothing created.

The report reads the MLflow store the study recorded unless --tracking_uri is given, and gives up on a
tracking server that does not answer within one short try.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.report_studies import build_study
from tests.test_stores import read_only

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_info(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("report_cli"), "momentum", "cli-study")


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An empty working folder: nothing may appear in it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def report(*args: str) -> int:
    from study.report import main

    return main(list(args))


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_the_study_s_recorded_tracking_uri_is_used_from_another_folder(study_info, elsewhere, capsys):
    assert report("--storage", study_info["storage"], "--out", str(elsewhere / "out")) == 0
    assert capsys.readouterr().err == ""
    folder = elsewhere / "out" / "cli-study"
    # The confusion matrix comes from the trial runs' artifacts: MLflow was read.
    assert (folder / "confusion_matrix.png").is_file() and (folder / "report.md").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["out"], "no store may be created"


@pytest.mark.parametrize("given", [
    ("--out", "FILE"),
    ("--storage", "postgresql+psycopg://u:pw@127.0.0.1:1/db"),
    ("--storage", "mysql://u:pw@127.0.0.1:1/db"),
    ("--storage", "sqlite:///notadb.txt"),
    ("--storage", "sqlite://"),
    ("--storage", "http://127.0.0.1:5000"),
    ("--tracking_uri", "garbage"),
    ("--tracking_uri", "sqlite:///missing.db"),
])
def test_bad_values_are_one_line_exit_2_and_create_nothing(study_info, elsewhere, capsys, given):
    option, value = given
    (elsewhere / "notadb.txt").write_text("not a database\n")
    (elsewhere / "FILE").write_text("a file\n")
    args = {"--storage": study_info["storage"], "--out": str(elsewhere / "out"), option: value}
    assert report(*[item for pair in args.items() for item in pair]) == 2
    error = one_line(capsys)
    assert f"{option}=" in error and ":pw@" not in error
    expected = {"FILE": "is a file, not a folder",
                "postgresql+psycopg://u:pw@127.0.0.1:1/db": "cannot be opened (connection",
                "mysql://u:pw@127.0.0.1:1/db": "needs the database driver 'MySQLdb'",
                "sqlite:///notadb.txt": "notadb.txt is not an SQLite database",
                "sqlite://": "is an in-memory database",
                "http://127.0.0.1:5000": "is a tracking URI (an MLflow server)",
                "garbage": "is not a tracking URI", "sqlite:///missing.db": "missing.db does not exist"}
    assert expected[value] in error
    if "u:pw@" in value:
        assert "u:***@127.0.0.1:1/db" in error
    assert sorted(p.name for p in elsewhere.iterdir()) == ["FILE", "notadb.txt"]


def test_an_out_folder_that_cannot_be_written_is_one_line(study_info, elsewhere, capsys):
    locked = elsewhere / "locked"
    locked.mkdir()
    with read_only(locked):
        assert report("--storage", study_info["storage"], "--out", str(locked / "reports")) == 2
    assert one_line(capsys) == (f"error: --out='{locked / 'reports'}': folder {locked} is read-only; pass a folder "
                                "you can write.")
    assert list(locked.iterdir()) == []


def test_a_moved_mlflow_store_is_named_not_created(tmp_path, elsewhere, capsys):
    info = build_study(tmp_path / "moved", "momentum", "moved-study")
    recorded = Path(info["tracking"][len("sqlite:///"):])
    recorded.rename(recorded.with_name("elsewhere.db"))
    assert report("--storage", info["storage"], "--out", str(elsewhere / "out")) == 2
    error = one_line(capsys)
    assert f"the study's tracking URI {info['tracking']!r} (recorded by python -m study.run)" in error
    assert f"{recorded} does not exist; pass the MLflow store the study used with --tracking_uri" in error
    assert not recorded.exists() and list(elsewhere.iterdir()) == []


def test_a_read_only_optuna_file_is_still_reported(tmp_path, elsewhere):
    info = build_study(tmp_path / "ro", "momentum", "ro-study")
    db = Path(info["storage"][len("sqlite:///"):])
    with read_only(db):
        assert report("--storage", info["storage"], "--out", str(elsewhere / "out")) == 0
    assert (elsewhere / "out" / "ro-study" / "report.md").is_file()


def test_an_unreachable_tracking_server_is_given_up_within_20_seconds(study_info, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "study.report", "--storage", study_info["storage"],
                           "--tracking_uri", "http://127.0.0.1:1", "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    # Python and MLflow's import take a few seconds of that on a loaded machine.
    assert time.monotonic() - started < 20
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: --tracking_uri='http://127.0.0.1:1' cannot be used (one try of at most 10 s)"), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_store_that_is_not_optuna_s_is_named(tmp_path, elsewhere, capsys):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table t (x int)")
    assert report("--storage", f"sqlite:///{db}", "--out", str(elsewhere / "out")) == 2
    assert f"--storage='sqlite:///{db}' cannot be opened" in one_line(capsys)
    with sqlite3.connect(db) as connection:
        assert [name for (name,) in connection.execute("select name from sqlite_master")] == ["t"]


# -- nothing to report: one line, its own exit code, no report written -----------------------------------


def _bare_study(root: Path, name: str, states: list, error: str = ""):
    """A study as study.run leaves it before any trial finished: trials in `states`, failed ones with a run
    whose error tag is `error`."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from study import contract

    root.mkdir(parents=True)
    storage, tracking = f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking)
    experiment = client.create_experiment(name, artifact_location=(root / "artifacts").as_uri())
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(contract.TRACKING_URI_ATTR, tracking)
    for state in states:
        attrs = {}
        if state == TrialState.FAIL:
            run = client.create_run(experiment).info.run_id
            client.set_tag(run, contract.ERROR_TAG, error)
            client.set_terminated(run, "FAILED")
            attrs[contract.RUN_ID_ATTR] = run
        if state == TrialState.WAITING:
            study.enqueue_trial({})
        else:
            study.add_trial(optuna.trial.create_trial(params={}, distributions={}, user_attrs=attrs, state=state,
                                                      value=None))
    return storage


@pytest.mark.parametrize("states, expected", [
    ([], "error: study 'empty': no trial has finished yet; rerun the report once one has (python -m study.run "
         "trains them)."),
    (["RUNNING", "WAITING", "FAIL"], "error: study 'empty': no trial has finished yet (1 running, 1 queued, "
                                     "1 failed); rerun the report once one has"),
    (["FAIL", "FAIL", "FAIL"], "error: study 'empty': all 3 trials failed; the first error was (trial 0) "
                               "ValueError: depth=3 is too deep for image_size=8. Fix it and rerun python -m "
                               "study.run."),
])
def test_a_study_with_no_finished_trial_is_one_line_exit_3_and_no_report(tmp_path, elsewhere, capsys, states,
                                                                          expected):
    from optuna.trial import TrialState

    from study.report.command import NOTHING_TO_REPORT

    storage = _bare_study(tmp_path / "stores", "empty", [TrialState[state] for state in states],
                          "ValueError: depth=3 is too deep for image_size=8\nTraceback (most recent call last): ...")
    capsys.readouterr()
    assert report("--storage", storage, "--out", str(elsewhere / "out")) == NOTHING_TO_REPORT == 3
    assert one_line(capsys).startswith(expected)
    assert list(elsewhere.iterdir()) == [], "no report is written"


def test_a_study_of_trials_without_batchnorm_reports_no_raw_exception(tmp_path, elsewhere):
    # Only the presets without batchnorm finished: the momentum x batch size figure has no point. Its empty
    # colour scale on log axes raised "ValueError: Data cannot be log-scaled", which the caveats quoted.
    import optuna
    from optuna.trial import TrialState

    from study import contract
    from study.report import figures

    assert figures.momentum_batch_figure([]) is None and figures.horizon_figure([]) is None
    storage = _bare_study(tmp_path / "stores", "no-bn", [])
    study = optuna.load_study(study_name="no-bn", storage=storage)
    for number, preset in enumerate(("seed-initial", "seed-deeper")):
        study.add_trial(optuna.trial.create_trial(
            params={"batch_size": 32}, distributions={"batch_size": optuna.distributions.CategoricalDistribution(
                (8, 16, 32))}, value=0.5 + number / 10, state=TrialState.COMPLETE,
            user_attrs={contract.PRESET_ATTR: preset, contract.BATCHNORM_ATTR: False, "val_accuracy": 0.5,
                        "train_accuracy": 0.6, "gap": 0.1}))
    assert report("--storage", storage, "--out", str(elsewhere / "out")) == 0
    page = (elsewhere / "out" / "no-bn" / "report.md").read_text()
    assert "Momentum × batch size' has no data" in page
    assert "Error" not in page and "could not be drawn" not in page
