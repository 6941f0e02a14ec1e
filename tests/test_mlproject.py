"""The MLflow project files agree with the code: MLproject's entry points offer exactly the CLI's parameters, with
the same types and defaults, and conda.yaml lists pyproject.toml's dependencies."""

from __future__ import annotations

import pytest
import yaml

from study import run as run_module
from tests.helpers import ROOT

MLPROJECT_TYPES = {"int": int, "float": float, "string": str}


@pytest.mark.parametrize("entry_point", ["main", "report"])
def test_mlproject_parameters_match_the_cli(entry_point):
    from study import report

    parser_factory = {"main": run_module.build_parser, "report": report.build_parser}[entry_point]
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    declared = spec["entry_points"][entry_point]["parameters"]
    actions = {action.dest: action for action in parser_factory()._actions if action.dest != "help"}
    assert set(declared) == set(actions), "MLproject and the CLI must offer the same parameters"
    command = spec["entry_points"][entry_point]["command"]
    for name, declaration in declared.items():
        action = actions[name]
        assert f"--{name}" in action.option_strings
        assert f"--{name} {{{name}}}" in command, f"MLproject command must pass --{name}"
        assert (action.type or str) is MLPROJECT_TYPES[declaration["type"]], name
        assert action.default == declaration["default"], name
    assert spec["conda_env"] == "conda.yaml"


def test_conda_env_lists_the_same_dependencies_as_pyproject():
    import tomllib  # Python 3.11+ (the package supports 3.10): only this test needs it

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(item["pip"] for item in conda if isinstance(item, dict))
    assert set(pyproject) <= set(pip)
