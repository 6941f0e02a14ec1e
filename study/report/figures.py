"""The report's figures, as PNG bytes: every trial's momentum curve, parameters, EMA horizon,
momentum × batch size, learning curves and the best trial's confusion matrix. Trial figures, and
the confusion-matrix and learning-curve figures the report shares with the trials, are in
`study.figures`.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

from matplotlib.cm import ScalarMappable
from optuna.trial import TrialState

from study import figures as study_figures
from study.contract import SEARCHED
from study.report.views import TrialView


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _state_colours(views):
    return ["C0" if v.state == TrialState.COMPLETE else "C1" for v in views]


def params_figure(finished: list[TrialView]) -> bytes:
    from matplotlib.figure import Figure

    names = SEARCHED
    figure = Figure(figsize=(13, 6))
    axes = figure.subplots(2, 4, sharey="row")
    for column, name in enumerate(names):
        subset = [v for v in finished if name in v.params and (name != "bn_momentum" or v.batchnorm)]
        for row, target in enumerate(("gap", "val_accuracy")):
            ax = axes[row][column]
            xs = [1 - v.params[name] if name == "bn_momentum" else v.params[name] for v in subset]
            ax.scatter(xs, [v.get(target) for v in subset], c=_state_colours(subset), s=28, alpha=0.8)
            if name == "bn_momentum":
                ax.set_xscale("log")
                ax.set_xlabel("1 − bn_momentum (log)")
            elif name == "batch_size":
                ax.set_xscale("log", base=2)
                ax.set_xlabel("batch_size (log2)")
            else:
                ax.set_xlabel(name)
            if column == 0:
                ax.set_ylabel("gap (train − val)" if target == "gap" else "val accuracy")
            ax.grid(alpha=0.3)
    figure.suptitle("Gap and val accuracy per parameter (blue complete, orange pruned)")
    figure.tight_layout()
    return _png(figure)


def horizon_figure(finished: list[TrialView]) -> bytes:
    from matplotlib.figure import Figure

    subset = [v for v in finished if v.batchnorm and math.isfinite(v.horizon) and v.horizon > 0]
    figure = Figure(figsize=(7, 4.5))
    ax = figure.subplots()
    ax.scatter([v.horizon for v in subset], [v.get("gap") for v in subset], c=_state_colours(subset), s=30)
    ax.set_xscale("log")
    ax.axvline(1.0, color="red", linestyle="--", label="horizon = 1")
    ax.set_xlabel("EMA horizon: training steps × (1 − bn_momentum) (log)")
    ax.set_ylabel("gap (train − val)")
    ax.set_title("Gap vs how far batchnorm statistics could settle")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    return _png(figure)


def momentum_batch_figure(finished: list[TrialView]) -> bytes:
    from matplotlib.figure import Figure

    subset = [v for v in finished if v.batchnorm and "bn_momentum" in v.params and "batch_size" in v.params]
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
    return _png(study_figures.learning_curves_figure(histories, f"Learning curves of the top {len(histories)} trials"))


def confusion_png(client, best: TrialView) -> tuple[bytes, list[str]] | None:
    if not best.run_id:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(best.run_id, "confusion_matrix.json", folder)
        data = json.loads(Path(path).read_text())
    names = [str(name) for name in data["class_names"]]
    figure = study_figures.confusion_figure(data["matrix"], names,
                                      f"Trial {best.number}, {data.get('split', 'val')} split")
    return _png(figure), names


def momentum_curves_figure(paired: list[TrialView], labels: dict[int, str]) -> bytes | None:
    """Every trial's momentum curve: val accuracy against 1 − momentum (log), coloured by training steps; the
    curves of `labels` (trial number -> name) drawn thicker and named in the legend."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

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
    study_figures.momentum_axis(ax, study_figures.momentum_decades(m for v in paired for m in v.curve.momentum))
    ax.set_ylabel("val accuracy (same weights)")
    ax.set_title(f"Momentum curves of {len(paired)} trials (dot: the trial's own momentum)")
    ax.grid(alpha=0.3)
    if any(v.number in labels for v in paired):
        ax.legend(fontsize=8, loc="lower left")
    figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, label="training steps, unlabelled curves (log)")
    figure.tight_layout()
    return _png(figure)


def band_figure(bands) -> bytes | None:
    """Training steps against momentum: each step group's band (`study.report.paired.Band`) shaded."""
    from matplotlib.figure import Figure

    drawn = [b for b in bands if b.low is not None]
    if not drawn:
        return None
    figure = Figure(figsize=(7, 4.5))
    ax = figure.subplots()
    for b in drawn:
        width = max(b.steps_high - b.steps_low, b.steps_low * 0.1)
        ax.fill_between([b.steps_low, b.steps_low + width], 1 - b.low, 1 - b.high, color="C2", alpha=0.35,
                        label="band" if b is drawn[0] else None)
        ax.text(b.steps_low, 1 - b.high, f" n={b.n}, hit {b.hits}/{b.checked}", fontsize=8, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("training steps (log)")
    study_figures.momentum_axis(ax, study_figures.momentum_decades(m for b in drawn for m in (b.low, b.high)),
                                which="y")
    ax.set_title("Momenta within one val standard error of the val-best for 3 in 4 trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)
