"""study.report on synthetic studies (no training) plus one slow end-to-end run.

The synthetic studies (tests/report_studies.py) are built with optuna.trial.create_trial and matching MLflow
runs in tmp_path, with the gap driven by a known parameter, so the findings can be checked against its numbers.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from study import contract
from tests.report_studies import (
    TEST_IMAGES,
    XSS,
    _curve,
    _distributions,
    _report,
    _run_cli,
    build_study,
    numbers,
    records,
)

REPO = Path(__file__).resolve().parents[1]
# The report's sections, by name and title, in their order: their numbers are their places here.
SECTIONS = {"findings": "Findings", "confirmation": "Confirmation on fresh seeds", "seed_presets": "Seed presets",
            "decomposition": "Gap decomposition", "importance": "Parameter importance", "figures": "Figures",
            "top_trials": "Top trials", "caveats": "Caveats"}
NUMBERED_TITLES = [(number, title) for number, title in enumerate(SECTIONS.values(), 1)]


def headings(text: str, pattern: str) -> list[tuple[int, str]]:
    """The numbered section headings in a page: (number, title) for each match of `pattern`'s "N. title" group."""
    return [(int(number), title) for number, title in re.findall(pattern, text, re.M)]


@pytest.fixture(scope="module")
def momentum_study(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("momentum"), "momentum", "momentum-study")


@pytest.fixture(scope="module")
def study_without_curves(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("old"), "momentum", "before-curves", curves=False)


@pytest.fixture(scope="module")
def dropout_study(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("dropout"), "dropout", "dropout <b>study</b>")


def _finding(report, kind):
    return next(f for f in report.findings if f.kind == kind)


def test_paired_findings_score_the_val_chosen_momentum_on_held_out_images(momentum_study):
    report = _report(momentum_study)
    kinds = [f.kind for f in report.findings]
    assert kinds[:4] == ["best_setting", "smallest_gaps", "recommendation", "headline_effect"]
    floor = _finding(report, "noise_floor")
    assert floor.n == TEST_IMAGES and floor.estimate == pytest.approx(0.024, abs=5e-4)
    assert numbers(floor.text)[:2] == [TEST_IMAGES, 2.4] and "held-out images" in floor.text
    # Val chooses the fix: PreciseBN recovers what stale statistics cost (val gain: median 0, mean above 0), ties
    # with the band on the median and wins on val's mean.
    recommendation = _finding(report, "recommendation")
    assert recommendation.split == "val" and recommendation.n == 12
    assert "re-estimate the batchnorm statistics after training (PreciseBN)" in recommendation.text
    # The headline is fixed in advance: complete trials (12), whatever the subgroups' intervals say.
    effect = _finding(report, "headline_effect")
    assert effect.split == "test" and effect.n == 12 and effect.interval == (0.0, pytest.approx(0.47, abs=0.003))
    # The sentence: 0.0 points (interval 0.0 to +47.0, n=12) over 12 trials, scored with PreciseBN, no clear effect.
    assert numbers(effect.text)[:5] == [0.0, 95, 0.0, 47.0, 12] and "n=12" in effect.text
    assert "PreciseBN" in effect.text and "no clear effect" in effect.text
    short, long = _finding(report, "secondary_short"), _finding(report, "secondary_long")
    assert short.n == long.n == 6 and "Holm's correction for 2 secondary lines" in short.text
    assert short.p_value == pytest.approx(2 / 32)
    # Every option against the own momentum, paired on test, and the band against PreciseBN.
    assert {k for k in kinds if k.startswith("option_")} == {"option_grid", "option_band", "option_precise",
                                                              "option_band_vs_precise"}
    assert _finding(report, "option_band_vs_precise").interval == (0.0, 0.0)
    settled = _finding(report, "settled")
    assert (settled.estimate, settled.n) == (0.5, 14) and numbers(settled.text)[:2] == [7, 14]
    # Momentum's part of the gap: one finding, worded as what shrinks.
    part = _finding(report, "gap_part")
    assert part.estimate == pytest.approx(0.235, abs=5e-4) and part.n == 14
    assert re.search(r"test gap shrinks by 23\.5 points", part.text)
    assert re.search(r"the mode gap \(.*\) shrinks by 24\.0 points", part.text)
    part = part.text
    assert "gap_part_split" not in kinds and not any("explains" in f.text for f in report.findings)
    rest = _finding(report, "across_trial_split")
    assert rest.text.startswith("No parameter clearly goes with") and rest.p_value > 0.05
    band = _finding(report, "band")
    assert band.split == "val" and band.interval == (0.0, 0.9) and band.n == 14
    # For 50–400 steps the band is 0–0.9, 3 in 4 of 14 trials; left out in turn, +23.5 points against the own momentum.
    assert numbers(band.text)[:7] == [50, 400, 0, 0.9, 3, 4, 14] and "+23.5 points" in band.text
    keep = _finding(report, "keep_batchnorm")
    # Drop batchnorm: trial 2 (batchnorm, PreciseBN) val 0.918 against trial 0 (none) 0.920, within the noise.
    assert keep.text.startswith("Drop batchnorm") and keep.n == 2
    assert numbers(keep.text)[:4] == [2, 0.918, 0, 0.920] and "may be noise" in keep.text
    assert report.headline[0].startswith("What to do") and report.headline[0].endswith(
        "re-estimate the batchnorm statistics after training (PreciseBN).")
    assert report.headline[1:3] == [effect.text, keep.text]
    assert "TPE's trials are not independent draws" in report.headline[3]
    assert not any("moves" in f.text for f in report.findings)
    caveats = report.section("caveats").bullets
    pruned = next(line for line in caveats if line.startswith("The pruner stopped"))
    # 2 of 2 pruned trials (14, 15) scored at or above the median of the 12 complete ones at their best momentum.
    assert numbers(pruned)[:5] == [2, 2, 14, 15, 12]
    assert not any("have no momentum curve" in line for line in caveats)
    figure = next(f for f in report.figures if f.filename == "momentum_curves.png")
    assert figure.png.startswith(b"\x89PNG")
    decomposition = records(report.section("decomposition").tables[0])
    seed_bn = next(row for row in decomposition if row["preset"] == "seed-bn")
    # Chosen on val: 0.9; held out, 47 points better there than at its own momentum 0.99.
    assert seed_bn["bn_momentum"] == 0.99 and seed_bn["val-chosen momentum"] == 0.9
    assert seed_bn["test at chosen momentum"] - seed_bn["test at own momentum"] == pytest.approx(0.47, abs=0.003)


