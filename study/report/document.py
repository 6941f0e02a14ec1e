"""The report as plain data: sections of paragraphs, bullets, tables and figures.

Everything here is plain text and numbers; the renderers (`study.report.render`) do all escaping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Finding:
    """One finding: its sentence and the numbers behind it (`findings.json` holds these, the pages render them).

    kind: what it is (paired_effect, gap_part, band, across_trial_split, ...); estimate: its number (an
    accuracy difference as a fraction, a share, a p-free effect); interval: the 95 % interval, None where none
    is claimed; n: trials (or images, for the noise floor); split: the images it was scored on (test, val,
    train); scheme: how it was computed (paired and chosen on val, optimistic, across trials with a
    permutation test, ...); p_value: for across-trial splits.
    """

    kind: str
    text: str
    estimate: float | None = None
    interval: tuple[float, float] | None = None
    n: int | None = None
    split: str | None = None
    scheme: str | None = None
    p_value: float | None = None


@dataclass(frozen=True)
class Link:
    """A table cell that links somewhere (an MLflow run in its UI)."""

    text: str
    url: str

    def __str__(self) -> str:
        return self.text


@dataclass
class UiLinks:
    """The MLflow UI's addresses for one study: `runs` maps run ids to their pages (the renderers link every
    occurrence of those ids), `overview` is the study's experiment, parent run and registered model, and
    `served_by` says how to open the UI when the store is local ("" for a tracking server)."""

    base: str
    runs: dict[str, str] = field(default_factory=dict)
    overview: list[Link] = field(default_factory=list)
    served_by: str = ""

    def run(self, run_id: str) -> str | None:
        return self.runs.get(run_id)


@dataclass
class Table:
    """`digits`: decimals for a column of fractional numbers (default 3), so a column has one precision; a
    column of whole numbers is written whole."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    digits: dict[str, int] = field(default_factory=dict)


@dataclass
class FigureImage:
    filename: str
    title: str
    caption: str
    png: bytes


@dataclass
class Section:
    """One part of the report. `name` is how code and tests find it; its number is its place in the report's
    list of sections (`headings`), never written by hand."""

    name: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureImage] = field(default_factory=list)
    # Commands to copy, as (what it does, the command), each shown as a code block after the tables.
    code: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Report:
    """`next_steps`: lines below the first screen's headline (what more trials would answer); `ui`: the
    MLflow UI's addresses of the study's runs and model, None to link nothing; `confirmed`: the first screen's
    lines on the answer retrained on fresh seeds, or "not confirmed" (`study.report.confirmation`), right under
    the headline; `confirmation`: the same as plain data for findings.json."""

    study_name: str
    summary: list[str]
    headline: list[str]
    findings: list[Finding]
    sections: list[Section]
    next_steps: list[str] = field(default_factory=list)
    ui: UiLinks | None = None
    confirmed: list[str] = field(default_factory=list)
    confirmation: dict[str, Any] = field(default_factory=dict)

    @property
    def figures(self) -> list[FigureImage]:
        return [figure for section in self.sections for figure in section.figures]

    def section(self, name: str) -> Section:
        return next(s for s in self.sections if s.name == name)


def headings(sections: list[Section]) -> dict[str, str]:
    """Each section's heading by its name: its number, from its place in `sections` (from 1), then its title."""
    return {section.name: f"{number}. {section.title}" for number, section in enumerate(sections, 1)}
