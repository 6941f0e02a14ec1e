"""The report leads somewhere: run ids, the parent run and the registered model link to the MLflow UI; tables
sort; the best setting is a command to copy; what more trials would answer; and the page reads at 1,100 px.

On the synthetic studies of tests/test_report.py (no training), plus one slow run of the retrain command.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from study import contract
from tests.helpers import subprocess_env
from tests.report_studies import _distributions, _report, _run_cli, build_study, records
from tests.test_report import _chromium, _chromium_run

RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


@pytest.fixture(scope="module")
def registered_study(tmp_path_factory):
    """The momentum study with its best trial's model registered under the study's name, alias best."""
    from mlflow.tracking import MlflowClient

    info = build_study(tmp_path_factory.mktemp("registered"), "momentum", "linked study")
    client = MlflowClient(info["tracking"])
    best = max((s for s in info["specs"] if s["state"] == TrialState.COMPLETE), key=lambda s: s["val"])
    run_id = next(r for r in client.search_runs([client.get_experiment_by_name(info["name"]).experiment_id])
                  if r.info.run_name == f"trial-{info['specs'].index(best):03d}").info.run_id
    client.create_registered_model(info["name"])
    version = client.create_model_version(info["name"], f"{client.get_run(run_id).info.artifact_uri}/model", run_id)
    client.set_registered_model_alias(info["name"], contract.BEST_MODEL_ALIAS, version.version)
    return {**info, "version": version.version}


def _unlinked_run_ids_html(page: str) -> list[str]:
    """Run ids in the page's text that are not the text of a link."""
    without_links = re.sub(r"<a [^>]*>.*?</a>", "", page)
    return RUN_ID.findall(re.sub(r'href="[^"]*"', "", without_links))


def test_every_run_id_links_to_mlflow_ui_at_its_default_address(registered_study, tmp_path):
    assert _run_cli(registered_study, tmp_path / "out") == 0
    folder = tmp_path / "out" / registered_study["name"]
    page, markdown = (folder / "report.html").read_text(), (folder / "report.md").read_text()
    parent = registered_study["parent"]
    experiment = re.search(r"#/experiments/(\d+)/runs/" + parent, page).group(1)
    base = "http://127.0.0.1:5000"
    assert f'<a href="{base}/#/experiments/{experiment}/runs/{parent}">{parent}</a>' in page  # the summary line
    assert f'<a href="{base}/#/experiments/{experiment}">experiment linked study</a>' in page
    model = f'{base}/#/models/linked%20study/versions/{registered_study["version"]}'
    assert f'<a href="{model}">registered model linked study version {registered_study["version"]} (alias best)</a>' \
        in page
    assert f"mlflow ui --backend-store-uri {registered_study['tracking']}" in page
    assert RUN_ID.findall(page) and _unlinked_run_ids_html(page) == []
    # Each trial's number in the gap decomposition opens its run.
    trial_link = rf'<td data-v="\d+\.0"><a href="{base}/#/experiments/{experiment}/runs/[0-9a-f]{{32}}">\d+</a>'
    assert len(re.findall(trial_link, page)) == len(registered_study["specs"])
    # Markdown: every run id sits in a link's text or its address.
    linked = re.sub(r"\[[^\]]*\]\([^)]*\)", "", markdown)
    assert RUN_ID.findall(markdown) and RUN_ID.findall(linked) == []
    assert f"[{parent}]({base}/#/experiments/{experiment}/runs/{parent})" in markdown


def test_ui_url_sets_the_address_and_a_bad_one_is_refused(registered_study, tmp_path, capsys):
    assert _run_cli(registered_study, tmp_path / "out", "--ui_url", "https://mlflow.example.org/ui/") == 0
    page = (tmp_path / "out" / registered_study["name"] / "report.html").read_text()
    assert 'href="https://mlflow.example.org/ui/#/experiments/' in page and "127.0.0.1:5000" not in page
    capsys.readouterr()
    assert _run_cli(registered_study, tmp_path / "bad", "--ui_url", "mlflow.example.org") == 2
    assert capsys.readouterr().err == ("error: --ui_url='mlflow.example.org' is not an http(s) address; pass the "
                                       "MLflow UI's address, e.g. http://127.0.0.1:5000, or leave it empty for the "
                                       "default.\n")
    assert not (tmp_path / "bad").exists()