def test_a_study_without_curves_says_why_and_compares_across_trials(study_without_curves):
    report = _report(study_without_curves)
    texts = [f.text for f in report.findings]
    missing = next(text for text in texts if text.startswith("Paired momentum effect: not measured."))
    assert numbers(missing)[:2] == [14, 14] and contract.MOMENTUM_CURVE_ATTR in missing
    assert "momentum_curves.png" not in {f.filename for f in report.figures}
    left_out = next(line for line in report.section("caveats").bullets
                    if line.startswith("Figure 'Momentum curves' is left out"))
    # It points to the findings by their heading, numbered by the section's place.
    assert "no finished batchnorm trial has a momentum curve" in left_out
    assert f"(see {list(SECTIONS).index('findings') + 1}. {SECTIONS['findings']})" in left_out
    split = _finding(report, "across_trial_split")
    # 6 searched high-momentum trials + seed-bn (0.99) at gap 0.5; 6 low + seed-final (0.8) at 0.03: a perfect
    # separation, rare among shuffles even after paying for 9 candidate splits.
    assert split.text.startswith("Higher bn_momentum goes with a larger gap (across trials"), split.text
    # bn_momentum ≥ 0.9: median 0.50 (n=7); below: 0.03 (n=7); the largest of 9 candidate splits.
    at_or_above = split.text[split.text.index("≥"):]
    assert numbers(at_or_above)[:6] == [0.9, 0.5, 7, 0.9, 0.03, 7] and numbers(at_or_above)[-1] == 9, split.text
    assert split.p_value < 0.01 and split.n == 14
    horizon = _finding(report, "across_trial_horizon").text
    # Horizon below 3: median gap 0.50 (n=7); at 3 or more: 0.03 (n=7).
    assert numbers(horizon[horizon.index("below"):]) == [3, 0.5, 7, 3, 0.03, 7], horizon
    momentum = _finding(report, "across_trial_momentum").text
    assert momentum.startswith("High bn_momentum with short training goes with a wider gap"), momentum
    assert re.search(r"bn_momentum ≥ 0\.95 and at most 50 steps", momentum), momentum
    assert not any(" moves " in text for text in texts)
    recal = _finding(report, "recalibration").text
    assert recal.startswith("PreciseBN re-estimates")
    high = recal[recal.index("for trials with bn_momentum ≥ 0.95"):]
    assert numbers(high)[:5] == [0.95, 40.0, 95, 40.0, 40.0] and "n=7" in high
    # Best: the highest val among complete trials.
    specs = study_without_curves["specs"]
    best = max((i for i, s in enumerate(specs) if s["state"] == TrialState.COMPLETE), key=lambda i: specs[i]["val"])
    assert texts[0].startswith(f"Best setting: trial {best} ")
    val, test = numbers(texts[0][texts[0].index("val accuracy"):])[:2]
    assert (val, test) == (round(specs[best]["val"], 3), round(specs[best]["test"], 3)), texts[0]
    assert report.headline[0].startswith("What goes with a smaller gap (across trials, not paired)")
    assert split.text in report.headline[0]


def test_curves_without_held_out_accuracy_are_labelled_optimistic_and_claim_nothing(tmp_path):
    report = _report(build_study(tmp_path / "old", "momentum", "before-test-accuracy", held_out=False))
    paired = [f for f in report.findings if f.kind.startswith(("paired_effect", "gap_part"))]
    assert paired and all(f.interval is None and f.split == "val" for f in paired)
    assert all("optimistic: chosen and scored on val" in f.text or f.kind == "gap_part_split" for f in paired)
    assert not any(f.kind in ("band", "noise_floor", "settled") for f in report.findings)
    assert not any("would have scored" in f.text or "explains" in f.text for f in report.findings)
    assert report.headline[0].startswith("What closes the gap: unknown") and "predate held-out" in report.headline[0]


