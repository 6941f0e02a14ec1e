"""The report's confirmation (`--confirm K`): the answer retrained on fresh seeds, read from the companion study.

Studies are built directly with Optuna on a tmp_path SQLite storage, under the names study.contract gives the
confirmation (the companion study, its user attributes, each training's attributes), independently of the code
that trains them: a search study whose report recommends PreciseBN for trial 6, and confirmation trainings with
numbers chosen so that every mean, interval and paired difference can be worked out by hand (K=3: t(0.975, 2 df)
= 4.302653, so a standard deviation s gives a half-width of 4.302653 · s / √3 = 2.484138 · s).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import contract, space

GRID = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
HALF_WIDTH_PER_SD = 2.484138  # t(0.975, 2) / √3
TEST_IMAGES, VAL_IMAGES = 400, 400


def _curve(own: float, train: float, settled_val: float, own_test: float, precise_test: float) -> dict:
    """A momentum curve (contract.MOMENTUM_CURVE_ATTR): val `settled_val` at every momentum below 0.99 and 0.3
    lower from 0.99 up (too few steps there); PreciseBN 0.01 above the best val. Test is val − 0.01 except at the
    own momentum (`own_test`) and for PreciseBN (`precise_test`)."""
    momenta = sorted(set(GRID) | {own})
    val = [settled_val - (0.3 if m >= 0.99 else 0.0) for m in momenta]
    test = [own_test if m == own else v - 0.01 for m, v in zip(momenta, val)]
    recalibrated_val = settled_val + 0.01
    return {"own_momentum": own, "momentum": momenta, "val_accuracy": val, "train_eval_accuracy": [train] * len(val),
            "gap": [train - v for v in val], "mode_gap": [0.0] * len(val), "test_accuracy": test,
            "test_images": TEST_IMAGES, "val_images": VAL_IMAGES, "train_eval_images": VAL_IMAGES,
            "test_differs_from_own": [0 if m == own else 10 for m in momenta],
            "recalibrated": {"val_accuracy": recalibrated_val, "train_eval_accuracy": train,
                             "gap": train - recalibrated_val, "mode_gap": 0.0, "test_accuracy": precise_test,
                             "test_differs_from_own": 10}}


def _metrics(train: float, val: float, test: float) -> dict:
    """Final metrics as gaplab.trainer.TrainResult.final_metrics() names them."""
    return {"train_accuracy": train, "train_eval_accuracy": train, "val_accuracy": val, "test_accuracy": test,
            "gap": train - val, "mode_gap": 0.0, "generalization_gap": train - val,
            "val_accuracy_recalibrated": val, "steps": 200.0, "epochs_run": 2.0}


# The search: (preset, batchnorm, bn_momentum, settled val). Stale momenta (≥ 0.99) cost 0.3 of val; trial 6's
# PreciseBN val (0.92) is the best, so the report recommends PreciseBN on trial 6's setting.
SEARCH = [("seed-initial", False, None, 0.70), ("seed-deeper", False, None, 0.74), ("seed-bn", True, 0.99, 0.80),
          ("seed-final", True, 0.8, 0.82), (None, True, 0.995, 0.85), (None, True, 0.9, 0.84),
          (None, True, 0.99, 0.91), (None, True, 0.95, 0.83), (None, True, 0.999, 0.86), (None, True, 0.98, 0.81)]
RECOMMENDED_TRIAL, WITHOUT_BN_TRIAL, STARTING_TRIAL = 6, 1, 2
SETTINGS = {"dataset": "shapes", "image_size": 32, "epochs": 2, "seed": 0, "pruner": "median",
            "prune_on": "best_momentum", "data_dir": ""}


def build_search(root: Path, name: str = "confirm-study") -> dict:
    """The search study: 10 complete trials, 8 of them with batchnorm and held-out momentum curves."""
    root.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{root / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(contract.SETTINGS_ATTR, SETTINGS)
    for preset, batchnorm, momentum, settled in SEARCH:
        train = 0.95
        val = settled - (0.3 if batchnorm and momentum >= 0.99 else 0.0)
        attrs = {**_metrics(train, val, val - 0.01), contract.BATCHNORM_ATTR: batchnorm}
        values = {"dropout": 0.2, "batch_size": 32, "depth": 3}
        if batchnorm:
            values["bn_momentum"] = momentum
            attrs[contract.BN_MOMENTUM_ATTR] = momentum
            attrs[contract.MOMENTUM_CURVE_ATTR] = _curve(momentum, train, settled, val - 0.01, settled)
        if preset:
            attrs[contract.PRESET_ATTR] = preset
        params = {p.optuna_name: p.to_optuna(values[p.name]) for p in space.PARAMS if p.name in values}
        distributions = {p.optuna_name: p.distribution() for p in space.PARAMS if p.name in values}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, user_attrs=attrs,
                                                  value=val, state=TrialState.COMPLETE))
    return {"storage": storage, "name": name, "root": root}


KEY = "trial-6/precise"
SEEDS = (101, 202, 303)
# Per seed: the recommended arm's held-out accuracy as trained (own momentum 0.99) and with PreciseBN; its val
# with PreciseBN is settled + 0.01. The starting point and the best setting without batchnorm as trained.
RECOMMENDED = {"as_trained": (0.60, 0.62, 0.64), "precise": (0.86, 0.88, 0.87), "settled": (0.87, 0.89, 0.88)}
STARTING = (0.50, 0.56, 0.53)
WITHOUT_BN = (0.70, 0.71, 0.75)


def _training(arm: str, seed: int, confirms: str, source: int, test: float, val: float,
              curve: dict | None = None, state: TrialState = TrialState.COMPLETE):
    attrs = {contract.ARM_ATTR: arm, contract.SEED_ATTR: seed, contract.CONFIRMS_ATTR: confirms,
             contract.SOURCE_TRIAL_ATTR: source}
    if state == TrialState.COMPLETE:
        attrs.update(_metrics(0.95, val, test))
    if curve is not None:
        attrs[contract.MOMENTUM_CURVE_ATTR] = curve
        attrs[contract.BATCHNORM_ATTR] = True
    return optuna.trial.create_trial(params={}, distributions={}, user_attrs=attrs,
                                     value=val if state == TrialState.COMPLETE else None, state=state)


def add_confirmation(info: dict, key: str = KEY, trial: int = RECOMMENDED_TRIAL, k: int = 3,
                     seeds=SEEDS, recommended=RECOMMENDED, starting=STARTING, without_bn=WITHOUT_BN) -> None:
    """The companion study as `--confirm k` leaves it: the three arms on `seeds`, confirming `key`."""
    companion = optuna.create_study(study_name=contract.confirmation_study_name(info["name"]),
                                    storage=info["storage"], direction="maximize")
    companion.set_user_attr(contract.CONFIRM_K_ATTR, k)
    option = key.split("/")[1]
    companion.set_user_attr(contract.RECOMMENDATION_ATTR,
                            {"key": key, "trial": trial, "option": option, "momentum": None})
    for i, seed in enumerate(seeds):
        own_test, settled = recommended["as_trained"][i], recommended["settled"][i]
        curve = _curve(0.99, 0.95, settled, own_test, recommended["precise"][i])
        companion.add_trial(_training(contract.RECOMMENDED_ARM, seed, key, trial, own_test, settled - 0.3, curve))
        companion.add_trial(_training(contract.WITHOUT_BN_ARM, seed, key, WITHOUT_BN_TRIAL, without_bn[i], 0.74))
        companion.add_trial(_training(contract.STARTING_POINT_ARM, seed, key, STARTING_TRIAL, starting[i], 0.5))


def _t(values) -> tuple[float, float, float]:
    """Mean and 95 % t-interval ends of three values, by hand."""
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    return mean, mean - HALF_WIDTH_PER_SD * sd, mean + HALF_WIDTH_PER_SD * sd


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory) -> dict:
    info = build_search(tmp_path_factory.mktemp("confirmed"))
    add_confirmation(info)
    return info


def test_the_report_recommends_the_trial_the_confirmation_retrains(tmp_path):
    from study.report.confirmation import Recommendation, current_recommendation

    info = build_search(tmp_path)
    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    recommendation = current_recommendation(study)
    assert recommendation == Recommendation(RECOMMENDED_TRIAL, "precise", None)
    assert recommendation.key == KEY and recommendation.as_attr() == {
        "key": KEY, "trial": 6, "option": "precise", "momentum": None}


def _confirmation(info: dict):
    """(Confirmation, its findings) as the report reads them from the stored studies."""
    from study.report import confirmation
    from study.report.views import trial_views

    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    views = trial_views(study)
    read = confirmation.confirmation_of(study, views, study.user_attrs.get(contract.SETTINGS_ATTR) or {})
    return read, confirmation.findings(read, views)


def _approx(mean, values) -> None:
    """`mean` (a stats.Mean) is the t-interval of `values`, worked out by hand."""
    expected = _t(values)
    assert (mean.estimate, mean.low, mean.high) == pytest.approx(expected, abs=1e-6) and mean.n == len(values)


def test_each_arm_is_stated_over_its_seeds_with_its_t_interval(confirmed):
    read, found = _confirmation(confirmed)
    assert read.confirmed and read.k == 3 and read.key == KEY and not read.older and read.pending == 0
    assert [a.name for a in read.arms] == list(contract.ARMS)
    recommended = read.arm(contract.RECOMMENDED_ARM)
    assert recommended.source == RECOMMENDED_TRIAL and len(recommended.trainings) == 3
    # With the fix (PreciseBN, read off each training's own curve) and as trained, the same trainings.
    _approx(recommended.fixed[1], RECOMMENDED["precise"])
    _approx(recommended.fixed[2], [0.95 - (s + 0.01) for s in RECOMMENDED["settled"]])
    _approx(recommended.test, RECOMMENDED["as_trained"])
    _approx(recommended.fix_gain, [p - a for p, a in zip(RECOMMENDED["precise"], RECOMMENDED["as_trained"])])
    _approx(read.arm(contract.STARTING_POINT_ARM).test, STARTING)
    _approx(read.arm(contract.WITHOUT_BN_ARM).test, WITHOUT_BN)
    assert read.arm(contract.STARTING_POINT_ARM).fixed is None  # the starting point is as its author trained it
    # Recommended with the fix minus the starting point, paired on seed: 0.36, 0.32, 0.34.
    _approx(read.difference, [p - s for p, s in zip(RECOMMENDED["precise"], STARTING)])
    kinds = [f.kind for f in found]
    assert kinds == ["confirmed_arm"] * 3 + ["confirmed_difference", "winners_curse", "confirmation"]
    arm = found[0]
    assert arm.estimate == pytest.approx(0.87) and arm.n == 3 and arm.split == "test"
    assert arm.interval == pytest.approx((0.87 - 0.01 * HALF_WIDTH_PER_SD, 0.87 + 0.01 * HALF_WIDTH_PER_SD), abs=1e-6)
    assert "held-out accuracy 0.870 (95 % interval 0.845 to 0.895, n=3)" in arm.text and "with PreciseBN" in arm.text
    assert "as trained (the same trainings), held-out accuracy 0.620 (95 % interval 0.570 to 0.670, n=3)" in arm.text
    difference = found[3]
    assert difference.estimate == pytest.approx(0.34) and difference.n == 3
    assert "+34.0 points (95 % interval +29.0 to +39.0, n=3)" in difference.text and "clear" in difference.text
    assert "0.530 (95 % interval 0.455 to 0.605, n=3)" in found[2].text


def test_the_winners_curse_sets_the_search_against_the_confirmed_val_and_test(confirmed):
    read, found = _confirmation(confirmed)
    curse = next(f for f in found if f.kind == "winners_curse")
    # In the search trial 6 scored 0.92 on val with PreciseBN; retrained, 0.88, 0.90, 0.89 (mean 0.89).
    assert read.curse["search_val_accuracy"] == pytest.approx(0.92) and read.curse["trial"] == RECOMMENDED_TRIAL
    _approx(read.curse["val"], [s + 0.01 for s in RECOMMENDED["settled"]])
    _approx(read.curse["test"], RECOMMENDED["precise"])
    assert curse.estimate == pytest.approx(0.03) and curse.n == 3 and curse.split == "val"
    assert curse.interval == pytest.approx((0.03 - 0.01 * HALF_WIDTH_PER_SD, 0.03 + 0.01 * HALF_WIDTH_PER_SD), abs=1e-6)
    assert "0.920 (with PreciseBN)" in curse.text and "the search overstated it" in curse.text


def test_without_a_confirmation_the_first_screen_says_not_confirmed_and_gives_the_command(tmp_path):
    info = build_search(tmp_path)
    before = optuna.get_all_study_names(info["storage"])
    read, found = _confirmation(info)
    assert not read.confirmed and not read.exists and read.arms == [] and read.k is None
    assert [f.kind for f in found] == ["confirmation"]
    command = ("python -m study.run --trials 10 --study_name confirm-study --image_size 32 --epochs 2 --seed 0 "
               f"--confirm {contract.DEFAULT_CONFIRM_K}")
    assert read.command == command
    assert found[0].text.startswith("Not confirmed") and command in found[0].text
    assert "trial 6, evaluated with PreciseBN" in found[0].text
    # Reading never creates the companion study.
    assert optuna.get_all_study_names(info["storage"]) == before == [info["name"]]


def test_a_confirmation_of_an_older_recommendation_is_labelled_and_kept_out(tmp_path):
    info = build_search(tmp_path)
    # The latest --confirm confirmed trial 4 (then the best): its trainings are kept, labelled, and in no number.
    add_confirmation(info, key="trial-4/precise", trial=4, k=3)
    read, found = _confirmation(info)
    assert not read.confirmed and read.arms == [] and read.difference is None
    assert {key: len(trainings) for key, trainings in read.older.items()} == {"trial-4/precise": 9}
    assert [f.kind for f in found] == ["confirmation", "older_confirmation"]
    assert found[0].text.startswith("Not confirmed") and "--confirm 3" in found[0].text
    assert "trial-4/precise" in found[1].text and "trial-6/precise" in found[1].text and found[1].n == 9


def test_current_and_older_trainings_side_by_side_are_not_mixed(tmp_path):
    info = build_search(tmp_path)
    add_confirmation(info)
    companion = optuna.load_study(study_name=contract.confirmation_study_name(info["name"]), storage=info["storage"])
    for seed in SEEDS:  # an earlier recommendation's trainings, far off the current ones
        companion.add_trial(_training(contract.STARTING_POINT_ARM, seed, "trial-4/precise", STARTING_TRIAL, 0.1, 0.1))
    read, found = _confirmation(info)
    _approx(read.arm(contract.STARTING_POINT_ARM).test, STARTING)
    _approx(read.difference, [p - s for p, s in zip(RECOMMENDED["precise"], STARTING)])
    assert [f.kind for f in found][-1] == "older_confirmation" and found[-1].n == 3


def test_a_key_the_study_side_wrote_its_own_way_still_confirms_the_same_recommendation(tmp_path):
    """The companion's stored recommendation is matched on what it recommends (trial, option, momentum), and its
    trainings on the key it stored."""
    info = build_search(tmp_path)
    add_confirmation(info, key="r1/precise")
    companion = optuna.load_study(study_name=contract.confirmation_study_name(info["name"]), storage=info["storage"])
    assert companion.user_attrs[contract.RECOMMENDATION_ATTR]["trial"] == RECOMMENDED_TRIAL
    read, _ = _confirmation(info)
    assert read.confirmed and read.key == "r1/precise" and not read.older


def test_an_unfinished_confirmation_states_what_it_has_and_how_to_top_it_up(tmp_path):
    info = build_search(tmp_path)
    add_confirmation(info, k=3, seeds=SEEDS[:1], recommended={k: v[:1] for k, v in RECOMMENDED.items()})
    companion = optuna.load_study(study_name=contract.confirmation_study_name(info["name"]), storage=info["storage"])
    # Seed 202's training failed; seed 101's failed once too, then trained (a rerun): only 202 is unfinished.
    for seed in SEEDS[:2]:
        companion.add_trial(_training(contract.RECOMMENDED_ARM, seed, KEY, RECOMMENDED_TRIAL, 0.0, 0.0,
                                      state=TrialState.FAIL))
    read, found = _confirmation(info)
    assert read.confirmed and read.pending == 1 and [len(a.trainings) for a in read.arms] == [1, 1, 1]
    arm = found[0]
    assert arm.n == 1 and arm.interval is None and "on 1 of 3 fresh seeds" in arm.text
    assert "n=1, no interval from one seed" in arm.text
    how_sure = next(f for f in found if f.kind == "confirmation")
    assert "top it up with: python -m study.run --trials 10" in how_sure.text and "--confirm 3" in how_sure.text
    assert "clear" not in next(f for f in found if f.kind == "confirmed_difference").text.replace("no clear", "")


def _run_cli(info: dict, out: Path, *extra: str) -> int:
    """The report command on `info`'s study, with an MLflow store beside it (made as the study makes one)."""
    from study import storage
    from study.report import main

    tracking = f"sqlite:///{info['root'] / 'mlflow.db'}"
    if not (info["root"] / "mlflow.db").exists():
        storage._create_mlflow_schema(tracking)
    return main(["--storage", info["storage"], "--tracking_uri", tracking, "--out", str(out), *extra])


