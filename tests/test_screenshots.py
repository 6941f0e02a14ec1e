"""The docs' pictures and the numbers beside them are no older than the code they show.

`python scripts/screenshots.py` makes every picture in docs/ and records in docs/screenshots.json the
commit it pictured, with the files each picture depends on. Once one of those files changes in a
later commit, the pictures show code that is gone: this fails until the command is run again.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.helpers import ROOT

RECORD = ROOT / "docs" / "screenshots.json"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def record() -> dict:
    try:
        _git("rev-parse", "--git-dir")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the pictures' commit cannot be compared with the code's")
    if _git("rev-parse", "--is-shallow-repository") == "true":
        # A shallow clone (as some CI services make) lacks the commits to compare; a full clone has them.
        pytest.skip("a shallow clone: the pictures' commit cannot be compared with the code's (git fetch --unshallow)")
    return json.loads(RECORD.read_text())


def test_no_picture_is_older_than_the_code_it_shows(record):
    commit = record["commit"]
    try:
        _git("merge-base", "--is-ancestor", commit, "HEAD")
    except subprocess.CalledProcessError:
        pytest.fail(f"the pictures were made at {commit[:7]}, which is not in this branch's history; rerun "
                    "python scripts/screenshots.py")
    for picture, about in record["pictures"].items():
        assert (ROOT / picture).is_file(), picture
        later = _git("log", "--format=%h %s", f"{commit}..HEAD", "--", *about["depends_on"])
        assert not later, (f"{picture} shows the code of {commit[:7]}; since then {', '.join(about['depends_on'])} "
                           f"changed in:\n{later}\nrerun python scripts/screenshots.py and commit its pictures")


def test_every_picture_in_the_docs_is_made_by_the_command_and_names_its_commit(record):
    short = record["commit"][:7]
    made = {name.split("/")[-1] for name in record["pictures"]}
    shown = {path.name for path in (ROOT / "docs").glob("*.png")}
    assert shown == made, f"pictures in docs/ no command makes: {sorted(shown - made)}"
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for alt, target in re.findall(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", doc.read_text()):
            if target.split("/")[-1] in made:
                assert alt.endswith(f"(commit {short})"), (doc.name, alt)


def test_the_study_the_pictures_come_from_is_stated_as_recorded(record):
    text = (ROOT / "docs" / "ui.md").read_text()
    study = record["study"]
    assert (f"a real {study['trials']}-trial study on the built-in dataset (`{' '.join(record['study_command'])}`, "
            f"study `{study['name']}`; {study['complete']} trials complete, {study['pruned']} pruned, "
            f"{study['failed']} failed)") in " ".join(text.split())
    assert study["complete"] + study["pruned"] + study["failed"] == study["trials"]