def test_findings_name_dropout_when_dropout_drives_the_gap(dropout_study):
    report = _report(dropout_study)
    # Every trial ran 1000 steps at bn_momentum <= 0.99: settled, so momentum gains nothing.
    effect = _finding(report, "option_grid")
    assert effect.estimate == 0 and "scored 0.0 points on held-out images" in effect.text
    assert "no clear effect: the interval includes 0" in effect.text
    assert _finding(report, "settled").text.startswith("14 of 14 trials had settled at their own momentum")
    rest = _finding(report, "across_trial_split")
    assert rest.text.startswith("Higher dropout goes with a smaller rest of the test gap (across trials"), rest.text
    assert rest.p_value < 0.05
    # The sentence's numbers are the medians of the held-out gaps put in (momentum's part is 0), on each side.
    match = re.search(r"dropout ≥ ([0-9.]+) had a median of ([0-9.]+) \(n=(\d+)\), with dropout < \1 "
                      r"([0-9.]+) \(n=(\d+)\)", rest.text)
    assert match, rest.text
    threshold = float(match[1])
    specs = [s for s in dropout_study["specs"]]
    high = [s["gap"] + 0.01 for s in specs if s["dropout"] >= threshold]
    low = [s["gap"] + 0.01 for s in specs if s["dropout"] < threshold]
    assert (float(match[2]), int(match[3])) == (pytest.approx(statistics.median(high), abs=0.006), len(high))
    assert (float(match[4]), int(match[5])) == (pytest.approx(statistics.median(low), abs=0.006), len(low))
    # Only momentum 0.999 (1000 steps x 0.001 = 1) is stale: the band is every grid momentum up to 0.995.
    assert _finding(report, "band").interval == (0.0, 0.995)
    assert not any("pruner stopped" in line for line in report.section("caveats").bullets)


def test_tables_carry_the_stored_numbers(momentum_study):
    from gaplab.config import SEED_RESULTS

    report = _report(momentum_study)
    seed = report.section("seed_presets").tables[0]
    ours = [column for column in seed.columns if column.endswith(" here")]
    theirs = [column for column in seed.columns if column.startswith("seed's ")]
    assert len(ours) == len(theirs) == 3
    assert [row["preset"] for row in records(seed)] == list(SEED_RESULTS)
    specs = momentum_study["specs"]
    for row in records(seed):
        spec = next(s for s in specs if s.get("preset") == row["preset"])
        assert [row[column] for column in ours] == [spec["train"], spec["val"], spec["test"]]
        assert tuple(row[column] for column in theirs) == SEED_RESULTS[row["preset"]]
    decomposition = records(report.section("decomposition").tables[0])
    assert len(decomposition) == len(specs)  # the failed trial has no metrics
    fourth = next(row for row in decomposition if str(row["trial"]) == "4")
    assert (fourth["gap"], fourth["val"]) == (specs[4]["gap"], specs[4]["val"])
    assert {"val-chosen momentum", "test at own momentum", "test at chosen momentum", "test recalibrated"} <= set(
        decomposition[0])
    # PreciseBN scores like the settled momenta: the fixture's best val less one point, in whole test images.
    best_val = max(_curve(specs[4], "momentum")["val_accuracy"])
    assert fourth["test recalibrated"] == round((best_val - 0.01) * TEST_IMAGES) / TEST_IMAGES
    top = records(report.section("top_trials").tables[0])
    assert re.fullmatch(r"[0-9a-f]{32}", str(top[0]["MLflow run id"]))
    importance = report.section("importance")
    assert "fANOVA" in importance.paragraphs[0]
    assert {row["parameter"] for row in records(importance.tables[0])} == {"bn_momentum", "batch_size", "dropout",
                                                                        "depth"}
    # Beside the study's, the importances optuna-dashboard shows: its evaluator, its trials, its numbers.
    import optuna

    from study.importance import MIN_IMPORTANCE_TRIALS, dashboard_importances, param_importances

    study = optuna.load_study(study_name="momentum-study", storage=momentum_study["storage"])
    ours, shown = param_importances(study), dashboard_importances(study)
    complete = sum(spec["state"] == optuna.trial.TrialState.COMPLETE for spec in momentum_study["specs"])
    assert shown["trials"] == complete
    assert f"PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, defaults), Optuna's default, over the " \
           f"{complete} complete trials' val_accuracy" in importance.paragraphs[1]
    by_name = {row["parameter"]: row for row in records(importance.tables[0])}
    assert by_name["bn_momentum"]["in optuna-dashboard"] == "one_minus_bn_momentum_permille"
    for name, score in shown["val_accuracy"].items():
        assert by_name[name]["val_accuracy (optuna-dashboard)"] == score
        assert by_name[name]["val_accuracy"] == ours["val_accuracy"][name]
    # Both counts are below the minimum here, and each is stated in its warning.
    warnings = [p for p in importance.paragraphs if p.startswith("**Too few trials")]
    assert ours["trials"] < MIN_IMPORTANCE_TRIALS and complete < MIN_IMPORTANCE_TRIALS
    assert warnings == [
        f"**Too few trials for {whose} importances**: {n}, below {MIN_IMPORTANCE_TRIALS}. With fewer, the ranking "
        "changes from one study to the next (benchmarks/importance_trials.py): a hint, not a finding."
        for whose, n in (("the study's", ours["trials"]), ("optuna-dashboard's", complete))]
    caveats = "\n".join(report.section("caveats").bullets)
    assert "complete, 2 pruned, 1 failed" in caveats
    assert "re-run the best setting" in caveats
    assert {f.filename for f in report.figures} == {"momentum_curves.png", "momentum_band.png", "params.png",
                                                   "ema_horizon.png", "momentum_batch.png", "parallel.png",
                                                   "learning_curves.png", "confusion_matrix.png"}
    # One count of trials, the same in the summary and the caveats.
    counts = next(line for line in report.summary if line.startswith("Trials: "))
    assert numbers(counts) == [17, 14, 2, 1] and "2 pruned" in counts
    assert report.section("caveats").bullets[0] == counts + "."
    assert all(f.png.startswith(b"\x89PNG") for f in report.figures)


