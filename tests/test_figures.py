"""Trial figures: the blitting renderers must draw exactly what a fresh renderer draws. The report's figures: legends, a
band one can see, one line per trial."""

from __future__ import annotations

import numpy as np
import pytest

from study import shared_figures as figures

NAMES = ("cat", "dog", "<img src=x>")


def test_confusion_renderer_leaves_nothing_of_the_previous_matrix():
    reused = figures.ConfusionRenderer(NAMES)
    first = reused(np.array([[9, 0, 1], [2, 7, 0], [0, 0, 12]]), "Confusion matrix (val)").copy()
    second_matrix = np.array([[1, 5, 0], [0, 3, 3], [40, 0, 2]])
    second = reused(second_matrix, "Confusion matrix (test)")
    fresh = figures.ConfusionRenderer(NAMES)(second_matrix, "Confusion matrix (test)")
    assert second.shape == fresh.shape and second.shape[2] == 4
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, fresh)


def test_curves_renderer_redraws_a_shorter_run_cleanly():
    reused = figures.CurvesRenderer(epochs=4)
    reused({"train_accuracy": [0.2, 0.5, 0.7, 0.9], "val_accuracy": [0.1, 0.3, 0.6, 0.8]}, "run a")
    short = {"train_accuracy": [0.4, 0.6], "val_accuracy": [0.35, 0.5]}
    np.testing.assert_array_equal(reused(short, "run b"), figures.CurvesRenderer(epochs=4)(short, "run b"))


def test_confusion_matrix_of_the_wrong_size_names_both_sizes():
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*3 class names"):
        figures.ConfusionRenderer(NAMES)(np.eye(2, dtype=int), "x")


def test_confusion_matrix_of_many_classes_is_capped_and_drawn_without_cell_numbers():
    names = tuple(f"class{index}" for index in range(200))
    matrix = np.random.default_rng(0).integers(0, 5, size=(200, 200))
    pixels = figures.ConfusionRenderer(names)(matrix, "Confusion matrix (val)")
    assert pixels.shape[0] <= 100 * figures.MAX_FIGURE_INCHES and pixels.shape[1] <= 100 * figures.MAX_FIGURE_INCHES
    figure = figures.confusion_figure(matrix, names, "x")
    assert figure.get_size_inches().max() <= figures.MAX_FIGURE_INCHES
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == [] and "200 classes" in figure.axes[0].get_xlabel()


def test_confusion_matrix_of_few_classes_keeps_its_numbers():
    figure = figures.confusion_figure(np.array([[3, 1], [0, 4]]), ("a", "b"), "x")
    assert sorted(text.get_text() for text in figure.axes[0].texts) == ["0", "1", "3", "4"]


def _curve(own: float, shift: float) -> dict:
    momenta = [0.0, 0.5, 0.9, own, 0.99, 0.999]
    return {"own_momentum": own, "momentum": momenta,
            "val_accuracy": [0.6 + shift - 0.2 * m for m in momenta],
            "train_eval_accuracy": [0.7 + shift - 0.3 * m for m in momenta],
            "recalibrated": {"val_accuracy": 0.65 + shift, "train_eval_accuracy": 0.75 + shift}}


GRID = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def test_momentum_renderer_redraws_another_trials_curve_cleanly():
    reused = figures.MomentumCurveRenderer(GRID, decades=3)
    first = reused(_curve(0.95, 0.2), "trial a").copy()
    second = reused(_curve(0.7, 0.0), "trial b")
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, figures.MomentumCurveRenderer(GRID, decades=3)(_curve(0.7, 0.0), "trial b"))


def test_the_momentum_figure_labels_every_grid_momentum_and_keeps_its_legend_off_the_data():
    renderer = figures.MomentumCurveRenderer(GRID, decades=3)
    renderer(_curve(0.97, 0.1), "Trial 12: momentum curve")
    axes = renderer.figure.axes[0]
    labels = {round(1.0 - tick, 6): label.get_text()
              for tick, label in zip(axes.get_xticks(), axes.get_xticklabels())}
    assert labels == {round(m, 6): f"{m:g}" for m in GRID}
    assert "0.995" in labels.values() and "0.8" in labels.values()
    assert axes.get_xticks(minor=True).size == 0, "no unlabelled ticks between the grid's"
    legend = renderer.legend.get_window_extent()
    plot_area = axes.get_window_extent()
    assert legend.y1 < plot_area.y0, "the legend sits below the axes, off the data"
    assert legend.y0 >= 0 and legend.x0 >= 0 and legend.x1 <= renderer.figure.bbox.x1, "and inside the PNG"


def test_the_momentum_axis_covers_every_momentum_of_the_curve():
    assert figures.momentum_decades([0.0, 0.5, 0.999]) == 3
    assert figures.momentum_decades([0.9, 0.9999]) == 4
    assert figures.momentum_decades([0.99995]) == 5


