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

from study.report.document import Link, Report, Table, headings
from study.report.links import RUN_ID


def _cell(value: Any, digits: int | None = 3) -> str:
    """A cell as text: floats to `digits` decimals, or whole where `digits` is None; "–" where absent."""
    if value is None:
        return "–"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        text = f"{value:.{digits or 0}f}"
        return text.lstrip("-") if float(text) == 0 else text  # no "-0.000"
    return str(value)


def _column_digits(table: Table) -> list[int | None]:
    """One precision per column: None (whole numbers) for a column of counts, else the table's `digits` for it
    (default 3: accuracies and gaps to about the noise of a few hundred images)."""
    out = []
    for index, name in enumerate(table.columns):
        numbers = [row[index] for row in table.rows if index < len(row) and isinstance(row[index], float)
                   and math.isfinite(row[index])]
        whole = bool(numbers) and all(v.is_integer() for v in numbers) and max(abs(v) for v in numbers) >= 2
        out.append(None if whole else table.digits.get(name, 3))
    return out


def _sort_value(value: Any) -> str | None:
    """The number a sortable HTML table sorts a cell by; None for text (sorted as text) and absent values."""
    if isinstance(value, Link):
        value = value.text
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return repr(float(value)) if math.isfinite(value) else None
    try:
        return repr(float(str(value)))
    except ValueError:
        return None


def _split_run_ids(text: str, runs: dict[str, str]) -> list[tuple[str, str | None]]:
    """`text` as (piece, url) parts: every run id in `runs` its own part with its address, the rest with None."""
    parts, position = [], 0
    for found in RUN_ID.finditer(text):
        url = runs.get(found.group())
        if url:
            parts += [(text[position:found.start()], None), (found.group(), url)]
            position = found.end()
    return [*parts, (text[position:], None)]


# Markdown's backslash escapes (CommonMark: any ASCII punctuation) keep text literal: no HTML
# tag, entity, table break, emphasis, link or heading; HTML entities would show as "&lt;".
_MARKDOWN_SPECIAL = "\\`*_[]#|<>&!"


def md_escape(text: str) -> str:
    """Plain text for Markdown: every special character backslash-escaped, one line."""
    text = " ".join(str(text).splitlines())
    return "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in text)


def _md_url(url: str) -> str:
    """A link destination Markdown reads whole: the characters that would end or break it percent-encoded."""
    return "".join(f"%{ord(char):02X}" if char in " ()<>[]\\`" else char for char in url)


def _md_text(text: Any, runs: dict[str, str]) -> str:
    """Plain text for Markdown, with every known run id a link to its MLflow UI page."""
    return "".join(f"[{md_escape(piece)}]({_md_url(url)})" if url else md_escape(piece)
                   for piece, url in _split_run_ids(" ".join(str(text).splitlines()), runs))


def _md_cell(value: Any, digits: int | None, runs: dict[str, str]) -> str:
    if isinstance(value, Link):
        return f"[{md_escape(value.text)}]({_md_url(value.url)})"
    return _md_text(_cell(value, digits), runs)


def _ui_line(report: Report) -> tuple[list[Link], str]:
    """The MLflow UI's links to the study, and how to open the UI where the store is local."""
    ui = report.ui
    if ui is None or not ui.overview:
        return [], ""
    note = (f"Start the UI with {ui.served_by} (links assume {ui.base}; the report's --ui_url sets another)."
            if ui.served_by else "")
    return ui.overview, note