def test_the_report_puts_the_confirmation_under_the_headline_and_in_findings_json(confirmed, tmp_path):
    import hashlib

    db = confirmed["root"] / "optuna.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    # The companion study is no second study to choose from: '' still means the only study.
    assert _run_cli(confirmed, tmp_path / "out", "--study_name", "") == 0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # reading changed nothing
    folder = tmp_path / "out" / confirmed["name"]
    data = json.loads((folder / "findings.json").read_text())
    markdown, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    block = data["confirmation"]
    assert block["status"] == "confirmed" and block["k"] == 3 and block["confirms"] == KEY
    assert block["recommendation"] == {"key": KEY, "trial": 6, "option": "precise", "momentum": None}
    recommended = block["arms"]["recommended"]
    assert recommended["seeds"] == list(SEEDS) and recommended["source_trial"] == RECOMMENDED_TRIAL
    fixed = recommended["with_fix"]["test_accuracy"]
    assert [fixed["mean"], fixed["low"], fixed["high"], fixed["n"]] == pytest.approx(
        [*_t(RECOMMENDED["precise"]), 3], abs=1e-6)
    assert recommended["test_accuracy"]["mean"] == pytest.approx(0.62)
    assert block["arms"]["starting_point"]["test_accuracy"]["mean"] == pytest.approx(0.53)
    assert block["arms"]["starting_point"]["with_fix"] is None
    difference = block["paired_difference"]
    assert [difference["mean"], difference["low"], difference["high"], difference["n"], difference["clear"]] == \
        pytest.approx([*_t([0.36, 0.32, 0.34]), 3, True], abs=1e-6)
    curse = block["winners_curse"]
    assert curse["search_val_accuracy"] == pytest.approx(0.92) and curse["confirmed_test_accuracy"]["mean"] == \
        pytest.approx(0.87) and curse["confirmed_val_accuracy"]["n"] == 3
    assert block["older"] == {} and block["pending"] == 0
    # The same sentences on the first screen (under the headline, above the summary) and in the findings.
    kinds = {f["kind"] for f in data["findings"]}
    assert {"confirmed_arm", "confirmed_difference", "winners_curse", "confirmation"} <= kinds
    assert len(data["confirmed"]) == 6
    from study.report.render import md_escape

    assert markdown.index(md_escape(data["headline"][-1])) < markdown.index(md_escape(data["confirmed"][0])) \
        < markdown.index("- Study: ")
    assert page.index('<div class="headline">') < page.index('<div class="confirmed">') < page.index(
        '<ul class="summary">')
    assert '<section id="confirmation"><h2>2. Confirmation on fresh seeds</h2>' in page


