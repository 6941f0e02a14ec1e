"""The per-epoch estimate of the best momentum: a climb on the sorted curve against measuring every point."""

from __future__ import annotations

import numpy as np
import pytest

from gaplab.curve import best_index
from gaplab.momentum import climb_to_best

MOMENTA = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]


def _climb(accuracies: list[float], *starts: int, known: dict[int, float] | None = None) -> tuple[int, list[int]]:
    measured: list[int] = []

    def measure(index: int) -> float:
        measured.append(index)
        return accuracies[index]

    best, _ = climb_to_best(MOMENTA, starts, measure, known)
    return best, measured


def test_on_a_single_peaked_curve_the_climb_finds_the_best_from_any_start_measuring_fewer_points():
    rng = np.random.default_rng(0)
    for _ in range(200):
        peak = int(rng.integers(len(MOMENTA)))
        # Rising to the peak, falling after it: stale statistics on the right, noisy averages on the left.
        accuracies = [0.9 - 0.05 * abs(i - peak) - float(rng.uniform(0, 0.01)) for i in range(len(MOMENTA))]
        for start in range(len(MOMENTA)):
            best, measured = _climb(accuracies, start)
            assert best == best_index(MOMENTA, accuracies) == peak
            assert len(measured) == len(set(measured)), "no point is measured twice"
            assert len(measured) <= abs(start - peak) + 3


def test_from_the_previous_best_when_it_is_still_best_the_climb_measures_only_its_two_neighbours():
    accuracies = [0.5, 0.6, 0.7, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    best, measured = _climb(accuracies, 3, known={6: 0.5})
    assert best == 3
    assert sorted(measured) == [2, 3, 4]


def test_the_own_points_known_accuracy_is_not_measured_again():
    accuracies = [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    best, measured = _climb(accuracies, 6, known={6: 0.2})
    assert best == 0
    assert 6 not in measured and sorted(measured) == [0, 1, 2, 3, 4, 5, 7]


def test_ties_go_to_the_larger_momentum_as_best_index_does():
    # A plateau: every point from 0 to 0.9 equally good; best_index takes 0.9, the climb walks right to it.
    accuracies = [0.8, 0.8, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert _climb(accuracies, 0)[0] == best_index(MOMENTA, accuracies) == 3
    assert _climb(accuracies, 7)[0] == 3


@pytest.mark.parametrize("start", [6, 7, 8])
def test_on_a_curve_with_two_peaks_one_climb_stops_on_its_own_and_a_second_start_finds_the_other(start):
    # Momentum 0 (the last batches' statistics) against a settled peak, with stale statistics between.
    accuracies = [0.9, 0.6, 0.5, 0.4, 0.3, 0.4, 0.7, 0.6, 0.5]
    assert _climb(accuracies, start)[0] == 6  # the local peak; the full scan's best is 0
    best, measured = _climb(accuracies, start, 0)
    assert best == best_index(MOMENTA, accuracies) == 0
    assert len(measured) < len(MOMENTA)


def test_the_answer_is_the_best_point_measured_by_any_climb():
    accuracies = [0.5, 0.55, 0.6, 0.9, 0.6, 0.5, 0.8, 0.7, 0.6]
    assert _climb(accuracies, 6, 0)[0] == 3
    assert _climb(accuracies, 0, 6)[0] == 3
