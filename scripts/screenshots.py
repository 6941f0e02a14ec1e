"""Every picture in docs/ from one command, at the current code.

    python scripts/screenshots.py [--trials 12] [--epochs 2] [--keep FOLDER]

Runs a small study on the built-in dataset (`python -m study.run --trials 12 --epochs 2`, the
README's shapes-32px) in a fresh folder, writes its report, starts `mlflow ui` and
`optuna-dashboard` on free local ports, and takes with headless Chromium (driven over the DevTools
protocol, so that each picture waits for its page to finish drawing):

* docs/mlflow-experiment.png: the study's experiment, its runs sorted by val_accuracy;
* docs/mlflow-parent-run.png: the parent run and its description;
* docs/mlflow-trial.png: the best trial with batchnorm, its *Model metrics* tab (the momentum curve first);
* docs/optuna-dashboard.png: the study's page in optuna-dashboard;
* docs/optuna-dashboard-note.png: the note the study writes for it (study.describe);
* docs/report-screenshot.png: the report's first screen, at 1,100 px.

It then records in docs/screenshots.json the commit the pictures show, the command, the versions
and the study's counts; writes that commit into each picture's caption (its alt text) in README.md
and docs/*.md; and writes the counts into docs/ui.md's opening paragraph. It refuses to run while
a file the pictures show (`PICTURES`) has uncommitted changes: the recorded commit would not be
the code pictured. tests/test_screenshots.py fails once one of those files changes in a later
commit, until this command is run again. Needs `chromium` (Debian: apt-get install chromium) and
optuna-dashboard (pip install -e ".[dashboard]"). A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "screenshots.json"
COMMAND = "python scripts/screenshots.py"
# Each picture: what it shows (its caption), and the files whose code decides what it shows.
PICTURES = {
    "docs/mlflow-experiment.png": ("The study's experiment in the MLflow UI: one run per trial and per confirmation "
                                   "training, sorted by val_accuracy",
                                   ["study/tracking/tracker.py", "study/tracking/writer.py", "study/space.py",
                                    "study/contract.py"]),
    "docs/mlflow-parent-run.png": ("The parent run's description", ["study/tracking/summary.py", "study/contract.py"]),
    "docs/mlflow-trial.png": ("A trial's Model metrics: the momentum curve first",
                              ["study/tracking/writer.py", "study/tracking/runs.py", "study/contract.py",
                               "src/gaplab/curve.py"]),
    "docs/optuna-dashboard.png": ("The study in optuna-dashboard", ["study/describe.py", "study/space.py"]),
    "docs/optuna-dashboard-note.png": ("The study's note in optuna-dashboard: how to read its page",
                                       ["study/describe.py", "study/space.py", "study/importance.py"]),
    "docs/report-screenshot.png": ("The report's first screen", ["study/report", "study/importance.py"]),
}
# docs/ui.md's opening paragraph, between these, states the study the pictures come from.
STUDY_BEGIN, STUDY_END = "<!-- screenshots.py: study -->", "<!-- /screenshots.py -->"
CAPTION = re.compile(r"!\[([^\]]*?)(?: \(commit [0-9a-f]+\))?\]\(([^)\s]+)\)")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def depends_on() -> list[str]:
    return sorted({path for _, paths in PICTURES.values() for path in paths})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], url: str, log: Path) -> Iterator[None]:
    """`command` running until the block ends, once `url` answers."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"{command[0]} did not start; see {log}") from None
                time.sleep(1)
        yield
    finally:
        process.terminate()
        process.wait(30)


