"""Rendering a `Report`: Markdown, self-contained HTML (CSS inline, figures as base64 PNG), files.

Report text is plain; each format escapes it its own way (backslashes in Markdown, entities in HTML).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Any

from study.report.document import Link, Report


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        # Accuracies and gaps to 3 decimals (about the noise of a few hundred images); counts and horizons whole.
        return f"{value:.0f}" if abs(value) >= 10 or (value.is_integer() and abs(value) >= 2) else f"{value:.3f}"
    return str(value)


# Markdown's backslash escapes (CommonMark: any ASCII punctuation) keep text literal: no HTML
# tag, entity, table break, emphasis, link or heading; HTML entities would show as "&lt;".
_MARKDOWN_SPECIAL = "\\`*_[]#|<>&!"


def md_escape(text: str) -> str:
    """Plain text for Markdown: every special character backslash-escaped, one line."""
    text = " ".join(str(text).splitlines())
    return "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in text)


def _md_cell(value: Any) -> str:
    if isinstance(value, Link):
        return f"[{md_escape(value.text)}](<{value.url.replace('<', '%3C').replace('>', '%3E')}>)"
    return md_escape(_cell(value))


def to_markdown(report: Report) -> str:
    lines = [f"# Study report: {md_escape(report.study_name)}", ""]
    lines += [f"**{md_escape(line)}**  " for line in report.headline] + [""]
    lines += [f"- {md_escape(line)}" for line in report.summary] + [""]
    for section in report.sections:
        lines += [f"## {md_escape(section.title)}", ""]
        for paragraph in section.paragraphs:
            lines += [md_escape(paragraph), ""]
        if section.bullets:
            lines += [f"- {md_escape(b)}" for b in section.bullets] + [""]
        for table in section.tables:
            if table.caption:
                lines += [f"*{md_escape(table.caption)}*", ""]
            lines.append("| " + " | ".join(md_escape(c) for c in table.columns) + " |")
            lines.append("|" + "---|" * len(table.columns))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
            if not table.rows:
                lines.append("| " + " | ".join("–" for _ in table.columns) + " |")
            lines.append("")
        for figure in section.figures:
            lines += [f"### {md_escape(figure.title)}", "", f"![{md_escape(figure.title)}]({figure.filename})", "",
                      md_escape(figure.caption), ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #446;padding-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccd}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccd;padding:.25em .5em;
text-align:right}th{background:#eef}td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#f8f8fc}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%;height:auto;border:1px solid #eee}
.summary{color:#555}.findings li{margin:.4em 0}.scroll{overflow-x:auto;max-width:100%}
.headline{font-size:1.08em;background:#f3f5fb;border-left:4px solid #446;padding:.5em 1em;margin:1em 0}
.headline p{margin:.25em 0}
"""


def _html_cell(value: Any) -> str:
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.url, quote=True)}">{html.escape(value.text)}</a>'
    return html.escape(_cell(value), quote=True)


def to_findings_json(report: Report) -> str:
    """The findings as JSON (format in docs/report.md): the one source of the pages' finding sentences."""
    def number(value):
        return value if value is None or math.isfinite(value) else None

    findings = []
    for finding in report.findings:
        row = dataclasses.asdict(finding)
        row["estimate"], row["p_value"] = number(finding.estimate), number(finding.p_value)
        row["interval"] = list(finding.interval) if finding.interval else None
        findings.append(row)
    return json.dumps({"study": report.study_name, "headline": report.headline, "findings": findings},
                      indent=2, ensure_ascii=False) + "\n"


def to_html(report: Report) -> str:
    e = lambda text: html.escape(str(text), quote=True)  # noqa: E731
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>Study report: {e(report.study_name)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>Study report: {e(report.study_name)}</h1>", '<div class="headline">']
    parts += [f"<p>{e(line)}</p>" for line in report.headline] + ["</div>", '<ul class="summary">']
    parts += [f"<li>{e(line)}</li>" for line in report.summary] + ["</ul>"]
    for index, section in enumerate(report.sections, 1):
        parts.append(f'<section id="section-{index}"><h2>{e(section.title)}</h2>')
        parts += [f"<p>{e(p)}</p>" for p in section.paragraphs]
        if section.bullets:
            css = ' class="findings"' if index == 1 else ""
            parts += [f"<ul{css}>"] + [f"<li>{e(b)}</li>" for b in section.bullets] + ["</ul>"]
        for table in section.tables:
            parts.append('<div class="scroll"><table>')
            if table.caption:
                parts.append(f"<caption>{e(table.caption)}</caption>")
            parts.append("<thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in table.columns) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in table.rows]
            parts.append("</tbody></table></div>")
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(figure.title)}">'
                         f"<figcaption><strong>{e(figure.title)}.</strong> {e(figure.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(report: Report, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for figure in report.figures:
        path = folder / figure.filename
        path.write_bytes(figure.png)
        paths.append(path)
    for name, text in (("report.md", to_markdown(report)), ("report.html", to_html(report)),
                       ("findings.json", to_findings_json(report))):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
