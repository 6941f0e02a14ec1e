"""The report's figures, as PNG bytes: every trial's momentum curve, parameters, EMA horizon,
momentum × batch size, learning curves and the best trial's confusion matrix. Trial figures, and
the confusion-matrix and learning-curve figures the report shares with the trials, are in
`study.shared_figures`.
"""

from __future__ import annotations

import functools
import io
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter
from optuna.trial import TrialState

from study import contract, shared_figures, space
from study.report.views import TrialView


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _state_colours(views):
    return ["C0" if v.state == TrialState.COMPLETE else "C1" for v in views]


def params_figure(finished: list[TrialView]) -> bytes | None:
    if not finished:
        return None

    params = space.PARAMS
    # One column per parameter, about 3.25 inches each (13 inches for the four of the seed's study).
    figure = Figure(figsize=(3.25 * len(params), 6))
    axes = figure.subplots(2, len(params), sharey="row", squeeze=False)
    for column, param in enumerate(params):
        subset = [v for v in finished if param.name in v.params and param.exists(v.batchnorm)]
        for row, target in enumerate(("gap", "val_accuracy")):
            ax = axes[row][column]
            ax.scatter([plotted(param, v) for v in subset], [v.get(target) for v in subset],
                       c=_state_colours(subset), s=28, alpha=0.8)
            _axis(ax, param)
            if column == 0:
                ax.set_ylabel("gap (train − val)" if target == "gap" else "val accuracy")
            ax.grid(alpha=0.3)
    figure.suptitle("Gap and val accuracy per parameter (blue complete, orange pruned)")
    figure.tight_layout()
    return _png(figure)


def plotted(param: space.Param, view: TrialView) -> float:
    """The value a figure plots for a trial: 1 − value for a complement (momentum), NaN where it has none."""
    if param.name not in view.params or not param.exists(view.batchnorm):
        return math.nan
    value = view.params[param.name]
    return 1 - value if param.complement else value


def _axis(ax, param: space.Param) -> None:
    if param.scale == "log2":
        ax.set_xscale("log", base=2)
    elif param.scale == "log":
        ax.set_xscale("log")
    ax.set_xlabel(param.label + {"log": " (log)", "log2": " (log2)"}.get(param.scale, ""))