def test_the_companion_study_is_not_reported_on_its_own(confirmed, tmp_path, capsys):
    name = contract.confirmation_study_name(confirmed["name"])
    assert _run_cli(confirmed, tmp_path / "out", "--study_name", name) == 2
    assert f"holds the confirmation of study {confirmed['name']!r}" in capsys.readouterr().err


def test_an_old_study_without_curves_settings_or_companion_renders_and_says_not_confirmed(tmp_path):
    """A study from before the confirmation, the stored settings and momentum curves: the report renders, the
    first screen says "not confirmed", the command has what the study stored, and findings.json says so."""
    root = tmp_path / "old"
    root.mkdir()
    storage = f"sqlite:///{root / 'optuna.db'}"
    study = optuna.create_study(study_name="old-study", storage=storage, direction="maximize")
    for val in (0.6, 0.7, 0.65):
        distributions = {p.optuna_name: p.distribution() for p in space.PARAMS if p.name != "bn_momentum"}
        params = {p.optuna_name: p.to_optuna({"dropout": 0.1, "batch_size": 32, "depth": 2}[p.name])
                  for p in space.PARAMS if p.name != "bn_momentum"}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  user_attrs=_metrics(0.9, val, val - 0.02), value=val,
                                                  state=TrialState.COMPLETE))
    info = {"storage": storage, "name": "old-study", "root": root}
    assert _run_cli(info, tmp_path / "out") == 0
    data = json.loads((tmp_path / "out" / "old-study" / "findings.json").read_text())
    block = data["confirmation"]
    assert block["status"] == "not confirmed" and block["arms"] == {} and block["paired_difference"] is None
    assert block["recommendation"] == {"key": "trial-1/own", "trial": 1, "option": "own", "momentum": None}
    assert block["command"] == ("python -m study.run --trials 3 --study_name old-study --confirm "
                                f"{contract.DEFAULT_CONFIRM_K}")
    assert data["confirmed"][0].startswith("Not confirmed") and block["command"] in data["confirmed"][0]
    assert "the recommended setting (trial 1, as trained)" in data["confirmed"][0]
    markdown = (tmp_path / "out" / "old-study" / "report.md").read_text()
    section = markdown[markdown.index("## 2. Confirmation on fresh seeds"):markdown.index("## 3. ")]
    assert (f"Not confirmed. Confirm on {contract.DEFAULT_CONFIRM_K} fresh seeds per arm with: python -m study.run "
            "--trials 3") in section
    assert optuna.get_all_study_names(storage) == ["old-study"]
