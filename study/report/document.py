"""The report as plain data: sections of paragraphs, bullets, tables and figures.

Everything here is plain text and numbers; the renderers (`study.report.render`) do all escaping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SECTION_TITLES = (
    "1. Findings",
    "2. Seed presets",
    "3. Gap decomposition",
    "4. Parameter importance",
    "5. Figures",
    "6. Top trials",
    "7. Caveats",
)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class FigureImage:
    filename: str
    title: str
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureImage] = field(default_factory=list)


@dataclass
class Report:
    study_name: str
    summary: list[str]
    findings: list[str]
    sections: list[Section]

    @property
    def figures(self) -> list[FigureImage]:
        return [figure for section in self.sections for figure in section.figures]

    def section(self, title_prefix: str) -> Section:
        return next(s for s in self.sections if s.title.startswith(title_prefix))
