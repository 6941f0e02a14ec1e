"""The report's statistics on synthetic momentum curves: no effect must read as none, a real one must be found.

Curves are simulated directly (no study, no rendering): every grid point's val and test accuracy is a
binomial count over its images, as a model's accuracy at one momentum is.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from optuna.trial import TrialState

from study.report import stats

GRID = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
IMAGES = 400


def _curve(rng, accuracy_at, own: int):
    """(momentum, val, test, own): accuracies drawn independently around accuracy_at(momentum)."""
    val = [rng.binomial(IMAGES, accuracy_at(m)) / IMAGES for m in GRID]
    test = [rng.binomial(IMAGES, accuracy_at(m)) / IMAGES for m in GRID]
    return GRID, val, test, own


def _study(seed: int, accuracy_at=lambda m: 0.8, trials: int = 20):
    rng = np.random.default_rng(seed)
    return [_curve(rng, accuracy_at, int(rng.integers(len(GRID)))) for _ in range(trials)]


def _held_out(curves):
    return [stats.paired_gain(test, val, momentum, own) for momentum, val, test, own in curves]


def _val_scored(curves):
    return [stats.paired_gain(val, val, momentum, own) for momentum, val, test, own in curves]


def test_the_held_out_gain_has_no_bias_without_an_effect_and_the_val_scored_gain_is_biased():
    held_out = [np.median(_held_out(_study(seed))) for seed in range(100)]
    assert abs(np.mean(held_out)) <= 0.005
    # Chosen and scored on the same val images, the "gain" can never be negative and is well above 0.
    old = [np.median(_val_scored(_study(seed))) for seed in range(100)]
    assert min(old) >= 0 and np.mean(old) > 0.01


@pytest.mark.parametrize("n", [6, 8, 10, 14, 20])
def test_the_median_interval_holds_its_level_at_small_n(n):
    """Simulated coverage of the true median (0) and the rate of a false "clear", 20,000 samples each: a skewed
    continuous difference and a lumpy one (two accuracies on 50 images, ties at 0 included)."""
    rng = np.random.default_rng(n)
    reps = 20_000
    skewed = rng.exponential(size=(reps, n)) - math.log(2)
    lumpy = (rng.binomial(50, 0.8, size=(reps, n)) - rng.binomial(50, 0.8, size=(reps, n))) / 50
    _, coverage = stats.order_statistic_rank(n)
    assert coverage >= stats.CONFIDENCE
    error = 3 * math.sqrt(0.05 * 0.95 / reps)  # three standard errors of a simulated 5 % rate
    for samples in (skewed, lumpy):
        _, low, high = stats.median_intervals(samples)
        covered = np.mean((low <= 0) & (0 <= high))
        assert covered >= stats.CONFIDENCE - error, (n, covered)
        assert np.mean((low > 0) | (high < 0)) <= 1 - stats.CONFIDENCE + error
    _, low, high = stats.median_intervals(skewed)
    assert abs(np.mean((low <= 0) & (0 <= high)) - coverage) <= error  # exact for continuous data


def test_the_interval_is_order_statistics_and_needs_six_values():
    values = [0.01, 0.03, -0.02, 0.05, 0.0, 0.02]
    effect = stats.median_interval(values)
    # At n=6 only [min, max] reaches 95 %: 1 - 2 / 2**6 = 0.969.
    assert (effect.low, effect.high, effect.n) == (-0.02, 0.05, 6) and effect.coverage == pytest.approx(1 - 2 / 64)
    assert stats.order_statistic_rank(20) == (6, pytest.approx(0.9586, abs=1e-4))
    five = stats.median_interval(values[:5])
    assert five.n == 5 and math.isnan(five.low) and not five.clear and stats.MIN_PAIRED_N == 6
    assert stats.median_interval([0.01] * 6).direction == 1 and stats.median_interval([-0.01] * 6).direction == -1
    assert stats.median_interval([]).n == 0


def test_holm_corrects_the_secondary_claims_and_the_sign_test_drops_ties():
    assert stats.holm([0.01, 0.04, 0.03]) == [True, False, False]
    assert stats.holm([0.01, 0.02, 0.04]) == [True, True, True]
    assert stats.sign_test([0.0, 0.0, 1, 1, 1, 1, 1, 1]) == pytest.approx(2 / 64)
    assert stats.sign_test([0.0]) == 1.0


def test_the_noise_of_one_accuracy_and_of_a_difference_on_the_same_images():
    assert stats.noise_floor(0.8, 400) == pytest.approx(0.02)
    assert stats.difference_noise(16, 400) == pytest.approx(0.01)
    assert math.isnan(stats.difference_noise(None, 400)) and math.isnan(stats.noise_floor(0.8, None))


def test_the_split_search_pays_for_choosing_the_largest_split():
    rng = np.random.default_rng(2)
    trials = range(20)
    params = {name: {t: float(rng.uniform()) for t in trials} for name in ("dropout", "depth", "batch_size")}
    noise = {t: float(rng.normal()) for t in trials}
    assert not stats.split_search(params, noise).clear
    real = {t: float(rng.normal(scale=0.1)) + (1.0 if params["dropout"][t] < 0.5 else 0.0) for t in trials}
    found = stats.split_search(params, real)
    assert found.clear and found.top.param == "dropout" and found.top.effect < -0.5 and found.top.z < 0
    assert min(found.top.low_n, found.top.high_n) >= stats.MIN_SIDE_N
    # Fewer than 5 trials a side: nothing is searched.
    assert stats.split_search(params, {t: real[t] for t in range(8)}).top is None


def test_the_no_effect_search_is_rarely_called_clear():
    rng = np.random.default_rng(3)
    clear = 0
    for seed in range(40):
        params = {name: {t: float(rng.uniform()) for t in range(20)} for name in ("dropout", "depth", "batch_size")}
        clear += stats.split_search(params, {t: float(rng.normal()) for t in range(20)}, seed=seed,
                                    permutations=300).clear
    assert clear <= 6  # 5 % of 40 is 2; the largest of many splits, untested, is "found" far more often


def test_the_band_holds_contiguous_momenta_and_is_checked_leave_one_out():
    # Near the best from 0.5 to 0.99 in every curve but one; 0.8 is off in one curve of eight (7/8 >= 3/4).
    good = {m: 0.5 <= m <= 0.99 for m in GRID}
    curves = [dict(good) for _ in range(8)]
    curves[0][0.8] = False
    curves[1] = {m: m >= 0.995 for m in GRID}
    assert stats.band(curves) == (0.5, 0.99)
    assert stats.band_middle(curves, (0.5, 0.99)) == 0.9
    assert stats.leave_one_out_hits(curves) == (7, 8)
    # A hole in the middle splits the band: every point between its ends must be inside.
    holed = [{**good, 0.9: False} for _ in range(8)]
    assert stats.band(holed) == (0.95, 0.99)
    assert stats.band(curves[:3]) is None  # too few trials


def test_the_band_of_a_simulated_study_is_found_and_predicts_held_out_trials():
    def accuracy_at(momentum):
        return 0.55 if momentum > 0.95 else 0.8

    rng = np.random.default_rng(4)
    curves = [_curve(np.random.default_rng(s), accuracy_at, int(rng.integers(len(GRID)))) for s in range(20)]
    near = [stats.near_best(test, val, momentum, tolerance=0.05) for momentum, val, test, own in curves]
    low, high = stats.band(near)
    assert high <= 0.95 and low <= 0.5
    hits, checked = stats.leave_one_out_hits(near)
    assert checked == 20 and hits >= 16


# ---------------------------------------------------------------- the whole report under no momentum effect
# Synthetic studies stored as the real study stores them (trial views whose user attributes hold the curve
# as momentum_curve.json), run through the functions that make the findings and the first screen.
CONTROL_GRID = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
VAL_IMAGES, TEST_IMAGES = 60, 400
# How often an image's correctness at one momentum (or with PreciseBN) is the trial's base one: the same
# weights classify most images alike whatever the statistics, so val ties between momenta are common.
SHARED = 0.8


def _correct(rng, accuracy: float, options: int, images: int, own: int, own_loss: float,
             shared: float) -> np.ndarray:
    """Per option (the grid's momenta, then PreciseBN) and image: classified right? Each image is the trial's
    base one with probability `shared`. The own option (index `own`) is `own_loss` less accurate, the others
    are alike."""
    base = rng.random(images) < accuracy
    fresh = rng.random((options, images)) < accuracy
    fresh[own] = rng.random(images) < accuracy - own_loss / (1 - shared)
    return np.where(rng.random((options, images)) < shared, base, fresh)


def _control_view(rng, number: int, complete: bool, own_loss: float, shared: float, train: float = 0.95):
    from gaplab.curve import MomentumCurve
    from study.report.views import TrialView

    accuracy = float(rng.uniform(0.6, 0.85))
    own = int(rng.integers(len(CONTROL_GRID)))
    options = len(CONTROL_GRID) + 1
    val = _correct(rng, accuracy, options, VAL_IMAGES, own, own_loss, shared).mean(axis=1)
    test_right = _correct(rng, accuracy, options, TEST_IMAGES, own, own_loss, shared)
    test = test_right.mean(axis=1)
    differs = (test_right != test_right[own]).sum(axis=1)
    train = max(train, float(val.max()))  # fit's accuracy: at least what the model scores anywhere
    curve = MomentumCurve(
        own_momentum=CONTROL_GRID[own], momentum=CONTROL_GRID, val_accuracy=tuple(float(v) for v in val[:-1]),
        train_eval_accuracy=tuple(float(v) for v in val[:-1]), train_accuracy=train,
        recalibrated_val_accuracy=float(val[-1]), recalibrated_train_eval_accuracy=float(val[-1]),
        test_accuracy=tuple(float(t) for t in test[:-1]), train_eval_images=VAL_IMAGES, val_images=VAL_IMAGES,
        test_images=TEST_IMAGES, recalibrated_test_accuracy=float(test[-1]),
        test_differs_from_own=tuple(int(d) for d in differs[:-1]),
        recalibrated_test_differs_from_own=int(differs[-1]))
    steps = float(rng.integers(20, 2000))
    attrs = {"train_accuracy": train, "val_accuracy": float(val[own]), "test_accuracy": float(test[own]),
             "gap": train - float(val[own]), "steps": steps, contract_curve_attr(): curve.as_dict()}
    state = TrialState.COMPLETE if complete else TrialState.PRUNED
    return TrialView(number, state, None, True, {"bn_momentum": CONTROL_GRID[own]}, attrs,
                     float(val[own]) if complete else None, {})


def contract_curve_attr() -> str:
    from study.contract import MOMENTUM_CURVE_ATTR

    return MOMENTUM_CURVE_ATTR


def _control(n: int, reps: int, seed: int, own_loss: float = 0.0, shared: float = SHARED,
             pruned: int | None = None) -> dict[str, float]:
    """Over `reps` synthetic studies of n complete trials (and `pruned`, default n // 2, pruned ones): how often
    the first screen calls its effect clear (either way); for the headline, the grid option and the band
    option, how often their intervals hold the truth (0 without an effect) and the mean sign of their estimates (0 for a
    median-unbiased one)."""
    from study.report import build, paired

    rng = np.random.default_rng(seed)
    kinds = {"headline": "headline_effect", "grid": "option_grid", "band": "option_band"}
    clear, covers, signs = 0, dict.fromkeys(kinds, 0), dict.fromkeys(kinds, 0)
    for _ in range(reps):
        trials = n + (n // 2 if pruned is None else pruned)
        views = [_control_view(rng, i, i < n, own_loss, shared) for i in range(trials)]
        found = paired.paired_findings(paired.with_curves(views), views)
        screen = build.headline(found, True, titles={})
        by_kind = {f.kind: f for f in found}
        assert by_kind["headline_effect"].text in screen
        clear += any(words in by_kind["headline_effect"].text for words in ("; clear: ", "; clearly worse: "))
        for name, kind in kinds.items():
            finding = by_kind.get(kind)
            if finding is None or finding.interval is None:  # no band fitted, or too few trials: nothing claimed
                covers[name] += 1
                continue
            covers[name] += finding.interval[0] <= 0 <= finding.interval[1]
            signs[name] += int(np.sign(finding.estimate))
    return {"clear": clear / reps, **{f"{name}_covers": covers[name] / reps for name in kinds},
            **{f"{name}_sign": signs[name] / reps for name in kinds}}


CONTROL_REPS = 300


def _limits(reps: int) -> tuple[float, float]:
    """Three standard errors of a simulated 5 % rate, and of a mean sign around 0, over `reps` studies."""
    return 3 * math.sqrt(0.05 * 0.95 / reps), 3 / math.sqrt(reps)


@pytest.mark.parametrize(("n", "shared", "pruned"), [
    (6, SHARED, None), (10, SHARED, None), pytest.param(20, SHARED, None, marks=pytest.mark.slow),
    pytest.param(20, 0.3, 20, marks=pytest.mark.slow), pytest.param(18, 0.3, 20, marks=pytest.mark.slow),
    pytest.param(20, 0.3, 0, marks=pytest.mark.slow)])
def test_the_whole_report_without_a_momentum_effect_rarely_calls_one_clear(n, shared, pruned):
    """Images classified alike at most momenta (many val ties), or mostly independently (fewer ties at 0), with
    half as many or as many trials pruned as complete."""
    result = _control(n, CONTROL_REPS, seed=n, shared=shared, pruned=pruned)
    rate_error, sign_error = _limits(CONTROL_REPS)
    assert result["clear"] <= 1 - stats.CONFIDENCE + rate_error, result
    for name in ("headline", "grid", "band"):
        assert result[f"{name}_covers"] >= stats.CONFIDENCE - rate_error, result
        assert abs(result[f"{name}_sign"]) <= sign_error, result


def test_a_real_five_point_effect_is_found_by_the_whole_report_at_n_20():
    result = _control(20, 100, seed=1, own_loss=0.05)
    assert result["clear"] >= 0.8 and result["headline_sign"] == 1.0, result


def _break_val_ties_by_test(curve):
    return max(range(len(curve.momentum)), key=lambda i: (curve.val_accuracy[i], curve.test_accuracy[i],
                                                         curve.momentum[i]))


def _first_clear_subgroup(effects):
    return next((name for name, effect in effects.items() if effect.clear), "complete")


@pytest.mark.slow
@pytest.mark.parametrize(("target", "replacement", "n", "shared", "pruned", "broken"), [
    ("choose", _break_val_ties_by_test, 20, SHARED, None, "grid_sign"),
    # Fitted on the group's test accuracies, the band's momentum leans to each trial's lucky test images.
    ("fitting_accuracy", lambda curve: curve.test_accuracy, 20, 0.3, 0, "band_sign"),
    # 18 complete trials (halves of 9 by horizon) and 20 pruned: the subgroups' intervals reach 95 % with
    # little to spare, as in the 38-trial studies where choosing among them first showed.
    ("headline_effect", _first_clear_subgroup, 18, 0.3, 20, "clear"),
])
def test_each_way_of_letting_test_choose_fails_the_control(monkeypatch, target, replacement, n, shared, pruned,
                                                           broken):
    from study.report import paired

    monkeypatch.setattr(paired, target, replacement)
    reps = 600
    result = _control(n, reps, seed=n, shared=shared, pruned=pruned)
    rate_error, sign_error = _limits(reps)
    failed = (result[broken] > 1 - stats.CONFIDENCE + rate_error if broken == "clear"
              else abs(result[broken]) > sign_error)
    print(f"\n{target} replaced: {result}")
    assert failed, result


def test_the_first_screen_says_first_when_the_effect_holds_only_for_trials_stopped_early():
    from study.report import build, paired

    rng = np.random.default_rng(5)
    views = [_control_view(rng, i, i < 20, 0.0 if i < 20 else 0.15, SHARED) for i in range(40)]
    found = paired.paired_findings(paired.with_curves(views), views)
    screen = build.headline(found, True, titles={})
    assert screen[0].startswith("The effect holds only for trials the pruner stopped early (+"), screen
    assert "for the trials that trained to the end: " in screen[0] and screen[1].startswith("What to do (chosen on val")


def test_the_first_screen_says_first_when_the_best_setting_has_no_gap():
    from study.report import build, paired

    rng = np.random.default_rng(6)
    # Fit's train accuracy no higher than the best val accuracy anywhere on the curve: no gap to close.
    views = [_control_view(rng, i, True, 0.0, SHARED, train=0.0) for i in range(10)]
    found = paired.paired_findings(paired.with_curves(views), views)
    screen = build.headline(found, True, titles={})
    best = next(f for f in found if f.kind == "best_setting")
    number = re.search(r"chosen on val: trial (\d+) ", best.text).group(1)
    assert screen[0].startswith(f"The study's best setting (trial {number}, chosen on val) has no gap to close"), screen
    assert "nan" not in best.text


# ---------------------------------------------------------------- a confirmation's K seeds: the t-interval
def _t_coverage(samples: np.ndarray, truth: float) -> float:
    _, low, high = stats.mean_intervals(samples)
    return float(np.mean((low <= truth) & (truth <= high)))


@pytest.mark.parametrize("k", [3, 5, 10])
def test_the_t_interval_of_k_seeds_holds_its_level(k):
    """Simulated coverage of the true mean by the 95 % t-interval over k seeds' accuracies, 20,000 samples each:
    normally spread (exact), counted on 100 images (lumpy, ties), and skewed and bounded (Beta(18, 2): mean
    0.9, skewness −1.1, as a few seeds landing low make it); and of a paired difference of two such arms. What
    it finds is what stats.T_INTERVAL_COVERAGE tells the reader."""
    rng = np.random.default_rng(k)
    reps = 20_000
    error = 3 * math.sqrt(0.05 * 0.95 / reps)
    normal = _t_coverage(rng.normal(0.8, 0.03, size=(reps, k)), 0.8)
    lumpy = _t_coverage(rng.binomial(100, 0.9, size=(reps, k)) / 100, 0.9)
    skewed = _t_coverage(rng.beta(18, 2, size=(reps, k)), 0.9)
    difference = _t_coverage(rng.beta(18, 2, size=(reps, k)) - rng.beta(16, 4, size=(reps, k)), 0.9 - 0.8)
    assert abs(normal - stats.CONFIDENCE) <= error, normal
    assert lumpy >= 0.94 - error and skewed >= 0.92 - error and difference >= 0.94 - error, (lumpy, skewed, difference)
    assert skewed <= stats.CONFIDENCE, skewed  # skew costs coverage: the report says so, and by how much


def test_the_mean_interval_is_the_t_interval_and_needs_two_seeds():
    mean = stats.mean_interval([0.80, 0.82, 0.78, math.nan])
    # mean 0.80, standard deviation 0.02, t(0.975, 2 df) = 4.3027: half-width 4.3027 · 0.02 / √3 = 0.04968.
    assert mean.n == 3 and mean.estimate == pytest.approx(0.80)
    assert (mean.low, mean.high) == (pytest.approx(0.80 - 0.04968, abs=1e-5), pytest.approx(0.80 + 0.04968, abs=1e-5))
    assert not mean.holds_zero and stats.mean_interval([-0.01, 0.02, 0.03]).holds_zero
    one = stats.mean_interval([0.7])
    assert one.n == 1 and one.estimate == 0.7 and math.isnan(one.low) and one.holds_zero
    assert stats.mean_interval([]).n == 0