def test_cli_writes_report_logs_it_and_leaves_the_study_unchanged(momentum_study, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    db = momentum_study["root"] / "optuna.db"

    def snapshot():
        study = optuna.load_study(study_name=momentum_study["name"], storage=momentum_study["storage"])
        return [(t.number, t.state, t.params, t.user_attrs, t.value) for t in study.trials], study.user_attrs

    before, before_hash = snapshot(), hashlib.sha256(db.read_bytes()).hexdigest()
    assert _run_cli(momentum_study, tmp_path / "out", "--study_name", "") == 0  # '' = the only study
    assert snapshot() == before
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before_hash
    folder = tmp_path / "out" / "momentum-study"
    for name in ("report.md", "report.html", "params.png", "ema_horizon.png", "confusion_matrix.png"):
        assert (folder / name).is_file(), name
    markdown = (folder / "report.md").read_text()
    assert headings(markdown, r"^## (\d+)\. (.+)$") == NUMBERED_TITLES
    client = MlflowClient(momentum_study["tracking"])
    logged = {a.path for a in client.list_artifacts(momentum_study["parent"], "report")}
    assert {"report/report.html", "report/report.md", "report/params.png"} <= logged
    assert client.get_run(momentum_study["parent"]).info.status == contract.RUN_STATUS[TrialState.COMPLETE.name]


def test_under_mlflow_run_the_report_also_fills_the_launchers_run(momentum_study, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    # `mlflow run . -e report` creates a run of its own and passes it as MLFLOW_RUN_ID.
    client = MlflowClient(momentum_study["tracking"])
    experiment = client.get_experiment_by_name(momentum_study["name"]).experiment_id
    launcher = client.create_run(experiment, run_name="report").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    assert _run_cli(momentum_study, tmp_path / "out") == 0
    for run in (launcher, momentum_study["parent"]):
        assert {"report/report.html", "report/report.md"} <= {a.path for a in client.list_artifacts(run, "report")}


def test_unknown_study_exits_2_listing_studies(momentum_study, tmp_path, capsys):
    assert _run_cli(momentum_study, tmp_path / "out", "--study_name", "nope") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and "'momentum-study'" in err
    assert not (tmp_path / "out").exists()


def test_missing_storage_is_refused_not_created(tmp_path, capsys):
    from study.report import main

    db = tmp_path / "none" / "optuna.db"
    (tmp_path / "none").mkdir()
    assert main(["--storage", f"sqlite:///{db}", "--tracking_uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "does not exist" in capsys.readouterr().err and not db.exists()


def test_a_storage_without_studies_says_so(tmp_path, capsys):
    import optuna

    from study.report import main

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.delete_study(study_name=optuna.create_study(storage=storage).study_name, storage=storage)
    assert main(["--storage", storage, "--tracking_uri", f"sqlite:///{tmp_path}/m.db", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no study; run python -m study.run first" in err and "--study_name" not in err


def test_several_studies_need_a_name(tmp_path, capsys):
    first = build_study(tmp_path / "store", "momentum", "first")
    build_study(tmp_path / "store", "dropout", "second")
    assert _run_cli(first, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "'first'" in err and "'second'" in err
    assert _run_cli(first, tmp_path / "out", "--study-name", "second") == 0


def test_user_data_is_escaped(dropout_study, tmp_path):
    from study.report import to_html, to_markdown

    report = _report(dropout_study)
    page = to_html(report)
    assert XSS not in page and "<b>study</b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "dropout &lt;b&gt;study&lt;/b&gt;" in page
    from study.report.render import SORT_SCRIPT

    # The one script is the report's own table sorter: no user text runs.
    assert page.lower().count("<script") == 1 and f"<script>{SORT_SCRIPT}</script>" in page
    assert _unbalanced_tags(page) == []
    markdown = to_markdown(report)
    # Markdown escapes with backslashes: no raw tag, and no HTML entity shown as literal text.
    assert re.search(r"(?<!\\)[<>]", markdown) is None
    assert "\\<img src=x onerror=alert(1)\\>" in markdown and "&lt;" not in markdown
    assert "dog\\|pipe" in markdown and "dropout \\<b\\>study\\</b\\>" in markdown
    assert "dropout \\< 0.325" in markdown  # the findings' split
    tables = _markdown_tables(markdown)
    assert len(tables) == 4 and sum(len(rows) for _, rows in tables) > 20  # seed, decomposition, importance, top
    assert _broken_rows(markdown) == []


def _cells(line: str) -> int:
    """Cells of a Markdown table line: its unescaped pipes, less one."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def _markdown_tables(markdown: str) -> list[tuple[str, list[str]]]:
    """Each table's header and body rows: the lines starting with '|' after a header and a '|---|' line."""
    tables, lines = [], markdown.splitlines()
    for index, line in enumerate(lines[:-1]):
        if line.startswith("|") and lines[index + 1].startswith("|---|"):
            body = []
            for row in lines[index + 2:]:
                if not row.startswith("|"):
                    break
                body.append(row)
            tables.append((line, body))
    return tables


def _broken_rows(markdown: str) -> list[str]:
    """Body rows whose cell count differs from their table's header."""
    return [row for header, rows in _markdown_tables(markdown) for row in rows if _cells(row) != _cells(header)]


def test_the_table_check_finds_a_broken_row():
    table = "| trial | class |\n|---|---|\n| 1 | cat |\n| 2 | dog|pipe |\n| 3 | dog\\|pipe |\n"
    assert _broken_rows(table) == ["| 2 | dog|pipe |"]


def _unbalanced_tags(page: str) -> list[str]:
    """Tags closed out of order or never closed (void elements aside): [] for well-formed HTML."""
    from html.parser import HTMLParser

    void = {"meta", "img", "br", "hr", "link", "input"}

    class Checker(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack: list[str] = []
            self.errors: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag not in void:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if self.stack and self.stack[-1] == tag:
                self.stack.pop()
            else:
                self.errors.append(tag)

    checker = Checker()
    checker.feed(page)
    return checker.errors + checker.stack


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _chromium_run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_html_renders_in_headless_chromium(dropout_study, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary found (apt-get install chromium)")
    assert _run_cli(dropout_study, tmp_path / "out", "--study_name", dropout_study["name"]) == 0
    page = next((tmp_path / "out").glob("*/report.html"))
    dom = _chromium_run(binary, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert headings(dom.stdout, r"<h2>(\d+)\. ([^<]+)</h2>") == NUMBERED_TITLES
    # The hostile class name is text in the DOM, never an element.
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom.stdout and "onerror=alert(1)>" not in dom.stdout.replace(
        "&gt;", "")
    assert dom.stdout.count("<img ") == 8  # the eight figures, nothing else
    for problem in ("Uncaught", "CONSOLE(", ":ERROR:CONSOLE"):
        assert problem not in dom.stderr, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    result = _chromium_run(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,4000",
                           "--hide-scrollbars", page.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
    assert "Uncaught" not in result.stderr


@pytest.mark.slow
def test_end_to_end_study_then_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    study = subprocess.run([sys.executable, "-m", "study.run", "--confirm", "0",
                            "--trials", "5", "--epochs", "1", "--image_size", "16"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert study.returncode == 0, study.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "study.report"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    folder = next((tmp_path / "reports").iterdir())
    markdown = (folder / "report.md").read_text()
    page = (folder / "report.html").read_text()
    assert headings(markdown, r"^## (\d+)\. (.+)$") == headings(page, r"<h2>(\d+)\. ([^<]+)</h2>") == NUMBERED_TITLES
    import optuna
    from mlflow.tracking import MlflowClient

    stored = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    parent = stored.user_attrs[contract.PARENT_RUN_ID_ATTR]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent, "report")}
    assert client.get_run(parent).info.status == contract.RUN_STATUS[TrialState.COMPLETE.name]


def test_no_module_of_the_report_loads_a_deep_learning_backend():
    # The report only reads stored numbers; importing TensorFlow would add ~10 s to every call. Every module of
    # the package, each import at its top (a function-local import would slip past this test).
    code = ("import importlib, pkgutil, sys, study.report\n"
            "for module in pkgutil.iter_modules(study.report.__path__):\n"
            "    if module.name != '__main__':  # it runs the command\n"
            "        importlib.import_module(f'study.report.{module.name}')\n"
            "print(len(list(pkgutil.iter_modules(study.report.__path__))) > 10, "
            "sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True []"


def _bn_trial(number: int, momentum: float, steps: int, gap: float, mode_gap: float):
    from study.report.views import TrialView

    return TrialView(number, TrialState.COMPLETE, None, True, {"bn_momentum": momentum}, {"steps": steps, "gap": gap,
                     "mode_gap": mode_gap}, 0.5, {})


@pytest.mark.parametrize("stale_gap, stale_mode, numbers, expected", [
    (0.40, 0.38, "0.40 and mode gap of 0.38", "High bn_momentum with short training goes with a wider gap"),
    # Overfitting gives every trial a gap; momentum shows only in the part stale statistics cause.
    (0.21, 0.20, "0.21 and mode gap of 0.20",
     "High bn_momentum with short training goes with a wider mode gap, though the whole gap differs by less"),
    (0.20, -0.001, "0.20 and mode gap of 0.00", "bn_momentum: trials with"),  # printed 0.00, never -0.00
])
def test_momentum_finding_judges_gap_and_mode_gap(stale_gap, stale_mode, numbers, expected):
    from study.report.findings import momentum_finding

    stale = [_bn_trial(i, 0.99, 100, stale_gap, stale_mode) for i in range(5)]  # horizon 1
    low = [_bn_trial(5 + i, 0.8, 100, 0.19, 0.0) for i in range(5)]
    settled = [_bn_trial(10 + i, 0.99, 1000, 0.17, 0.01) for i in range(5)]  # horizon 10
    # Fewer than 5 a side: nothing is said to go with momentum.
    assert momentum_finding(stale[:4] + low + settled).endswith("so what momentum goes with is inconclusive. For "
                                                                "reference, bn_momentum ≥ 0.95 trials with enough "
                                                                "steps to settle had a median gap of 0.17 and mode gap "
                                                                "of 0.01 (n=5); trials with bn_momentum < 0.9 had "
                                                                "0.19 and 0.00 (n=5).")
    text = momentum_finding(stale + low + settled)
    assert text.startswith(expected), text
    assert (f"at most 100 steps, too few for the moving statistics to settle (steps × (1 − bn_momentum) < 3), "
            f"had a median gap of {numbers} (n=5); "
            "trials with bn_momentum < 0.9 had 0.19 and 0.00 (n=5)") in text
    if expected.startswith("bn_momentum"):
        assert text.endswith("no effect of momentum is shown (inconclusive).")
    else:
        assert text.endswith("enough steps to settle had a median gap of 0.17 and mode gap of 0.01 (n=5).")


def test_a_study_that_is_still_running_is_reported_with_a_caveat(tmp_path):
    import optuna

    info = build_study(tmp_path / "running", "momentum", "running-study")
    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    study.ask()  # a trial in progress, as another process leaves it
    study.enqueue_trial({"batch_size": 32})
    report = _report(info)
    caveats = report.section("caveats").bullets
    finished = len(info["specs"])
    # All trials, then complete, pruned, failed, running, waiting.
    assert numbers(caveats[0]) == [finished + 3, finished - 2, 2, 1, 1, 1]
    assert "1 running" in caveats[0] and "1 waiting" in caveats[0]
    assert any("still running" in line and "rerun the report" in line for line in caveats), caveats
    # Trials without metrics change no number: the findings are those of the finished trials.
    assert _finding(report, "gap_part").n == 14


def test_an_interrupted_study_is_not_called_running(tmp_path):
    import optuna

    info = build_study(tmp_path / "interrupted", "momentum", "interrupted-study")
    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    study.enqueue_trial({"batch_size": 32})  # queued, and no process runs the study
    caveats = _report(info).section("caveats").bullets
    assert caveats[0].endswith("1 failed, 1 waiting).")
    assert not any("still running" in line for line in caveats)
    assert any(line.startswith("1 trial(s) are queued but none is running: the study was interrupted")
               for line in caveats)


def test_a_best_value_at_the_edge_of_its_range_asks_to_widen_it():
    from study.report.caveats import caveats
    from study.report.views import TrialView

    params = {"bn_momentum": 0.999, "batch_size": 8, "dropout": 0.3, "depth": 5}
    best = TrialView(7, TrialState.COMPLETE, None, True, params, {}, 0.9, _distributions())
    edges = [line for line in caveats([best], best, "0", []) if "edge" in line]
    found = [re.search(r"(\w+) = ([0-9.]+) is at the (lower|upper) edge of its search range \(([^)]*)\)", line)
             for line in edges]
    assert [match.groups() for match in found] == [("bn_momentum", "0.999", "upper", "0.5 to 0.999"),
                                                   ("batch_size", "8", "lower", "8, 16, 32, 64, 128, 256"),
                                                   ("depth", "5", "upper", "1 to 5")]
    assert all("widen the range" in line for line in edges)


def _curve_trial(number: int, raw: dict, steps: float = 100.0):
    from study.report.views import TrialView

    return TrialView(number, TrialState.COMPLETE, None, True, {"bn_momentum": raw["own_momentum"]},
                     {"gap": 0.1, "steps": steps, "train_accuracy": 0.9, contract.MOMENTUM_CURVE_ATTR: raw}, 0.8, {})


def test_an_unreadable_curve_is_named_not_used():
    from study.report import paired
    from study.report.views import MomentumCurve

    good = _curve({"train": 0.9, "bn_momentum": 0.99, "steps": 1000, "gap": 0.1, "mode_gap": 0.0,
                   "state": TrialState.COMPLETE}, "dropout")
    curve = MomentumCurve.read(good)
    assert curve.momentum[curve.own] == 0.99 and len(curve.test_accuracy) == len(curve.momentum)
    broken = {**good, "gap": good["gap"][:-1]}
    with pytest.raises(ValueError, match="different lengths"):
        MomentumCurve.read(broken)
    missing_point = {**good, "test_accuracy": [*good["test_accuracy"][:-1], float("nan")]}
    with pytest.raises(ValueError, match="test_accuracy is not a list of finite numbers"):
        MomentumCurve.read(missing_point)
    views = [_curve_trial(n, raw) for n, raw in enumerate((good, broken, missing_point))]
    assert [v.number for v in paired.with_curves(views)] == [0]
    assert paired.missing_curves(views) == (
        "Of 3 finished batchnorm trials, 2 have a curve that cannot be read and are skipped (trial 1: its lists are "
        "empty or of different lengths; trial 2: test_accuracy is not a list of finite numbers).")


def test_fewer_than_six_trials_with_curves_state_no_paired_effect():
    from study.report import paired, stats

    raw = _curve({"train": 0.9, "bn_momentum": 0.999, "steps": 100, "gap": 0.1, "mode_gap": 0.0,
                  "state": TrialState.COMPLETE}, "dropout")
    views = [_curve_trial(n, raw) for n in range(5)]
    found = paired.paired_findings(paired.with_curves(views), views)
    assert numbers(found[0].text) == [5, 6] and "no paired effect is stated" in found[0].text
    assert not any(f.interval for f in found)
    # A sixth trial: the effects are stated, with their intervals (stale at 0.999 with 100 steps: 75 of 379 images).
    views.append(_curve_trial(5, raw))
    effect = next(f for f in paired.paired_findings(paired.with_curves(views), views) if f.kind == "option_grid")
    assert effect.n == 6 and effect.interval[0] > 0.15 and "scored +19.8 points on held-out images" in effect.text
    # Below 6 values no interval is given (findings.json would hold NaN), and the sentence says why.
    few = stats.median_interval([0.1, 0.2, 0.3])
    assert paired.interval(few) is None
    assert numbers(paired.interval_text(few)) == [3, 95] and "too few trials" in paired.interval_text(few)


def test_curves_with_test_accuracy_but_not_the_newer_fields_claim_only_what_they_can():
    """Curves from the gaplab that first scored test per momentum: no PreciseBN on test, no image counts."""
    from study.report import build, paired

    raw = _curve({"train": 0.9, "bn_momentum": 0.999, "steps": 100, "gap": 0.1, "mode_gap": 0.0,
                  "state": TrialState.COMPLETE}, "dropout")
    for key in ("test_images", "val_images", "test_differs_from_own"):
        del raw[key]
    raw["recalibrated"] = {k: v for k, v in raw["recalibrated"].items() if k not in ("test_accuracy",
                                                                                   "test_differs_from_own")}
    views = [_curve_trial(n, raw) for n in range(8)]
    found = paired.paired_findings(paired.with_curves(views), views)
    by_kind = {f.kind: f for f in found}
    assert by_kind["headline_effect"].text.startswith("Held-out effect of a fix: not measured. These curves were "
                                                      "recorded by an older gaplab")
    assert by_kind["headline_effect"].interval is None
    assert by_kind["recommendation"].text.startswith("Recommendation: keep the trials' own bn_momentum.")
    assert by_kind["noise_floor"].estimate is None and "settled" not in by_kind
    assert by_kind["band"].text.endswith("so the noise of the val-best is unknown.")
    assert by_kind["option_grid"].n == 8 and "option_precise" not in by_kind
    screen = build.headline(found, True, titles={})
    assert by_kind["headline_effect"].text in screen
    assert not any("nan" in line or "n/a" in line for line in screen)


def test_a_momentum_range_of_one_value_is_written_once():
    from study.report.paired import _momenta

    assert _momenta([0.8, 0.8]) == "0.8"
    assert _momenta([0.9, 0.5]) == "0.5–0.9"


def test_the_seed_caveat_reads_the_study_settings_and_falls_back_to_the_parent_run(tmp_path):
    import optuna

    from study import contract

    info = build_study(tmp_path / "s", "momentum", "seeded")
    def seed_said() -> list[float]:
        [line] = [line for line in _report(info).section("caveats").bullets if line.startswith("Every trial ran once")]
        return numbers(line)

    # A study written before the settings were stored: the parent run's param (0) is used.
    assert seed_said() == [0]
    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    study.set_user_attr(contract.SETTINGS_ATTR, {"seed": 7})
    assert seed_said() == [7]
    study.set_user_attr(contract.SETTINGS_ATTR, {"seed": 0})  # stored as a number: 0 is a seed too
    assert seed_said() == [0]


def test_findings_json_is_the_source_of_the_finding_sentences(dropout_study, tmp_path):
    assert _run_cli(dropout_study, tmp_path / "out", "--study_name", dropout_study["name"]) == 0
    folder = next((tmp_path / "out").iterdir())
    data = json.loads((folder / "findings.json").read_text())
    markdown, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    from study.report.render import md_escape

    assert data["study"] == dropout_study["name"] and len(data["headline"]) == 4
    for finding in data["findings"]:
        assert set(finding) == {"kind", "text", "estimate", "interval", "n", "split", "scheme", "p_value"}
        assert f"- {md_escape(finding['text'])}" in markdown
        assert html.escape(finding["text"], quote=True) in page
    effect = next(f for f in data["findings"] if f["kind"] == "headline_effect")
    assert effect["split"] == "test" and effect["n"] == 12 and len(effect["interval"]) == 2
    low, high = effect["interval"]
    stated = effect["text"][effect["text"].index("95 % interval"):]
    assert numbers(stated)[:4] == [95, round(low * 100, 1), round(high * 100, 1), 12], effect["text"]
    for line in data["headline"]:
        assert md_escape(line) in markdown
    # Wide tables scroll inside their own box.
    assert page.count('<div class="scroll"><table class="sortable">') == page.count("<table") >= 4


def test_the_pruned_caveat_reads_the_studys_prune_on(momentum_study, tmp_path):
    import optuna

    from study.report import paired
    from study.report.views import finished, trial_views

    study = optuna.load_study(study_name=momentum_study["name"], storage=momentum_study["storage"])
    views = finished(trial_views(study))
    # Unknown or another rule: the caveat says which and advises --prune_on best_momentum.
    unknown, own = paired.pruned_for_statistics(views, None), paired.pruned_for_statistics(views, "own_momentum")
    assert "unknown" in unknown and "own_momentum" not in unknown
    assert "pruned on own_momentum" in own
    assert all("--prune_on best_momentum" in text and "keeps such trials" in text for text in (unknown, own))
    # The report reads the setting from the study; under best_momentum it does not advise what is already so.
    info = build_study(tmp_path / "p", "momentum", "pruned-on")
    stored = optuna.load_study(study_name=info["name"], storage=info["storage"])
    stored.set_user_attr(contract.SETTINGS_ATTR, {"seed": 0, "prune_on": "best_momentum"})
    text = next(line for line in _report(info).section("caveats").bullets if line.startswith("The pruner stopped"))
    assert "already pruned on the val accuracy at the best momentum" in text
    assert "keeps such trials" not in text and "--prune_on" not in text


def test_run_ids_link_to_the_tracking_servers_ui(momentum_study):
    import optuna
    from mlflow.tracking import MlflowClient

    from study.report import tables
    from study.report.document import Link
    from study.report.links import mlflow_links, ui_base
    from study.report.render import to_html, to_markdown
    from study.report.views import trial_views

    class ServerClient(MlflowClient):
        """The study's store, as a tracking server at this address would serve it."""

        tracking_uri = "http://mlflow.example.org:5000/"

    assert ui_base("http://mlflow.example.org:5000/") == "http://mlflow.example.org:5000"
    assert ui_base("sqlite:///mlflow.db") == ui_base("") == "http://127.0.0.1:5000"
    assert ui_base("http://mlflow.example.org:5000", "https://proxy.example.org/mlflow/") == \
        "https://proxy.example.org/mlflow"
    client = ServerClient(momentum_study["tracking"])
    report = _report(momentum_study)
    study = optuna.load_study(study_name=momentum_study["name"], storage=momentum_study["storage"])
    views = trial_views(study)
    links = mlflow_links(study, client, [v.run_id for v in views])
    table = tables.top_table(views, links.run)
    cell = records(table)[0]["MLflow run id"]
    experiment = client.get_run(cell.text).info.experiment_id
    assert isinstance(cell, Link)
    assert cell.url == f"http://mlflow.example.org:5000/#/experiments/{experiment}/runs/{cell.text}"
    assert links.served_by == ""  # a server is its own UI: nothing to start
    report.section("top_trials").tables[0] = table
    assert f"[{cell.text}]({cell.url})" in to_markdown(report)
    assert f'<a href="{cell.url}">{cell.text}</a>' in to_html(report)


def test_findings_json_writes_a_number_that_is_not_finite_as_null():
    from study.report.document import Finding, Report
    from study.report.render import to_findings_json

    finding = Finding(kind="paired_effect", text="x", estimate=float("nan"), interval=(float("-inf"), 0.02), n=3)
    report = Report(study_name="s", summary=[], headline=["h"], findings=[finding], sections=[])
    data = json.loads(to_findings_json(report))
    assert data["findings"][0]["estimate"] is None
    assert data["findings"][0]["interval"] == [None, 0.02]