def horizon_figure(finished: list[TrialView]) -> bytes | None:
    subset = [v for v in finished if v.batchnorm and math.isfinite(v.horizon) and v.horizon > 0]
    if not subset:  # nothing to place on a log axis
        return None
    figure = Figure(figsize=(7, 4.5))
    ax = figure.subplots()
    for state, colour in ((TrialState.COMPLETE, "C0"), (TrialState.PRUNED, "C1")):
        group = [v for v in subset if v.state == state]
        if group:
            ax.scatter([v.horizon for v in group], [v.get("gap") for v in group], c=colour, s=30,
                       label=f"{state.name.lower()} ({len(group)})")
    ax.set_xscale("log")
    ax.axvline(1.0, color="red", linestyle="--", label="horizon = 1")
    ax.set_xlabel("EMA horizon: training steps × (1 − bn_momentum) (log)")
    ax.set_ylabel("gap (train − val)")
    ax.set_title("Gap vs how far batchnorm statistics could settle")
    ax.grid(alpha=0.3)
    ax.legend(title="trials with batchnorm", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def momentum_batch_figure(finished: list[TrialView]) -> bytes | None:
    subset = [v for v in finished if v.batchnorm and "bn_momentum" in v.params and "batch_size" in v.params]
    if not subset:
        # An empty colour scale on log axes is what raised "Data cannot be log-scaled" into the caveats.
        return None
    figure = Figure(figsize=(7, 4.5))
    ax = figure.subplots()
    points = ax.scatter([1 - v.params["bn_momentum"] for v in subset], [v.params["batch_size"] for v in subset],
                        c=[v.get("gap") for v in subset], cmap="viridis", s=60, edgecolors="k")
    figure.colorbar(points, ax=ax, label="gap (train − val)")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("1 − bn_momentum (log)")
    ax.set_ylabel("batch_size (log2)")
    ax.set_title("Momentum × batch size, coloured by gap")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def curves_figure(client, top: list[TrialView]) -> bytes | None:
    histories = {}
    for v in top:
        if not v.run_id:
            continue
        history = {}
        for key in ("train_accuracy", "val_accuracy"):
            metrics = sorted(client.get_metric_history(v.run_id, key), key=lambda m: m.step)
            history[key] = [m.value for m in metrics]
        if any(history.values()):
            histories[f"trial {v.number}"] = history
    if not histories:
        return None
    return _png(shared_figures.learning_curves_figure(histories, f"Learning curves of the top {len(histories)} trials"))


def confusion_png(client, best: TrialView) -> tuple[bytes, list[str]] | None:
    if not best.run_id:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(best.run_id, contract.CONFUSION_MATRIX_ARTIFACT, folder)
        data = json.loads(Path(path).read_text())
    names = [str(name) for name in data["class_names"]]
    figure = shared_figures.confusion_figure(data["matrix"], names,
                                      f"Trial {best.number}, {data.get('split', 'val')} split")
    return _png(figure), names


def momentum_curves_figure(paired: list[TrialView], labels: dict[int, str]) -> bytes | None:
    """Every trial's momentum curve: val accuracy against 1 − momentum (log), coloured by training steps; the
    curves of `labels` (trial number -> name) drawn thicker and named in the legend."""
    if not paired:
        return None
    steps = [v.get("steps") for v in paired]
    norm = LogNorm(vmin=min(steps), vmax=max(steps) * (1.0001 if min(steps) == max(steps) else 1))
    colours = colormaps["viridis"]
    figure = Figure(figsize=(8, 5))
    ax = figure.subplots()
    for index, v in enumerate(sorted(paired, key=lambda v: v.number in labels)):
        curve, colour = v.curve, colours(norm(v.get("steps")))
        named = labels.get(v.number)
        style = {"color": f"C{index % 10}", "linewidth": 2.4, "alpha": 1.0,
                 "label": f"trial {v.number} ({named})"} if named else {"color": colour, "linewidth": 1.0, "alpha": 0.6}
        ax.plot([1 - m for m in curve.momentum], curve.val_accuracy, "-", **style)
        ax.plot([1 - curve.momentum[curve.own]], [curve.val_accuracy[curve.own]], "o", color=style["color"],
                markeredgecolor="k", markersize=5)
    shared_figures.momentum_axis(ax, shared_figures.momentum_decades(m for v in paired for m in v.curve.momentum))
    ax.set_ylabel("val accuracy (same weights)")
    ax.set_title(f"Momentum curves of {len(paired)} trials (dot: the trial's own momentum)")
    ax.grid(alpha=0.3)
    if any(v.number in labels for v in paired):
        ax.legend(fontsize=8, loc="lower left")
    figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, label="training steps, unlabelled curves (log)")
    figure.tight_layout()
    return _png(figure)