def test_tables_have_one_precision_per_column_and_say_what_they_count(registered_study):
    from study.report.render import to_markdown

    report = _report(registered_study)
    decomposition = report.section("decomposition").tables[0]
    horizons = [row["EMA horizon"] for row in records(decomposition)]
    assert {type(h) for h in horizons} == {float} and len({round(h, 6) for h in horizons if math.isfinite(h)}) > 3
    markdown = to_markdown(report)
    table = markdown[markdown.index("| trial | state |"):].split("\n\n")[0].splitlines()[2:]
    column = decomposition.columns.index("EMA horizon")
    written = [line.split(" | ")[column] for line in table]
    # One decimal each (horizons run from 0.1 to over 100 here), "–" where the trial has no batchnorm.
    assert all(re.fullmatch(r"\d+\.\d", text) or text == "–" for text in written), written
    assert "–" in written and any(float(t) >= 100 for t in written if t != "–")
    steps = [line.split(" | ")[decomposition.columns.index("steps")] for line in table]
    assert all(re.fullmatch(r"\d+", text) for text in steps), steps
    seed = report.section("seed_presets").tables[0]
    assert [column for column in seed.columns if "(its own data)" in column] == [
        "seed's train (its own data)", "seed's val (its own data)", "seed's test (its own data)"]
    assert "on the seed's own dataset, not on this study's images" in seed.caption
    importance = report.section("importance").paragraphs[0]
    # Over the 14 finished trials with batchnorm; the 2 without it are left out.
    assert re.search(r"over 14 finished trials with batchnorm \(\d+ complete, \d+ pruned, measured where they "
                     r"stopped\); the 2 finished without batchnorm \(presets\) are left out", importance), importance


def test_a_presets_fixed_value_gets_no_range_advice():
    from study.report.caveats import caveats
    from study.report.views import TrialView

    params = {"bn_momentum": 0.8, "batch_size": 32, "dropout": 0.0, "depth": 3}
    preset = TrialView(3, TrialState.COMPLETE, "seed-final", True, params, {}, 0.9, _distributions())
    searched = TrialView(9, TrialState.COMPLETE, None, True, params, {}, 0.9, _distributions())
    assert not [line for line in caveats([preset], preset, "0", []) if "edge" in line]
    edge, = [line for line in caveats([searched], searched, "0", []) if "edge" in line]
    assert re.search(r"dropout = 0 is at the lower edge of its search range \(0 to 0\.6\)", edge), edge


def _trial(number: int, preset: str | None, batchnorm: bool, with_curve: bool, own_gain: float = 0.0):
    from study.report.views import TrialView

    attrs = {"gap": 0.1, "steps": 100.0, "train_accuracy": 0.9}
    if with_curve:
        attrs[contract.MOMENTUM_CURVE_ATTR] = {
            "own_momentum": 0.99, "momentum": [0.0, 0.9, 0.99], "val_accuracy": [0.8, 0.7, 0.6],
            "train_eval_accuracy": [0.9, 0.8, 0.7], "test_accuracy": [0.6 + own_gain, 0.6, 0.6],
            "gap": [0.1, 0.2, 0.3], "mode_gap": [0.0, 0.1, 0.2],
            "recalibrated": {"val_accuracy": 0.8, "train_eval_accuracy": 0.9, "gap": 0.1, "mode_gap": 0.0}}
    params = {"bn_momentum": 0.99} if batchnorm else {}
    return TrialView(number, TrialState.COMPLETE, preset, batchnorm, params, attrs, 0.6, {})


def test_below_six_complete_trials_with_curves_the_first_screen_says_how_many_more_and_how(monkeypatch):
    from study.report import paired
    from study.report.next_steps import trials_needed

    views = [_trial(0, "seed-initial", False, False), _trial(1, "seed-deeper", False, False),
             _trial(2, "seed-bn", True, True, 0.25), _trial(3, "seed-final", True, True), _trial(4, None, True, True)]
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/gaplab-report"])
    settings = {"data_dir": "my photos", "image_size": 64, "epochs": 6, "seed": 0, "pruner": "median",
                "prune_on": "own_momentum"}
    lines = trials_needed(views, paired.with_curves(views), "trash 64", settings)
    assert lines == [
        "Trials needed: a paired answer needs 6 trials with batchnorm and a momentum curve that trained to the end "
        "(not pruned); this study has 3, of 5 finished (the first 4 trials are the seed's presets, 2 of them without "
        "batchnorm, so at least 8 trials in all). So far, held-out accuracy at the val-chosen momentum minus at the "
        "trial's own: trial 2 +25.0, trial 3 0.0, trial 4 0.0 points (no interval below 6 trials). Add 3 with: "
        "gaplab-study --trials 8 "
        "--study_name 'trash 64' --data_dir 'my photos' --image_size 64 --epochs 6 --seed 0 --prune_on own_momentum "
        "(and the --storage it used, if not the default)."]
    views += [_trial(5, None, True, True), _trial(6, None, True, True)]
    assert len(trials_needed(views, paired.with_curves(views), "trash 64", settings)) == 1
    views += [_trial(7, None, True, True)]
    assert trials_needed(views, paired.with_curves(views), "trash 64", settings) == []


