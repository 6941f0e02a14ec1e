"""The report's statistics on synthetic momentum curves: no effect must read as none, a real one must be found.

Curves are simulated directly (no study, no rendering): every grid point's val and test accuracy is a
binomial count over its images, as a model's accuracy at one momentum is.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

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


def test_no_momentum_effect_reads_as_none_and_the_val_scored_gain_is_biased():
    effects = [stats.median_interval(_held_out(_study(seed)), seed=seed) for seed in range(200)]
    assert all(effect.n == 20 for effect in effects)
    assert abs(np.mean([effect.estimate for effect in effects])) <= 0.005
    covered = np.mean([effect.low <= 0 <= effect.high for effect in effects])
    assert covered >= 0.90, covered
    assert np.mean([effect.clear for effect in effects]) <= 0.10
    # Chosen and scored on the same val images, the "gain" can never be negative and is well above 0.
    old = [stats.median_interval(_val_scored(_study(seed)), seed=seed).estimate for seed in range(200)]
    assert min(old) >= 0 and np.mean(old) > 0.01


def test_a_real_momentum_effect_is_found():
    # Momenta above 0.95 had too few steps: 10 points lower; every trial trained at such a momentum.
    def accuracy_at(momentum):
        return 0.7 if momentum > 0.95 else 0.8

    rng = np.random.default_rng(0)
    curves = [_curve(rng, accuracy_at, own=len(GRID) - 1 - int(rng.integers(3))) for _ in range(20)]
    effect = stats.median_interval(_held_out(curves))
    assert effect.clear and effect.low > 0.05 and effect.estimate == pytest.approx(0.1, abs=0.03)
    # Too few trials are never a clear effect, however large.
    assert not stats.median_interval(_held_out(curves[:4])).clear


def test_the_bootstrap_interval_is_seeded_and_ordered():
    values = [0.01, 0.03, -0.02, 0.05, 0.0, 0.02]
    first, second = stats.median_interval(values, seed=3), stats.median_interval(values, seed=3)
    assert first == second and first.low <= first.estimate <= first.high and first.n == 6
    assert stats.median_interval([]).n == 0


def test_images_are_counted_from_the_accuracies_and_give_the_noise_floor():
    rng = np.random.default_rng(1)
    accuracies = [float(np.float32(k / 379)) for k in rng.integers(200, 379, size=30)]
    assert stats.images_counted(accuracies) == 379
    assert stats.noise_floor(0.8, 400) == pytest.approx(0.02)
    assert stats.images_counted([0.5, 1 / math.pi, 1 / math.e, 2 ** -0.5]) is None


def test_the_split_search_pays_for_choosing_the_largest_split():
    rng = np.random.default_rng(2)
    trials = range(20)
    params = {name: {t: float(rng.uniform()) for t in trials} for name in ("dropout", "depth", "batch_size")}
    noise = {t: float(rng.normal()) for t in trials}
    assert not stats.split_search(params, noise).clear
    real = {t: float(rng.normal(scale=0.1)) + (1.0 if params["dropout"][t] < 0.5 else 0.0) for t in trials}
    found = stats.split_search(params, real)
    assert found.clear and found.top.param == "dropout" and found.top.effect < -0.5
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