def band_figure(bands) -> bytes | None:
    """Training steps against momentum: each step group's band (`study.report.paired.Band`) as a box over the
    group's steps, labelled with its momenta, size and leave-one-out hits; a group with no band hatched grey."""
    if not any(b.low is not None for b in bands):
        return None
    figure = Figure(figsize=(8, 5.5))
    ax = figure.subplots()
    decades = shared_figures.momentum_decades(m for b in bands if b.low is not None for m in (b.low, b.high))
    # A band of one grid momentum, or a group of one step count, still gets a box one can see.
    half_height, half_width = 10 ** 0.12, 10 ** 0.06
    for b in bands:
        left, right = b.steps_low / half_width, b.steps_high * half_width
        if b.low is None:
            ax.axvspan(left, right, facecolor="none", edgecolor="0.6", hatch="//", linewidth=0.8)
            ax.text(math.sqrt(left * right), 1.0, f"no band\nn={b.n}", ha="center", va="bottom", fontsize=8,
                    color="0.4")
            continue
        top, bottom = (1 - b.low) * half_height, max(1 - b.high, 10.0 ** -decades) / half_height
        ax.fill_between([left, right], bottom, top, color="C2", alpha=0.4, edgecolor="C2", linewidth=1.2)
        momenta = f"{b.low:g}" if b.low == b.high else f"{b.low:g}–{b.high:g}"
        # The y axis grows upwards in momentum: `bottom` (the smaller 1 − momentum) is the box's upper edge.
        ax.text(math.sqrt(left * right), bottom / 1.1, f"bn_momentum {momenta}\nn={b.n}, leave-one-out "
                f"{b.hits}/{b.checked}", ha="center", va="bottom", fontsize=8)
    ax.set_xscale("log")
    low, high = min(b.steps_low for b in bands), max(b.steps_high for b in bands)
    ax.set_xlim(low / 2, high * 2)
    ax.set_xlabel("training steps of the trials in the group (log)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda x, _: f"{x:g}" if x > 0 and round(x / 10 ** math.floor(math.log10(x))) in (2, 5) else ""))
    shared_figures.momentum_axis(ax, decades, which="y")
    ax.set_title("Momenta within one val standard error of the val-best for 3 in 4 trials")
    ax.grid(alpha=0.3)
    ax.legend(handles=[Patch(color="C2", alpha=0.4, label="band: momenta to train at"),
                       Patch(facecolor="none", edgecolor="0.6", hatch="//", label="step group without a band")],
              fontsize=8, loc="upper right")
    figure.tight_layout()
    return _png(figure)


def parallel_axes() -> list[tuple[str, Callable[[TrialView], float], bool]]:
    """The parallel-coordinates figure's axes: (label, value of a trial view, log scale); each searched parameter,
    then gap and val accuracy."""
    return [*((p.label, functools.partial(plotted, p), p.scale != "linear") for p in space.PARAMS),
            ("gap", lambda v: v.get("gap"), False), ("val accuracy", lambda v: v.get("val_accuracy"), False)]


PARALLEL_CAPTION = ("One line per finished trial across its searched values, gap and val accuracy; colour is the "
                    "gap (darker: smaller), complete trials solid, pruned dashed; trials without batchnorm have no "
                    "momentum and start at batch_size. Each axis runs from its smallest to its largest value in the "
                    "study (momentum and batch size on log scales).")


def parallel_figure(finished: list[TrialView]) -> bytes | None:
    """Parallel coordinates: every finished trial as one line across `parallel_axes()`, coloured by its gap."""
    trials = [v for v in finished if math.isfinite(v.get("gap"))]
    if len(trials) < 2:
        return None
    columns = []
    for label, value, log in parallel_axes():
        raw = [value(v) for v in trials]
        scaled = [math.log(x) if log and x > 0 else (x if not log else math.nan) for x in raw]
        finite = [x for x in scaled if math.isfinite(x)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
        span = high - low or 1.0
        columns.append((label, [(x - low) / span if math.isfinite(x) else math.nan for x in scaled],
                        [x for x in raw if math.isfinite(x)]))
    gaps = [v.get("gap") for v in trials]
    norm = Normalize(min(gaps), max(gaps) if max(gaps) > min(gaps) else min(gaps) + 1e-9)
    colours = colormaps["viridis_r"]
    figure = Figure(figsize=(11, 5))
    ax = figure.subplots()
    xs = list(range(len(columns)))
    for row, view in sorted(enumerate(trials), key=lambda item: -item[1].get("gap")):
        ys = [column[1][row] for column in columns]
        ax.plot(xs, ys, color=colours(norm(view.get("gap"))), linewidth=1.4, alpha=0.85,
                linestyle="-" if view.state == TrialState.COMPLETE else "--")
    for x, (_, _, present) in zip(xs, columns):
        ax.axvline(x, color="0.3", linewidth=0.8)
        if present:
            ax.text(x, -0.04, _tick(min(present)), ha="center", va="top", fontsize=8)
            ax.text(x, 1.04, _tick(max(present)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [column[0] for column in columns])
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.set_xlim(-0.3, len(columns) - 0.7)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Parallel coordinates of {len(trials)} finished trials (axis ends: smallest and largest value)")
    figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, label="gap (train − val)")
    ax.legend(handles=[Line2D([], [], color="0.3", label="complete"),
                       Line2D([], [], color="0.3", linestyle="--", label="pruned")],
              fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.08), ncol=2, frameon=False)
    figure.tight_layout()
    return _png(figure)


def _tick(value: float) -> str:
    return f"{value:.3g}"