def to_markdown(report: Report) -> str:
    runs = report.ui.runs if report.ui else {}
    lines = [f"# Study report: {md_escape(report.study_name)}", ""]
    lines += [f"**{_md_text(line, runs)}**  " for line in report.headline] + [""]
    if report.confirmed:
        lines += [f"{_md_text(line, runs)}  " for line in report.confirmed] + [""]
    if report.next_steps:
        lines += [f"{_md_text(line, runs)}  " for line in report.next_steps] + [""]
    lines += [f"- {_md_text(line, runs)}" for line in report.summary]
    overview, note = _ui_line(report)
    if overview:
        lines.append("- In the MLflow UI: " + " · ".join(_md_cell(link, None, runs) for link in overview)
                     + (f". {md_escape(note)}" if note else ""))
    lines.append("")
    titles = headings(report.sections)
    for section in report.sections:
        lines += [f"## {md_escape(titles[section.name])}", ""]
        for paragraph in section.paragraphs:
            lines += [_md_text(paragraph, runs), ""]
        if section.bullets:
            lines += [f"- {_md_text(b, runs)}" for b in section.bullets] + [""]
        for table in section.tables:
            if table.caption:
                lines += [f"*{md_escape(table.caption)}*", ""]
            digits = _column_digits(table)
            lines.append("| " + " | ".join(md_escape(c) for c in table.columns) + " |")
            lines.append("|" + "---|" * len(table.columns))
            lines += ["| " + " | ".join(_md_cell(c, d, runs) for c, d in zip(row, digits)) + " |"
                      for row in table.rows]
            if not table.rows:
                lines.append("| " + " | ".join("–" for _ in table.columns) + " |")
            lines.append("")
        for what, command in section.code:
            fence = "````" if "```" in command else "```"
            lines += [_md_text(what, runs), "", f"{fence}bash", command, fence, ""]
        for figure in section.figures:
            lines += [f"### {md_escape(figure.title)}", "", f"![{md_escape(figure.title)}]({figure.filename})", "",
                      md_escape(figure.caption), ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #446;padding-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccd}
table{border-collapse:collapse;margin:.8em 0;font-size:.86em}th,td{border:1px solid #ccd;padding:.25em .35em;
text-align:right}td{white-space:nowrap}td:first-child,th:first-child{text-align:left}caption{text-align:left}
th{background:#eef;vertical-align:bottom;max-width:6.5em;overflow-wrap:anywhere}
tr:nth-child(even){background:#f8f8fc}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#dde}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%;height:auto;border:1px solid #eee}
.summary{color:#555}.findings li{margin:.4em 0}.scroll{overflow-x:auto;max-width:100%}
.headline{font-size:1.08em;background:#f3f5fb;border-left:4px solid #446;padding:.5em 1em;margin:1em 0}
.headline p{margin:.25em 0}.next{color:#444}
.confirmed{border-left:4px solid #6a6;padding:.2em 1em;margin:1em 0}.confirmed p{margin:.25em 0}
pre{background:#f3f3f6;border:1px solid #ddd;padding:.5em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
"""

# Click (or Enter on) a column's header to sort the table by it; again to reverse. Numbers sort by the value in
# data-v, text as text; empty cells ("–") go last either way. No network, no library.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.querySelectorAll("thead th");
  headers.forEach(function (th, column) {
    th.tabIndex = 0;
    th.title = "Sort by " + th.textContent;
    function key(row) {
      var cell = row.cells[column];
      if (!cell) return null;
      var value = cell.getAttribute("data-v");
      if (value !== null) return parseFloat(value);
      var text = cell.textContent.trim();
      return text === "" || text === "\\u2013" ? null : text;
    }
    function sort() {
      var descending = th.getAttribute("aria-sort") === "ascending";
      headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return x === null ? (y === null ? 0 : 1) : -1;
        var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return descending ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
    });
  });
});
"""


def _html_text(text: Any, runs: dict[str, str]) -> str:
    """Plain text for HTML, with every known run id a link to its MLflow UI page."""
    return "".join(f'<a href="{html.escape(url, quote=True)}">{html.escape(piece)}</a>' if url
                   else html.escape(piece, quote=True) for piece, url in _split_run_ids(str(text), runs))


def _html_cell(value: Any, digits: int | None, runs: dict[str, str]) -> str:
    number = _sort_value(value)
    attribute = f' data-v="{number}"' if number is not None else ""
    if isinstance(value, Link):
        return f'<td{attribute}><a href="{html.escape(value.url, quote=True)}">{html.escape(value.text)}</a></td>'
    return f"<td{attribute}>{_html_text(_cell(value, digits), runs)}</td>"


def to_findings_json(report: Report) -> str:
    """The findings as JSON (format in docs/report.md): the one source of the pages' finding sentences."""
    def number(value):
        return value if value is None or math.isfinite(value) else None

    findings = []
    for finding in report.findings:
        row = dataclasses.asdict(finding)
        row["estimate"], row["p_value"] = number(finding.estimate), number(finding.p_value)
        row["interval"] = [number(end) for end in finding.interval] if finding.interval else None
        findings.append(row)
    # allow_nan=False: NaN is not JSON, and a reader such as JSON.parse or jq would refuse the whole file.
    return json.dumps({"study": report.study_name, "headline": report.headline, "confirmed": report.confirmed,
                       "findings": findings, "confirmation": _finite_or_null(report.confirmation)},
                      indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _finite_or_null(value: Any) -> Any:
    """`value` (plain data) with every non-finite float written as None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def to_html(report: Report) -> str:
    e = lambda text: html.escape(str(text), quote=True)  # noqa: E731
    runs = report.ui.runs if report.ui else {}
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>Study report: {e(report.study_name)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>Study report: {e(report.study_name)}</h1>", '<div class="headline">']
    parts += [f"<p>{_html_text(line, runs)}</p>" for line in report.headline] + ["</div>"]
    if report.confirmed:
        parts += ['<div class="confirmed">'] + [f"<p>{_html_text(line, runs)}</p>" for line in report.confirmed]
        parts.append("</div>")
    parts += [f'<p class="next">{_html_text(line, runs)}</p>' for line in report.next_steps]
    parts += ['<ul class="summary">'] + [f"<li>{_html_text(line, runs)}</li>" for line in report.summary]
    overview, note = _ui_line(report)
    if overview:
        parts.append("<li>In the MLflow UI: " + " · ".join(
            f'<a href="{e(link.url)}">{e(link.text)}</a>' for link in overview) + (f". {e(note)}" if note else "")
            + "</li>")
    parts.append("</ul>")
    titles = headings(report.sections)
    for section in report.sections:
        parts.append(f'<section id="{e(section.name)}"><h2>{e(titles[section.name])}</h2>')
        parts += [f"<p>{_html_text(p, runs)}</p>" for p in section.paragraphs]
        if section.bullets:
            css = ' class="findings"' if section.name == "findings" else ""
            parts += [f"<ul{css}>"] + [f"<li>{_html_text(b, runs)}</li>" for b in section.bullets] + ["</ul>"]
        for table in section.tables:
            digits = _column_digits(table)
            parts.append('<div class="scroll"><table class="sortable">')
            if table.caption:
                parts.append(f"<caption>{e(table.caption)}</caption>")
            parts.append("<thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in table.columns) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(_html_cell(c, d, runs) for c, d in zip(row, digits)) + "</tr>"
                      for row in table.rows]
            parts.append("</tbody></table></div>")
        for what, command in section.code:
            parts += [f"<p>{_html_text(what, runs)}</p>", f"<pre><code>{e(command)}</code></pre>"]
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(figure.title)}">'
                         f"<figcaption><strong>{e(figure.title)}.</strong> {e(figure.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts += [f"<script>{SORT_SCRIPT}</script>", "</body>", "</html>", ""]
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