def test_class_names_in_any_script_draw_or_warn_once_naming_the_font_package(monkeypatch, capsys):
    # Japanese class names gave 8 Matplotlib glyph warnings per figure and drew as boxes, naming no remedy.
    import io
    import warnings

    monkeypatch.setattr(figures, "_warned_missing", set())
    names = ("日本", "cat", "Ωmega")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        families = figures.label_fonts(names)
        for _ in range(2):
            figures.confusion_figure(np.eye(3, dtype=int), names, "t").savefig(io.BytesIO(), format="png")
            figures.ConfusionRenderer(names)(np.eye(3, dtype=int), "t")
    assert not [str(w.message) for w in caught if "Glyph" in str(w.message)]
    err = capsys.readouterr().err
    assert families[0] == "DejaVu Sans" and "Last Resort High-Efficiency" not in families
    if len(families) > 1:  # a font with the CJK characters is installed: it draws them, nothing to say
        assert err == ""
    else:
        assert err == ("warning: no installed font has the characters '日本' of the class names, so figures draw "
                       "them as boxes; install one, e.g. apt-get install fonts-noto-cjk (Debian, Ubuntu).\n")


def test_a_font_that_has_the_missing_characters_is_added_after_the_default(monkeypatch, capsys):
    monkeypatch.setattr(figures, "_warned_missing", set())
    installed = (("/fonts/a.ttf", "Latin Only"), ("/fonts/b.ttf", "Has Kana"))
    monkeypatch.setattr(figures, "_installed_fonts", lambda: installed)
    real = figures._charmap
    monkeypatch.setattr(figures, "_charmap", lambda path: {"/fonts/a.ttf": frozenset(map(ord, "abc")),
                                                           "/fonts/b.ttf": frozenset(map(ord, "かな"))}.get(path)
                        or real(path))
    assert figures.label_fonts(["かな", "cat", "ж"]) == ["DejaVu Sans", "Has Kana"]
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- the report's figures
def _drawn(monkeypatch):
    """The matplotlib figures the report's figure functions draw, instead of their PNG bytes."""
    from study.report import figures as report_figures

    drawn = []
    monkeypatch.setattr(report_figures, "_png", lambda figure: drawn.append(figure) or b"\x89PNG")
    return drawn


def _view(number: int, state, gap: float, batchnorm: bool = True, momentum: float = 0.9, steps: float = 100.0):
    from study.report.views import TrialView

    params = {"batch_size": 32, "dropout": 0.2, "depth": 3} | ({"bn_momentum": momentum} if batchnorm else {})
    return TrialView(number, state, None, batchnorm, params,
                     {"gap": gap, "val_accuracy": 0.9 - gap, "steps": steps}, 0.9 - gap, {})


def test_ema_horizon_names_complete_and_pruned_trials_in_its_legend(monkeypatch):
    from optuna.trial import TrialState

    from study.report.figures import horizon_figure

    drawn = _drawn(monkeypatch)
    horizon_figure([_view(0, TrialState.COMPLETE, 0.1), _view(1, TrialState.COMPLETE, 0.2, momentum=0.99),
                    _view(2, TrialState.PRUNED, 0.4, momentum=0.999), _view(3, TrialState.COMPLETE, 0.0, False)])
    legend = drawn[0].axes[0].get_legend()
    assert legend.get_title().get_text() == "trials with batchnorm"
    assert [text.get_text() for text in legend.get_texts()] == ["complete (2)", "pruned (1)", "horizon = 1"]


def test_the_band_figure_shows_a_one_momentum_band_and_a_group_without_one(monkeypatch):
    from matplotlib.collections import PolyCollection

    from study.report.figures import band_figure
    from study.report.paired import Band

    drawn = _drawn(monkeypatch)
    band_figure([Band(12, 162, 0.0, 0.0, 0.0, 9, dict.fromkeys(range(9), 0.0), 8),
                 Band(220, 1105, None, None, None, 9, {}, 0)])
    ax = drawn[0].axes[0]
    box = next(c for c in ax.collections if isinstance(c, PolyCollection))
    low, high = box.get_paths()[0].vertices[:, 1].min(), box.get_paths()[0].vertices[:, 1].max()
    assert high / low > 1.5  # a band of one momentum is a box, not a line
    texts = [t.get_text() for t in ax.texts]
    assert "bn_momentum 0\nn=9, leave-one-out 8/9" in texts and "no band\nn=9" in texts
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["band: momenta to train at",
                                                                   "step group without a band"]


def test_parallel_coordinates_draw_one_line_per_finished_trial(monkeypatch):
    import math

    from optuna.trial import TrialState

    from study.report.figures import parallel_axes, parallel_figure

    drawn = _drawn(monkeypatch)
    views = [_view(0, TrialState.COMPLETE, 0.05, momentum=0.5), _view(1, TrialState.PRUNED, 0.4, momentum=0.999),
             _view(2, TrialState.COMPLETE, 0.1, batchnorm=False)]
    parallel_figure(views)
    ax = drawn[0].axes[0]
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == len(parallel_axes())]
    assert len(lines) == 3 and sorted(line.get_linestyle() for line in lines) == ["-", "-", "--"]
    # The trial without batchnorm has no momentum: its line starts at batch_size.
    assert sum(math.isnan(line.get_ydata()[0]) for line in lines) == 1
    assert [tick.get_text() for tick in ax.get_xticklabels()] == [label for label, *_ in parallel_axes()]
    assert parallel_figure(views[:1]) is None  # one trial has nothing to compare
