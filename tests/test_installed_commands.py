"""Installed commands speak for themselves: usage lines and hints name the command as the user called it
(`gaplab-study` once installed, `python -m study.run` otherwise) and point to --help, never to a path of
the repository (docs/...) that an installed copy does not have."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import subprocess_env

REPOSITORY = Path(__file__).resolve().parents[1]


def _scripts() -> dict[str, str]:
    """pyproject's [project.scripts]: installed name -> module."""
    import tomllib  # Python 3.11+, as in tests/test_mlproject.py

    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def _parser_of(module: str):
    return importlib.import_module(module).build_parser()


def test_every_installed_command_is_known_by_the_name_pyproject_installs():
    from study.commands import INSTALLED_COMMANDS

    modules = {name: "study.report" if module == "study.report.command" else module
               for name, module in _scripts().items()}
    assert {module: name for name, module in modules.items()} == INSTALLED_COMMANDS


@pytest.mark.parametrize("script, module", [("gaplab-study", "study.run"), ("gaplab-report", "study.report.command"),
                                            ("gaplab-bench", "study.bench")])
def test_usage_names_the_installed_command_when_started_as_one(monkeypatch, capsys, script, module):
    monkeypatch.setattr(sys, "argv", [f"/home/user/.local/bin/{script}"])
    parser = _parser_of(module)
    assert parser.format_usage().startswith(f"usage: {script} ")
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["--no_such_flag"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: unrecognized arguments: --no_such_flag; see {script} --help\n"


@pytest.mark.parametrize("module", ["study.run", "study.report.command", "study.bench"])
def test_usage_names_python_m_otherwise(monkeypatch, module):
    monkeypatch.setattr(sys, "argv", [str(REPOSITORY / (module.replace(".", "/") + ".py"))])
    shown = "study.report" if module == "study.report.command" else module
    assert _parser_of(module).format_usage().startswith(f"usage: python -m {shown} ")


def test_an_installed_report_points_to_the_installed_study_command(tmp_path):
    """A console script as pip writes it, run from a user's folder: the hint names gaplab-study."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.storages.RDBStorage(storage)  # an Optuna database with no study in it
    script = tmp_path / "bin" / "gaplab-report"
    script.parent.mkdir()
    script.write_text("import sys\nfrom study.report.command import main\nsys.exit(main())\n")
    done = subprocess.run([sys.executable, str(script), "--storage", storage], cwd=tmp_path,
                          env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith("holds no study; run gaplab-study first, or pass the --storage it used.\n")
    assert "python -m" not in done.stderr


def test_python_m_says_python_m(tmp_path):
    done = subprocess.run([sys.executable, "-m", "study.run", "--tri", "2"], cwd=REPOSITORY,
                          env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: unrecognized arguments: --tri 2; see python -m study.run --help\n"


def test_device_hints_name_no_repository_path():
    from gaplab import device

    assert "docs/" not in device.cpu_notice()
    source = (REPOSITORY / "src" / "gaplab" / "device.py").read_text()
    assert "docs/" not in source.split('"""', 2)[2]  # no hint below the module docstring names a docs/ path
