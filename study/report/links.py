"""Where the report's run ids, parent run, experiment and registered model open in the MLflow UI.

The UI's addresses are MLflow 3's hash routes (mlflow/server/js: `#/experiments/<id>`,
`#/experiments/<id>/runs/<run id>`, `#/models/<name>/versions/<version>`). The UI is the tracking
server itself where the study tracked to one (http/https); with a local store it is what `mlflow ui`
serves, by default at DEFAULT_UI_URL, or the address given with `--ui_url`. Only reads MLflow.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from study import contract
from study.commands import UsageError
from study.report.document import Link, UiLinks

# Where `mlflow ui` (and `mlflow server`) listens unless told otherwise.
DEFAULT_UI_URL = "http://127.0.0.1:5000"
# An MLflow run id: 32 lowercase hex digits (uuid4().hex).
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    """The UI's address: `ui_url` when given, else the tracking server, else `mlflow ui`'s default."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI_URL


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(run_id, safe='')}"


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{quote(str(experiment_id), safe='')}"


def model_version_url(base: str, name: str, version: str | int) -> str:
    return f"{base}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


def mlflow_links(study, client, run_ids: list[str], ui_url: str | None = None) -> UiLinks:
    """The addresses of the study's parent run, of each of `run_ids` and of the registered model's version
    under alias `best`, read through `client`; a run or model MLflow no longer has keeps its text unlinked. The
    UI is the one serving the store `client` reads (the study's recorded store unless --tracking_uri named
    another)."""
    tracking = str(getattr(client, "tracking_uri", "") or study.user_attrs.get(contract.TRACKING_URI_ATTR) or "")
    links = UiLinks(ui_base(tracking, ui_url))
    if not tracking.startswith(("http://", "https://")):
        links.served_by = (f"mlflow ui --backend-store-uri {tracking}" if tracking else "mlflow ui")
    parent = study.user_attrs.get(contract.PARENT_RUN_ID_ATTR)
    experiments: dict[str, str] = {}
    for run_id in dict.fromkeys(([parent] if parent else []) + [r for r in run_ids if r]):
        try:
            experiments[run_id] = client.get_run(run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a run the store no longer has keeps its id as plain text
            continue
        links.runs[run_id] = run_url(links.base, experiments[run_id], run_id)
    if parent in experiments:
        links.overview.append(Link(f"experiment {study.study_name}", experiment_url(links.base, experiments[parent])))
        links.overview.append(Link(f"parent run {parent}", links.runs[parent]))
    try:
        version = client.get_model_version_by_alias(study.study_name, contract.BEST_MODEL_ALIAS).version
    except Exception:  # noqa: BLE001 - no registered model (no complete trial yet, or registration failed)
        version = None
    if version is not None:
        links.overview.append(Link(f"registered model {study.study_name} version {version} "
                                   f"(alias {contract.BEST_MODEL_ALIAS})",
                                   model_version_url(links.base, study.study_name, version)))
    return links


def check_ui_url(ui_url: str) -> None:
    """UsageError unless `ui_url` is empty (the default) or an http(s) address."""
    if not ui_url:
        return
    parts = urlsplit(ui_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--ui_url={ui_url!r} is not an http(s) address; pass the MLflow UI's address, e.g. "
                         f"{DEFAULT_UI_URL}, or leave it empty for the default.")
