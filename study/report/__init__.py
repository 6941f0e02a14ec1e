"""The study report: findings, tables and figures, every number read from the stored study.

    python -m study.report --study_name shapes-32px      # see study.report.command

`build_report(study, client)` is the analysis (pure: it reads the study and MLflow, writes
nothing); `to_markdown(report)` and `to_html(report)` render it. Modules, by what changes together:

* `views`: stored trials read into `TrialView`s (public parameter names, metrics, the momentum curve);
* `findings`, `paired`, `caveats`: the sentences (`paired`: from the momentum curves; `findings`: across trials);
* `stats`: the statistics they share;
* `confirmation`: the answer retrained on fresh seeds (`--confirm K`), read from the companion study;
* `tables`, `figures`: the report's tables and PNG figures;
* `links`: the MLflow UI's addresses of the study's runs and model; `next_steps`: the best setting as a
  command, and the trials a paired answer still needs;
* `document`: the `Report` as plain data; `render`: Markdown, HTML and the files;
* `build`: `build_report`; `command`: the command line.
"""

from study.report.build import build_report
from study.report.command import build_parser, main
from study.report.document import Report
from study.report.render import to_html, to_markdown, write_report

__all__ = ["Report", "build_parser", "build_report", "main", "to_html", "to_markdown", "write_report"]