class WebSocket:
    """The client side of a WebSocket (RFC 6455) for the DevTools protocol: text messages, no extensions."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=120)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        if b" 101 " not in response.split(b"\r\n")[0]:
            raise SystemExit(f"Chromium refused the DevTools connection: {response[:200]!r}")

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise SystemExit("Chromium closed the DevTools connection")
            data += chunk
        return data

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 \
            else bytes([0x80 | 127]) + n.to_bytes(8, "big")
        self.sock.sendall(b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._exactly(2)
            n = second & 0x7F
            if n >= 126:
                n = int.from_bytes(self._exactly(2 if n == 126 else 8), "big")
            message += self._exactly(n)  # a server's frames are not masked
            if first & 0x80:
                return message.decode()


class Browser:
    """Headless Chromium, one page, driven over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.time() > deadline:
                raise SystemExit(f"{binary} did not open its DevTools port")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        self.socket = WebSocket(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        self.calls = 0

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            answer = json.loads(self.socket.receive())
            if answer.get("id") == self.calls:  # events in between are not needed
                if "error" in answer:
                    raise SystemExit(f"Chromium: {method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def shoot(self, url: str, path: Path, ready: str, width: int = 1400, height: int = 900,
              then: str | None = None) -> None:
        """Open `url` at `width`×`height`, wait until the JavaScript `ready` is true (then run `then`, and wait for
        the page to settle), and save the screenshot as `path`."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        deadline = time.time() + 120
        while not self.evaluate(f"document.readyState === 'complete' && !!({ready})"):
            if time.time() > deadline:
                raise SystemExit(f"{url} did not finish drawing ({ready}) within 120 s")
            time.sleep(0.5)
        if then:
            self.evaluate(then)
        time.sleep(2)  # animations and the last requests
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        print(f"wrote {path.relative_to(ROOT)}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def run_study(folder: Path, trials: int, epochs: int) -> list[str]:
    """The study and its report in `folder`; the command run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    command = ["python", "-m", "study.run", "--trials", str(trials), "--epochs", str(epochs)]
    for args in ([sys.executable, *command[1:]], [sys.executable, "-m", "study.report", "--out", str(folder)]):
        print("running", " ".join(args[1:]), flush=True)
        subprocess.run(args, cwd=folder, env=env, check=True)
    return command


def take(folder: Path, binary: str) -> dict:
    """Every picture, from the study in `folder`; what they show."""
    import mlflow
    import optuna

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    from study import contract

    # The study, not its confirmation's companion study (`--confirm`) on the same storage.
    (name,) = [n for n in optuna.get_all_study_names(storage) if not n.endswith(contract.CONFIRMATION_SUFFIX)]
    study = optuna.load_study(study_name=name, storage=storage)

    experiment = client.get_experiment_by_name(name).experiment_id
    parent = study.user_attrs[contract.PARENT_RUN_ID_ATTR]
    with_curve = [t for t in study.trials
                  if t.state.name == "COMPLETE" and contract.MOMENTUM_CURVE_ATTR in t.user_attrs]
    trial = max(with_curve, key=lambda t: t.value)
    states = [t.state.name for t in study.trials]
    mlflow_port, dashboard_port = free_port(), free_port()
    ml = f"http://127.0.0.1:{mlflow_port}"
    # MLflow's UI opens in its GenAI view unless told (docs/ui.md); its assistant panel hides a quarter of the page.
    view = "workflowType=machine_learning"
    close_assistant = ("[...document.querySelectorAll('button')].filter(b => /close/i.test(b.getAttribute('aria-label')"
                       " || '')).forEach(b => b.click())")
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    with serving(["mlflow", "ui", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--host", "127.0.0.1",
                  "--port", str(mlflow_port)], f"{ml}/health", folder / "mlflow-ui.log"), \
            serving(["optuna-dashboard", storage, "--host", "127.0.0.1", "--port", str(dashboard_port)],
                    f"http://127.0.0.1:{dashboard_port}/", folder / "optuna-dashboard.log"):
        browser = Browser(binary, profile)
        try:
            docs = ROOT / "docs"
            browser.shoot(f"{ml}/#/experiments/{experiment}/runs?{view}&orderByKey=metrics.%60val_accuracy%60"
                          "&orderByAsc=false", docs / "mlflow-experiment.png",
                          f"document.body.innerText.includes('trial-{len(states) - 1:03d}')", then=close_assistant)
            show_more = ("[...document.querySelectorAll('button')].filter(b => b.innerText.trim() === 'Show more')"
                         ".forEach(b => b.click())")
            browser.shoot(f"{ml}/#/experiments/{experiment}/runs/{parent}?{view}", docs / "mlflow-parent-run.png",
                          "document.body.innerText.includes('Best: trial')", then=f"{close_assistant}; {show_more}")
            browser.shoot(f"{ml}/#/experiments/{experiment}/runs/{trial.user_attrs[contract.RUN_ID_ATTR]}"
                          f"/model-metrics?{view}", docs / "mlflow-trial.png",
                          "document.querySelectorAll('.js-plotly-plot').length >= 3", then=close_assistant)
            dashboard = f"http://127.0.0.1:{dashboard_port}/dashboard/studies/{study._study_id}"
            browser.shoot(dashboard, docs / "optuna-dashboard.png",
                          "document.querySelectorAll('.js-plotly-plot').length >= 2")
            browser.shoot(f"{dashboard}/note", docs / "optuna-dashboard-note.png",
                          "document.body.innerText.includes('Reading this study')")
            browser.shoot((folder / name / "report.html").as_uri(), docs / "report-screenshot.png",
                          "document.body.innerText.length > 0", width=1100, height=1300)
        finally:
            browser.close()
            shutil.rmtree(profile, ignore_errors=True)
    return {"name": name, "trials": len(states), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"), "trial_pictured": trial.number}


def write_captions(short: str) -> None:
    """Put the commit into the alt text of every picture this command makes, wherever the docs show it."""
    names = {Path(path).name: caption for path, (caption, _) in PICTURES.items()}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()

        def caption(match: re.Match) -> str:
            name = Path(match[2]).name
            return f"![{names[name]} (commit {short})]({match[2]})" if name in names else match[0]

        changed = CAPTION.sub(caption, text)
        if changed != text:
            doc.write_text(changed)


def study_paragraph(record: dict) -> str:
    study = record["study"]
    return (f"The screenshots below come from a real {study['trials']}-trial study on the built-in dataset "
            f"(`{' '.join(record['study_command'])}`, study `{study['name']}`; {study['complete']} trials complete, "
            f"{study['pruned']} pruned, {study['failed']} failed), opened in headless Chromium against `mlflow ui` "
            f"(MLflow {record['versions']['mlflow']}) and `optuna-dashboard` {record['versions']['optuna-dashboard']}"
            f", by `{COMMAND}` at commit {record['commit'][:7]}.")


def write_study_paragraph(record: dict) -> None:
    ui = ROOT / "docs" / "ui.md"
    text = ui.read_text()
    start, end = text.index(STUDY_BEGIN) + len(STUDY_BEGIN), text.index(STUDY_END)
    ui.write_text(text[:start] + "\n" + textwrap.fill(study_paragraph(record), 100) + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run the study in this new folder and keep it")
    args = parser.parse_args(argv)
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        print("error: no chromium found; install it (Debian: apt-get install chromium).", file=sys.stderr)
        return 2
    if shutil.which("optuna-dashboard") is None:
        print("error: optuna-dashboard is not installed; pip install -e \".[dashboard]\".", file=sys.stderr)
        return 2
    dirty = git("status", "--porcelain", "--", *depends_on())
    if dirty:
        print(f"error: the pictures would show uncommitted code; commit or stash first:\n{dirty}", file=sys.stderr)
        return 2
    commit = git("rev-parse", "HEAD")
    if args.keep:
        args.keep.mkdir(parents=True)
        folder = args.keep.resolve()
    else:
        folder = Path(tempfile.mkdtemp(prefix="screenshots-"))
    try:
        command = run_study(folder, args.trials, args.epochs)
        study = take(folder, binary)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    record = {"commit": commit, "made": datetime.date.today().isoformat(), "command": COMMAND, "study_command": command,
              "study": study, "versions": {name: importlib.metadata.version(name)
                                           for name in ("mlflow", "optuna", "optuna-dashboard", "keras")},
              "pictures": {path: {"caption": caption, "depends_on": paths}
                           for path, (caption, paths) in PICTURES.items()}}
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    write_captions(commit[:7])
    write_study_paragraph(record)
    print(f"recorded commit {commit[:7]} in {RECORD.relative_to(ROOT)}; commit the pictures and the docs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
