"""The installed commands (pyproject's console scripts) work from any folder, keeping their stores there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


def _installed(command: str) -> str:
    path = shutil.which(command) or shutil.which(command, path=str(Path(sys.executable).parent))
    assert path, f"{command} is not on PATH; install the project with pip install -e ."
    return path


def _outside_repository_env() -> dict[str, str]:
    """The environment a user has: no PYTHONPATH into the checkout, no tracking URI of ours."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")}
    return env


def test_installed_commands_answer_bad_input_from_another_folder(tmp_path):
    for command, argv in (("gaplab-study", ["--trials", "0"]), ("gaplab-bench", ["--trials", "0"]),
                          ("gaplab-report", ["--study_name", "nothing-here"])):
        done = subprocess.run([_installed(command), *argv], cwd=tmp_path, env=_outside_repository_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "No module named" not in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [], "a refused command left files behind"


@pytest.mark.slow
def test_installed_study_and_report_run_in_a_users_folder(tmp_path):
    assert not str(tmp_path).startswith(str(REPOSITORY))
    env = _outside_repository_env()
    study = subprocess.run([_installed("gaplab-study"), "--trials", "1", "--epochs", "1", "--image_size", "16",
                            "--study_name", "mine"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert study.returncode == 0, study.stderr[-2000:]
    assert "[1/1] trial 0 [seed-initial] COMPLETE" in study.stdout
    assert (tmp_path / "optuna.db").is_file() and (tmp_path / "mlflow.db").is_file()
    report = subprocess.run([_installed("gaplab-report")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    markdown = (tmp_path / "reports" / "mine" / "report.md").read_text()
    assert markdown.startswith("# Study report: mine") and "seed-initial" in markdown
    assert not (REPOSITORY / "reports" / "mine").exists()
