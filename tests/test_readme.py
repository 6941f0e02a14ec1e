"""The front door cannot drift: README.md and docs/*.md run as written and name only what exists.

Every fenced ```python block runs (in a folder holding a tiny `photos/` image folder, so that
`load_image_folder("photos/", ...)` reads generated images); every `python -m study.run` and
`python -m study.report` flag and every `mlflow run .` parameter they name exists; every relative
link resolves; and CI runs the README's test command.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import types

import pytest

from tests.helpers import ROOT, make_folder

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LIBRARY_EXAMPLE = "from gaplab import TrainConfig, generate_shapes, load_image_folder, train"


def fenced_blocks(language: str) -> list[tuple[str, str]]:
    """(where, code) of every fenced block in `language`, where = 'file:line' of its opening fence."""
    blocks = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 1
                blocks.append((f"{document.relative_to(ROOT)}:{line}", match.group(2)))
    return blocks


PYTHON_BLOCKS = fenced_blocks("python")


def test_the_docs_hold_the_library_example():
    assert any(LIBRARY_EXAMPLE in code for _, code in PYTHON_BLOCKS), "the library example is gone from the docs"


@pytest.mark.parametrize("where, code", PYTHON_BLOCKS, ids=[where for where, _ in PYTHON_BLOCKS])
def test_every_python_snippet_runs_as_written(where, code, tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "photos", {"cat": 10, "dog": 10, "emu": 10}, size=16)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out
    if LIBRARY_EXAMPLE in code:
        # One line per dataset: its name and four finite accuracies or differences of them.
        rows = [line.split() for line in printed.splitlines()]
        assert [row[0] for row in rows] == ["photos", "shapes"], printed
        assert all(len(row) == 5 and all(abs(float(value)) <= 1 for value in row[1:]) for row in rows), printed


def test_every_name_gaplab_exports_stays_itself_once_every_submodule_is_imported():
    # Importing gaplab.<x> sets the package attribute x to the submodule: an export named like a
    # submodule (once `train`) then hands out the module, and the library example fails.
    import gaplab

    for module in pkgutil.iter_modules(gaplab.__path__):
        if module.name != "__main__":
            importlib.import_module(f"gaplab.{module.name}")
    shadowed = [name for name in gaplab.__all__ if isinstance(getattr(gaplab, name), types.ModuleType)]
    assert shadowed == [], f"gaplab.{shadowed} are submodules, not the exported names"
    from gaplab import train

    assert callable(train)


def _commands(program: str) -> list[str]:
    """The text after each mention of `program` up to the end of its code span or command line."""
    pattern = re.compile(re.escape(program) + r"((?:[^`\n#]|\\\n)*)")
    return [match.group(1) for document in DOCUMENTS for match in pattern.finditer(document.read_text())]


def _options(build_parser) -> tuple[set[str], set[str]]:
    """(flags, parameter names) of a CLI's parser; --help is a flag but no parameter."""
    actions = build_parser()._actions
    return ({flag for action in actions for flag in action.option_strings},
            {action.dest for action in actions if action.dest != "help"})


def test_every_flag_and_mlflow_parameter_the_docs_name_exists():
    from study import report, run

    checked = set()
    for program, build_parser in (("python -m study.run", run.build_parser),
                                  ("python -m study.report", report.build_parser)):
        flags, _ = _options(build_parser)
        for command in _commands(program):
            named = set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*", command))
            assert named <= flags, f"{program}{command.rstrip()}: no such flag {sorted(named - flags)}"
            checked |= named
    for command in _commands("mlflow run ."):
        build_parser = report.build_parser if re.search(r"(^|\s)-e report\b", command) else run.build_parser
        _, names = _options(build_parser)
        named = set(re.findall(r"-P (\w+)=", command))
        assert named <= names, f"mlflow run .{command.rstrip()}: no such parameter {sorted(named - names)}"
        checked |= named
    assert {"--trials", "--data_dir", "--image_size", "trials"} <= checked, "the README's own commands were read"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_resolves():
    links = 0
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            assert linked.exists(), f"{document.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.MULTILINE)
                assert anchor in {_anchor(h) for h in headings}, f"{document.relative_to(ROOT)}: no #{anchor} in {path}"
            links += 1
    assert links >= 9, "the README's table of contents links the docs"


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    test_section = readme[readme.index("\n## Test\n"):]
    command = FENCE.search(test_section).group(2).strip()
    assert command == "python -m pytest -n 2 --dist worksteal"
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