def test_the_report_shows_what_more_trials_would_answer_below_the_headline(tmp_path):
    """A real report of a study with 3 batchnorm trials: the line sits below the headline, on both pages."""
    import optuna

    from study.report.render import to_html, to_markdown

    info = build_study(tmp_path, "momentum", "small")
    study = optuna.load_study(study_name="small", storage=info["storage"])
    # Keep the presets and one searched trial: 3 finished trials with curves.
    storage = f"sqlite:///{tmp_path / 'small.db'}"
    small = optuna.create_study(study_name="small", storage=storage, direction="maximize")
    for trial in study.get_trials()[:5]:
        small.add_trial(trial)
    for key, value in study.user_attrs.items():
        small.set_user_attr(key, value)
    report = _report({**info, "storage": storage})
    assert report.next_steps and report.next_steps[0].startswith("Trials needed: a paired answer needs 6 trials "
                                                                 "with batchnorm and a momentum curve that trained "
                                                                 "to the end (not pruned); this study has 3, of 5 "
                                                                 "finished")
    page, markdown = to_html(report), to_markdown(report)
    assert page.index('<div class="headline">') < page.index('<p class="next">Trials needed') < page.index(
        '<ul class="summary">')
    assert markdown.index("**How sure") < markdown.index("Trials needed") < markdown.index("- Study: small")


def test_the_best_setting_is_a_command_to_copy(registered_study):
    import optuna

    from study.report.next_steps import retrain
    from study.report.views import trial_views

    report = _report(registered_study)
    (what, command), = report.section("top_trials").code
    assert what.startswith("Retrain the best setting (trial 0) on its own")
    study = optuna.load_study(study_name=registered_study["name"], storage=registered_study["storage"])
    best = next(v for v in trial_views(study) if v.number == 0)
    settings = {"data_dir": "/data/it's here", "image_size": 48, "epochs": 3, "seed": 7}
    (_, command), = retrain(best, settings)
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"]
    data, config = re.search(r"data = (.*?); result = train\(TrainConfig\((.*?)\), data\)", argv[2]).groups()
    assert data == "load_image_folder(\"/data/it's here\", 48, seed=7)"
    # The preset's own values, the study's settings, and no momentum without batchnorm.
    assert dict(item.split("=") for item in config.split(", ")) == {
        "depth": "2", "batchnorm": "False", "dropout": "0.5", "batch_size": "32", "image_size": "48", "epochs": "3",
        "seed": "7"}
    assert argv[2].startswith("from gaplab import TrainConfig, load_image_folder, train; ")
    assert argv[2].endswith("; print(result.final_metrics())")


@pytest.mark.slow
def test_the_retrain_command_trains_the_best_setting(tmp_path):
    from study.report.next_steps import retrain
    from study.report.views import TrialView

    best = TrialView(5, TrialState.COMPLETE, None, True,
                     {"bn_momentum": 0.9, "batch_size": 16, "dropout": 0.1, "depth": 1}, {}, 0.5, {})
    (_, command), = retrain(best, {"data_dir": "", "image_size": 16, "epochs": 1, "seed": 3})
    argv = shlex.split(command)
    done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"').replace("nan", "NaN"))
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["steps"] > 0


_PROBE = """<script>
(function () {
  function order(table, column) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (row) { return row.cells[column].textContent; });
  }
  var table = document.querySelectorAll("table.sortable")[1];
  var headers = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) { return th.textContent; });
  var gap = headers.indexOf("gap"), trial = headers.indexOf("trial");
  var th = table.querySelectorAll("thead th")[gap];
  th.click();
  var ascending = order(table, gap);
  th.click();
  var descending = order(table, gap);
  var box = table.parentElement.getBoundingClientRect();
  var cut = Array.prototype.filter.call(table.querySelectorAll("thead th"), function (cell) {
    var r = cell.getBoundingClientRect();
    return r.right > box.right + 0.5 || r.right > window.innerWidth;
  }).map(function (cell) { return cell.textContent; });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({ascending: ascending, descending: descending, trials: order(table, trial),
                                    cut: cut, sort: th.getAttribute("aria-sort")});
  document.body.appendChild(pre);
})();
</script>"""


def test_in_chromium_the_trial_table_sorts_by_gap_and_fits_1100_px(registered_study, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary found (apt-get install chromium)")
    assert _run_cli(registered_study, tmp_path / "out") == 0
    page = (tmp_path / "out" / registered_study["name"] / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    dom = _chromium_run(binary, tmp_path / "profile", "--window-size=1100,900", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S).group(1).replace("&quot;", '"'))
    gaps = [float(text) for text in found["ascending"]]
    assert gaps == sorted(gaps) and len(gaps) == len(registered_study["specs"])
    assert [float(text) for text in found["descending"]] == sorted(gaps, reverse=True)
    assert found["sort"] == "descending"
    # The headline's columns (held-out accuracy at the own and the chosen momentum) are on screen, as is every
    # other column of the table.
    assert found["cut"] == []
    assert "Uncaught" not in dom.stderr
