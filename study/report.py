"""Write a study's report: findings, tables and figures, every number read from the stored study.

    python -m study.report                                   # the only study in the default storage
    python -m study.report --study_name shapes-32px --out reports
    python -m study.report --storage sqlite:///runs/optuna.db --tracking_uri sqlite:///runs/mlflow.db
    mlflow run . -e report -P study_name=shapes-32px --env-manager local

Writes <out>/<study>/report.md, report.html (self-contained: figures embedded as base64 PNG)
and the figures as PNG files, then logs those files to the study's parent MLflow run under
`report/`. The Optuna study is only read, never changed, so a study that is still running, or
has pruned or failed trials, can be reported at any time; rerun to refresh.

`build_report(study, client)` is the analysis (pure: it reads the study and MLflow, writes
nothing); `to_markdown(report)` and `to_html(report)` render it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from study import contract
from study.cli import UsageError, check_storage_url, default_storage, quiet_logging
from study.contract import SEARCHED

SECTION_TITLES = (
    "1. Findings",
    "2. Seed presets",
    "3. Gap decomposition",
    "4. Parameter importance",
    "5. Figures",
    "6. Top trials",
    "7. Caveats",
)
# A split must move the median gap by at least this much to be called a finding.
MIN_EFFECT = 0.05
# EMA horizon (steps x (1 - momentum)) below which BN's running statistics have not caught up.
HORIZON_THRESHOLD = 3.0
HIGH_MOMENTUM = 0.95
LOW_MOMENTUM = 0.9
TOP_N = 5


# ----------------------------------------------------------------------------- data model


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class FigureImage:
    filename: str
    title: str
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureImage] = field(default_factory=list)


@dataclass
class Report:
    """Plain text and numbers only: renderers do all escaping."""

    study_name: str
    summary: list[str]
    findings: list[str]
    sections: list[Section]

    @property
    def tables(self) -> list[Table]:
        return [table for section in self.sections for table in section.tables]

    @property
    def figures(self) -> list[FigureImage]:
        return [figure for section in self.sections for figure in section.figures]

    def section(self, title_prefix: str) -> Section:
        return next(s for s in self.sections if s.title.startswith(title_prefix))


# ----------------------------------------------------------------------------- trial view


@dataclass
class TrialView:
    """One trial's numbers under public names; NaN where absent."""

    number: int
    state: str
    preset: str | None
    batchnorm: bool
    params: dict[str, float]
    attrs: dict[str, Any]
    value: float | None
    distributions: dict[str, Any]

    def get(self, name: str) -> float:
        raw = self.attrs.get(name)
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
            return float(raw)
        return math.nan

    @property
    def horizon(self) -> float:
        """steps x (1 - bn_momentum): how many EMA time constants BN statistics had to settle."""
        return self.get("steps") * (1.0 - self.params.get("bn_momentum", math.nan))

    @property
    def run_id(self) -> str:
        return str(self.attrs.get(contract.RUN_ID_ATTR) or "")


def _trial_views(study) -> list[TrialView]:
    from gaplab.config import PRESETS
    from study import space

    views = []
    for trial in study.get_trials(deepcopy=False):
        preset = trial.user_attrs.get(contract.PRESET_ATTR)
        params: dict[str, float] = {}
        momentum = trial.user_attrs.get(contract.BN_MOMENTUM_ATTR)
        if momentum is None and space.MOMENTUM_PARAM in trial.params:
            momentum = space.momentum_from(trial.params[space.MOMENTUM_PARAM])
        if momentum is not None:
            params["bn_momentum"] = float(momentum)
        for name in SEARCHED:
            if name != "bn_momentum" and name in trial.params:
                params[name] = trial.params[name]
        # Studies written before the batchnorm attribute existed: presets are the only BN-less trials.
        batchnorm = trial.user_attrs.get(contract.BATCHNORM_ATTR, PRESETS[preset].batchnorm if preset in PRESETS else True)
        views.append(TrialView(trial.number, trial.state.name, preset, batchnorm, params,
                               dict(trial.user_attrs), trial.value, dict(trial.distributions)))
    return views


def _finished(views: list[TrialView]) -> list[TrialView]:
    return [v for v in views if v.state in contract.FINISHED_STATE_NAMES and math.isfinite(v.get("gap"))]


def _median(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return median(values) if values else math.nan


def _fmt(value: float, digits: int = 2) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # no "-0.00"


def _fmt_param(name: str, value: float) -> str:
    if name in ("batch_size", "depth"):
        return str(int(value)) if float(value).is_integer() else f"{value:g}"
    return f"{value:.3g}"


def _describe(view: TrialView) -> str:
    return ", ".join(f"{name} {_fmt_param(name, view.params[name])}" for name in
                     SEARCHED if name in view.params)


# ----------------------------------------------------------------------------- findings


@dataclass
class Split:
    param: str
    threshold: float
    low_n: int
    high_n: int
    low_gap: float
    high_gap: float

    @property
    def effect(self) -> float:
        return self.high_gap - self.low_gap


def _candidate_thresholds(param: str, values: list[float]) -> list[float]:
    ordered = sorted(set(values))
    middle = median(values)
    candidates = {middle}
    above = [v for v in ordered if v > middle]
    if above:
        candidates.add(above[0])
    if param == "bn_momentum":
        candidates.update((0.9, HIGH_MOMENTUM, 0.99))
    return sorted(candidates)


def best_split(views: list[TrialView], param: str) -> Split | None:
    """The threshold on `param` (median or a meaningful value) with the largest median-gap difference,
    among those leaving at least 2 trials on each side; None when none does."""
    points = [(v.params[param], v.get("gap")) for v in views if param in v.params]
    if len(points) < 4:
        return None
    best = None
    for threshold in _candidate_thresholds(param, [x for x, _ in points]):
        low = [g for x, g in points if x < threshold]
        high = [g for x, g in points if x >= threshold]
        if len(low) < 2 or len(high) < 2:
            continue
        split = Split(param, threshold, len(low), len(high), median(low), median(high))
        if best is None or abs(split.effect) > abs(best.effect):
            best = split
    return best


def _split_sentence(split: Split) -> str:
    name, t = split.param, _fmt_param(split.param, split.threshold)
    direction = "larger" if split.effect > 0 else "smaller"
    return (f"{name} moves the gap most: trials with {name} ≥ {t} had a median gap of {_fmt(split.high_gap)} "
            f"(n={split.high_n}); with {name} < {t} it was {_fmt(split.low_gap)} (n={split.low_n}), "
            f"a difference of {_fmt(abs(split.effect))}, so higher {name} goes with a {direction} gap"
            + (" (batchnorm trials only)." if name == "bn_momentum" else "."))


def momentum_finding(with_bn: list[TrialView]) -> str:
    """bn_momentum's effect where it can have one: high momentum with too few steps vs low momentum.

    Momentum changes no trained weight, only how fast BN's moving statistics leave their initial
    0/1, so its effect is judged on trials whose statistics could not settle (EMA horizon below
    HORIZON_THRESHOLD) against low-momentum trials, on the gap and on the part of it that stale
    statistics cause (the mode gap); high-momentum trials that did settle are the control.
    """
    def momentum(v):
        return v.params.get("bn_momentum", math.nan)

    def medians(group):
        return _median(v.get("gap") for v in group), _median(v.get("mode_gap") for v in group)

    stale = [v for v in with_bn if momentum(v) >= HIGH_MOMENTUM and v.horizon < HORIZON_THRESHOLD]
    settled = [v for v in with_bn if momentum(v) >= HIGH_MOMENTUM and v.horizon >= HORIZON_THRESHOLD]
    low = [v for v in with_bn if momentum(v) < LOW_MOMENTUM]
    (stale_gap, stale_mode), (low_gap, low_mode), (settled_gap, settled_mode) = map(medians, (stale, low, settled))
    low_text = (f"trials with bn_momentum < {LOW_MOMENTUM:g} had {_fmt(low_gap)} and {_fmt(low_mode)} "
                f"(n={len(low)})")
    settled_text = (f"bn_momentum ≥ {HIGH_MOMENTUM:g} trials with enough steps to settle had a median gap of "
                    f"{_fmt(settled_gap)} and mode gap of {_fmt(settled_mode)} (n={len(settled)})")
    if len(stale) < 2 or len(low) < 2:
        text = (f"bn_momentum: {len(stale)} trial(s) with bn_momentum ≥ {HIGH_MOMENTUM:g} and too few steps for "
                f"the moving statistics to settle (steps × (1 − bn_momentum) < {HORIZON_THRESHOLD:g}) and {len(low)} "
                f"with bn_momentum < {LOW_MOMENTUM:g}; at least 2 of each are needed, so momentum's effect is "
                "inconclusive")
        if len(settled) >= 2 and len(low) >= 2:
            text += f". For reference, {settled_text}; {low_text}"
        return text + "."
    most_steps = int(max(v.get("steps") for v in stale))
    observed = (f"trials with bn_momentum ≥ {HIGH_MOMENTUM:g} and at most {most_steps} steps, too few for the moving "
                f"statistics to settle (steps × (1 − bn_momentum) < {HORIZON_THRESHOLD:g}), had a median gap of "
                f"{_fmt(stale_gap)} and mode gap of {_fmt(stale_mode)} (n={len(stale)}); {low_text}")
    mechanism = ("Momentum changes no trained weight; at inference batchnorm uses moving statistics that start at "
                 "0/1 and move only (1 − bn_momentum) per step")
    gap_effect, mode_effect = stale_gap - low_gap, stale_mode - low_mode
    if gap_effect >= MIN_EFFECT:
        text = f"High bn_momentum widens the gap when training is short: {observed}. {mechanism}"
    elif mode_effect >= MIN_EFFECT:
        text = (f"High bn_momentum with short training opens a mode gap, though the whole gap differs by less than "
                f"{MIN_EFFECT:g} (other causes of the gap weigh more here): {observed}. {mechanism}")
    elif max(abs(gap_effect), abs(mode_effect)) < MIN_EFFECT:
        return (f"bn_momentum: {observed}. Differences under {MIN_EFFECT:g}: no effect of momentum is shown "
                "(inconclusive).")
    else:
        text = f"High bn_momentum with short training did not widen the gap here: {observed}"
    if len(settled) >= 2:
        text += f". With enough steps the effect goes: {settled_text}"
    return text + "."


def findings(views: list[TrialView], best: TrialView | None) -> tuple[list[str], dict[str, Split | None]]:
    out: list[str] = []
    finished = _finished(views)
    if best is not None:
        label = f" (preset {best.preset})" if best.preset else ""
        out.append(f"Best setting: trial {best.number}{label} with {_describe(best)} reached val accuracy "
                   f"{_fmt(best.get('val_accuracy'), 3)} and test accuracy {_fmt(best.get('test_accuracy'), 3)} "
                   f"(train {_fmt(best.get('train_accuracy'), 3)}, gap {_fmt(best.get('gap'), 3)}).")
    else:
        out.append("No trial has completed yet, so there is no best setting.")
    if len(finished) < 4:
        out.append(f"Only {len(finished)} finished trial(s): too few to say which parameter moves the gap "
                   "(inconclusive; at least 2 trials on each side of a split are needed).")
        return out, {}

    # Momentum only matters where there is batchnorm; the no-BN presets are left out of its split.
    with_bn = [v for v in finished if v.batchnorm]
    splits = {param: best_split(with_bn if param == "bn_momentum" else finished, param)
              for param in SEARCHED}
    valid = [s for s in splits.values() if s is not None]
    if not valid:
        out.append("No parameter split leaves at least 2 finished trials on each side: which parameter "
                   "moves the gap is inconclusive.")
    else:
        top = max(valid, key=lambda s: abs(s.effect))
        if abs(top.effect) < MIN_EFFECT:
            out.append(f"No parameter moves the median gap by {MIN_EFFECT} or more over {len(finished)} finished "
                       f"trials (largest: {top.param}, {_fmt(abs(top.effect))}): inconclusive.")
        else:
            others = sorted((s for s in valid if s is not top), key=lambda s: -abs(s.effect))
            tail = ""
            if others:
                tail = " Next: " + "; ".join(f"{s.param} {_fmt(abs(s.effect))}" for s in others) + "."
            out.append(_split_sentence(top) + tail)

    out.append(momentum_finding(with_bn))

    # EMA horizon: steps x (1 - momentum).
    horizon = [v for v in with_bn if math.isfinite(v.horizon)]
    short = [v.get("gap") for v in horizon if v.horizon < HORIZON_THRESHOLD]
    long = [v.get("gap") for v in horizon if v.horizon >= HORIZON_THRESHOLD]
    if len(short) >= 2 and len(long) >= 2:
        out.append(f"EMA horizon (training steps × (1 − bn_momentum)): trials with a horizon below "
                   f"{HORIZON_THRESHOLD:g} had a median gap of {_fmt(median(short))} (n={len(short)}); "
                   f"at {HORIZON_THRESHOLD:g} or more it was {_fmt(median(long))} (n={len(long)}).")
    else:
        out.append(f"EMA horizon (training steps × (1 − bn_momentum)): {len(short)} batchnorm trial(s) below "
                   f"{HORIZON_THRESHOLD:g} and {len(long)} at or above it; inconclusive (need 2 on each side).")

    mode = _median(v.get("mode_gap") for v in finished)
    general = _median(v.get("generalization_gap") for v in finished)
    if math.isfinite(mode) and math.isfinite(general):
        numbers = (f"over {len(finished)} finished trials the median mode gap is {_fmt(mode)} and the median "
                   f"generalization gap is {_fmt(general)}")
        if max(mode, general) < 0.02:
            out.append(f"There is little positive gap left to attribute: {numbers}.")
        elif mode >= general:
            out.append(f"The remaining gap is mostly mode gap (train-mode vs inference-mode accuracy on the training "
                       f"split, i.e. batchnorm statistics): {numbers}.")
        else:
            out.append(f"The remaining gap is mostly generalization gap (overfitting proper): {numbers}.")

    recovered = [v.get("val_accuracy_recalibrated") - v.get("val_accuracy") for v in with_bn]
    recovered = [r for r in recovered if math.isfinite(r)]
    if len(recovered) >= 2:
        sentence = (f"Re-estimating batchnorm statistics on the training data changes val accuracy by a median "
                    f"of {_fmt(median(recovered), 3)} (n={len(recovered)} batchnorm trials)")
        high = [v.get("val_accuracy_recalibrated") - v.get("val_accuracy") for v in with_bn
                if v.params.get("bn_momentum", 0) >= HIGH_MOMENTUM]
        high = [r for r in high if math.isfinite(r)]
        if len(high) >= 2:
            sentence += (f"; for trials with bn_momentum ≥ {HIGH_MOMENTUM:g} the median is "
                         f"{_fmt(median(high), 3)} (n={len(high)}).")
        else:
            sentence += f"; with {len(high)} trial(s) at bn_momentum ≥ {HIGH_MOMENTUM:g} that subset is inconclusive."
        out.append(sentence)
    else:
        out.append("Fewer than 2 finished batchnorm trials: what recalibration recovers is inconclusive.")
    return out, splits


# ----------------------------------------------------------------------------- tables


def seed_table(views: list[TrialView]) -> Table:
    from gaplab.config import SEED_RESULTS

    rows = []
    for name, (s_train, s_val, s_test) in SEED_RESULTS.items():
        trial = next((v for v in views if v.preset == name), None)
        if trial is None:
            rows.append([name, "not queued", None, None, None, s_train, s_val, s_test])
            continue
        rows.append([name, f"{trial.number} ({trial.state})", trial.get("train_accuracy"), trial.get("val_accuracy"),
                     trial.get("test_accuracy"), s_train, s_val, s_test])
    return Table(["preset", "trial (state)", "train here", "val here", "test here", "seed train", "seed val",
                  "seed test"], rows, "Train is the running accuracy of fit at the last epoch, as the seed measured it.")


def decomposition_table(views: list[TrialView]) -> Table:
    rows = []
    for v in views:
        if not math.isfinite(v.get("gap")):
            continue
        before, after = v.get("val_accuracy"), v.get("val_accuracy_recalibrated")
        rows.append([v.number, v.state, v.preset or "", v.params.get("bn_momentum", math.nan) if v.batchnorm else "no BN",
                     v.get("steps"), v.horizon if v.batchnorm else math.nan, v.get("gap"), v.get("mode_gap"),
                     v.get("generalization_gap"), before, after, after - before])
    return Table(["trial", "state", "preset", "bn_momentum", "steps", "EMA horizon", "gap", "mode gap",
                  "generalization gap", "val", "val recalibrated", "recovered"], rows,
                 "gap = mode gap + generalization gap; EMA horizon = steps × (1 − bn_momentum).")


def importance_section(study) -> Section:
    from study.importance import IMPORTANCE_TARGETS, param_importances

    result = param_importances(study)
    section = Section(SECTION_TITLES[3])
    section.paragraphs.append(f"Evaluator: {result['evaluator']}, over {result.get('trials', 0)} finished "
                              "(complete or pruned) trials. Scores sum to 1 per target; higher means the parameter "
                              "explains more of the target's variance.")
    if result.get("reason"):
        section.paragraphs.append(f"Not computed for every target: {result['reason']}.")
    names = sorted({name for target in IMPORTANCE_TARGETS for name in result.get(target, {})})
    if names:
        rows = [[name] + [result.get(target, {}).get(name, math.nan) for target in IMPORTANCE_TARGETS]
                for name in sorted(names, key=lambda n: -result.get("gap", {}).get(n, 0.0))]
        section.tables.append(Table(["parameter", *IMPORTANCE_TARGETS], rows))
    return section


def top_table(views: list[TrialView]) -> Table:
    complete = sorted((v for v in views if v.state == "COMPLETE" and v.value is not None),
                      key=lambda v: -v.value)[:TOP_N]
    rows = [[rank, v.number, v.preset or "", v.get("val_accuracy"), v.get("test_accuracy"), v.get("gap"),
             _describe(v), v.run_id] for rank, v in enumerate(complete, 1)]
    return Table(["rank", "trial", "preset", "val", "test", "gap", "parameters", "MLflow run id"], rows)


# ----------------------------------------------------------------------------- figures


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _state_colours(views):
    return ["C0" if v.state == "COMPLETE" else "C1" for v in views]


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
    from study import figures

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
    return _png(figures.learning_curves_figure(histories, f"Learning curves of the top {len(histories)} trials"))


def confusion_png(client, best: TrialView) -> tuple[bytes, list[str]] | None:
    from study import figures

    if not best.run_id:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(best.run_id, "confusion_matrix.json", folder)
        data = json.loads(Path(path).read_text())
    names = [str(name) for name in data["class_names"]]
    figure = figures.confusion_figure(data["matrix"], names,
                                      f"Trial {best.number}, {data.get('split', 'val')} split")
    return _png(figure), names


# ----------------------------------------------------------------------------- caveats


def _edge(view: TrialView, name: str) -> str | None:
    """'lower'/'upper' when the best value sits at the edge of the range it was sampled from."""
    from study import space

    dist = view.distributions.get(space.optuna_name(name))
    value = view.params.get(name)
    if value is None or dist is None:
        return None
    if name == "bn_momentum":
        value = 1.0 - value  # compare in the sampled (log) space of 1 - momentum
    if hasattr(dist, "choices"):
        choices = sorted(dist.choices)
        return "lower" if value == choices[0] else "upper" if value == choices[-1] else None
    low, high = dist.low, dist.high
    if name == "depth":
        return "lower" if value <= low else "upper" if value >= high else None
    scale = (lambda x: math.log(x)) if getattr(dist, "log", False) and low > 0 else (lambda x: x)
    position = (scale(value) - scale(low)) / (scale(high) - scale(low)) if high > low else 0.5
    edge = "lower" if position <= 0.05 else "upper" if position >= 0.95 else None
    if edge and name == "bn_momentum":  # 1 - momentum's lower edge is momentum's upper edge
        edge = "upper" if edge == "lower" else "lower"
    return edge


def _range_text(view: TrialView, name: str) -> str:
    """The range `name` was sampled from; only for parameters `_edge` found a distribution for."""
    from study import space

    dist = view.distributions[space.optuna_name(name)]
    if hasattr(dist, "choices"):
        return ", ".join(str(c) for c in dist.choices)
    if name == "bn_momentum":
        return f"{_fmt_param(name, 1 - dist.high)} to {_fmt_param(name, 1 - dist.low)}"
    return f"{_fmt_param(name, dist.low)} to {_fmt_param(name, dist.high)}"


def caveats(views: list[TrialView], best: TrialView | None, seed: str | None, notes: list[str]) -> list[str]:
    counts = {state: sum(v.state == state for v in views) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    out = [f"{len(views)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
           + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "")
           + (f", {counts['WAITING']} waiting" if counts["WAITING"] else "") + "."]
    if counts["RUNNING"] or counts["WAITING"]:
        out.append("The study is still running: rerun the report when it has finished.")
    if counts["PRUNED"]:
        out.append("Pruned trials are measured at the epoch where they stopped, so their gap and accuracies "
                   "come from fewer epochs than complete trials.")
    if best is not None:
        for name in SEARCHED:
            edge = _edge(best, name)
            if edge:
                out.append(f"The best trial's {name} = {_fmt_param(name, best.params[name])} is at the {edge} edge of "
                           f"its search range ({_range_text(best, name)}): widen the range to see whether the "
                           "optimum lies beyond it.")
    seed_text = f"seed {seed}" if seed else "one seed"
    out.append(f"Every trial ran once ({seed_text}): re-run the best setting with other seeds to measure the "
               "variance before trusting differences smaller than it.")
    if any(not v.batchnorm for v in views):
        out.append("The seed-initial and seed-deeper presets have no batchnorm; they are left out of the momentum "
                   "split, the EMA horizon and the recalibration figures.")
    return out + notes


# ----------------------------------------------------------------------------- build


def build_report(study, client) -> Report:
    """Analyse `study` (read only) and its MLflow runs via `client`; nothing is written anywhere."""
    views = _trial_views(study)
    finished = _finished(views)
    complete = sorted((v for v in views if v.state == "COMPLETE" and v.value is not None), key=lambda v: -v.value)
    best = complete[0] if complete else None
    parent = study.user_attrs.get(contract.PARENT_RUN_ID_ATTR)
    notes: list[str] = []
    seed = None
    if parent:
        try:
            seed = client.get_run(parent).data.params.get("seed")
        except Exception as error:  # noqa: BLE001 - a missing run only loses the seed number
            notes.append(f"The parent MLflow run {parent} could not be read ({type(error).__name__}).")

    found, _ = findings(views, best)
    sections = [Section(SECTION_TITLES[0], bullets=found)]
    sections.append(Section(SECTION_TITLES[1], paragraphs=[
        "The four seed presets re-run here (first trials of the study) beside the numbers the seed reported."],
        tables=[seed_table(views)]))
    sections.append(Section(SECTION_TITLES[2], paragraphs=[
        "Per finished trial: the gap split into mode gap (train-mode vs inference-mode accuracy on the training "
        "split) and generalization gap (inference-mode train vs val), and val accuracy before and after "
        "re-estimating batchnorm statistics."], tables=[decomposition_table(views)]))
    sections.append(importance_section(study))

    figs = Section(SECTION_TITLES[4])
    plots = [
        ("params.png", "Gap and val accuracy vs each parameter", lambda: params_figure(finished)),
        ("ema_horizon.png", "Gap vs EMA horizon", lambda: horizon_figure(finished)),
        ("momentum_batch.png", "Momentum × batch size", lambda: momentum_batch_figure(finished)),
        ("learning_curves.png", "Learning curves of the top trials", lambda: curves_figure(client, complete[:3])),
    ]
    captions = {
        "params.png": "Each point is a finished trial; momentum is shown as 1 − bn_momentum on a log axis.",
        "ema_horizon.png": "Horizon = training steps × (1 − bn_momentum); left of the red line the running "
                           "statistics have seen less than one time constant of updates.",
        "momentum_batch.png": "Colour is the gap; batchnorm trials only.",
        "learning_curves.png": "Per-epoch train (fit) and val accuracy from the trials' MLflow metric histories.",
    }
    for filename, title, make in plots:
        try:
            png = make()
        except Exception as error:  # noqa: BLE001 - one missing figure must not lose the report
            notes.append(f"Figure '{title}' could not be drawn: {type(error).__name__}: {error}")
            continue
        if png:
            figs.figures.append(FigureImage(filename, title, captions[filename], png))
        else:
            notes.append(f"Figure '{title}' has no data yet.")
    if best is not None:
        try:
            drawn = confusion_png(client, best)
        except Exception as error:  # noqa: BLE001
            drawn = None
            notes.append(f"The best trial's confusion matrix could not be read: {type(error).__name__}: {error}")
        if drawn:
            figs.figures.append(FigureImage("confusion_matrix.png", f"Confusion matrix of the best trial ({best.number})",
                                            "Rows: true class; columns: predicted class; classes: "
                                            + ", ".join(drawn[1]) + ".", drawn[0]))
    sections.append(figs)
    sections.append(Section(SECTION_TITLES[5], paragraphs=[f"The {TOP_N} complete trials with the highest val accuracy."],
                            tables=[top_table(views)]))
    sections.append(Section(SECTION_TITLES[6], bullets=caveats(views, best, seed, notes)))

    classes = study.user_attrs.get(contract.CLASS_NAMES_ATTR) or []
    summary = [f"Study: {study.study_name}",
               f"Classes: {', '.join(str(c) for c in classes) or 'unknown'}",
               f"Trials: {len(views)} ({len(finished)} finished with metrics)",
               f"MLflow parent run: {parent or 'unknown'}"]
    return Report(study.study_name, summary, found, sections)


# ----------------------------------------------------------------------------- render


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return str(int(value)) if value.is_integer() and abs(value) >= 2 else f"{value:.3f}"
    return str(value)


def md_escape(text: str) -> str:
    """Plain text for Markdown: no HTML, no table breaks, no emphasis."""
    text = str(text).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "|*_`[]#":
        text = text.replace(char, "\\" + char)
    return " ".join(text.splitlines())


def to_markdown(report: Report) -> str:
    lines = [f"# Study report: {md_escape(report.study_name)}", ""]
    lines += [f"- {md_escape(line)}" for line in report.summary] + [""]
    for section in report.sections:
        lines += [f"## {md_escape(section.title)}", ""]
        for paragraph in section.paragraphs:
            lines += [md_escape(paragraph), ""]
        if section.bullets:
            lines += [f"- {md_escape(b)}" for b in section.bullets] + [""]
        for table in section.tables:
            if table.caption:
                lines += [f"*{md_escape(table.caption)}*", ""]
            lines.append("| " + " | ".join(md_escape(c) for c in table.columns) + " |")
            lines.append("|" + "---|" * len(table.columns))
            lines += ["| " + " | ".join(md_escape(_cell(c)) for c in row) + " |" for row in table.rows]
            if not table.rows:
                lines.append("| " + " | ".join("–" for _ in table.columns) + " |")
            lines.append("")
        for figure in section.figures:
            lines += [f"### {md_escape(figure.title)}", "", f"![{md_escape(figure.title)}]({figure.filename})", "",
                      md_escape(figure.caption), ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #446;padding-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccd}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccd;padding:.25em .5em;
text-align:right}th{background:#eef}td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#f8f8fc}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%;height:auto;border:1px solid #eee}
.summary{color:#555}.findings li{margin:.4em 0}
"""


def to_html(report: Report) -> str:
    e = lambda text: html.escape(str(text), quote=True)  # noqa: E731
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>Study report: {e(report.study_name)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>Study report: {e(report.study_name)}</h1>", '<ul class="summary">']
    parts += [f"<li>{e(line)}</li>" for line in report.summary] + ["</ul>"]
    for index, section in enumerate(report.sections, 1):
        parts.append(f'<section id="section-{index}"><h2>{e(section.title)}</h2>')
        parts += [f"<p>{e(p)}</p>" for p in section.paragraphs]
        if section.bullets:
            css = ' class="findings"' if index == 1 else ""
            parts += [f"<ul{css}>"] + [f"<li>{e(b)}</li>" for b in section.bullets] + ["</ul>"]
        for table in section.tables:
            parts.append("<table>")
            if table.caption:
                parts.append(f"<caption>{e(table.caption)}</caption>")
            parts.append("<thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in table.columns) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(_cell(c))}</td>" for c in row) + "</tr>" for row in table.rows]
            parts.append("</tbody></table>")
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(figure.title)}">'
                         f"<figcaption><strong>{e(figure.title)}.</strong> {e(figure.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(report: Report, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for figure in report.figures:
        path = folder / figure.filename
        path.write_bytes(figure.png)
        paths.append(path)
    for name, text in (("report.md", to_markdown(report)), ("report.html", to_html(report))):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--study_name", "--study-name", type=str, default="",
        help="study to report (default: the only study in the storage)")
    add("--storage", type=str, default="", help="Optuna storage URL (default: as python -m study.run)")
    add("--tracking_uri", "--tracking-uri", type=str, default="", help="MLflow tracking URI (default: MLflow's current)")
    add("--out", type=str, default="", help="output folder; the report goes to <out>/<study>/ (default: reports)")
    return parser


def resolve_study_name(storage: str, requested: str) -> str:
    import optuna

    names = sorted(optuna.get_all_study_names(storage=storage))
    listing = ", ".join(repr(n) for n in names) if names else "none"
    if requested:
        if requested not in names:
            raise UsageError(f"--study_name={requested!r} is not in {storage}; studies there: {listing}.")
        return requested
    if len(names) != 1:
        raise UsageError(f"{storage} holds {len(names)} studies ({listing}); pick one with --study_name.")
    return names[0]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_logging()
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracking = args.tracking_uri or mlflow.get_tracking_uri()
    storage = args.storage or default_storage(tracking)
    try:
        check_storage_url(storage, must_exist=True)
        name = resolve_study_name(storage, args.study_name)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    study = optuna.load_study(study_name=name, storage=storage)
    client = MlflowClient(tracking)
    report = build_report(study, client)
    folder = Path(args.out or "reports") / _safe_folder(name)
    paths = write_report(report, folder)
    # The study's parent run keeps the report; a run `mlflow run . -e report` created gets a copy.
    targets = [run for run in (study.user_attrs.get(contract.PARENT_RUN_ID_ATTR), os.environ.get("MLFLOW_RUN_ID"))
               if run]
    logged = []
    for run in dict.fromkeys(targets):
        try:
            for path in paths:
                client.log_artifact(run, str(path), "report")
            logged.append(run)
        except Exception as error:  # noqa: BLE001 - the files on disk are the report; logging is a copy
            print(f"warning: could not log the report to MLflow run {run}: {type(error).__name__}: {error}",
                  file=sys.stderr)
    print(f"report for study {name!r}: {folder / 'report.html'} and report.md"
          + (f"; logged to MLflow run{'s' * (len(logged) > 1)} {' and '.join(logged)} under report/" if logged else ""))
    return 0


def _safe_folder(name: str) -> str:
    """The study name as one path component (study.run allows letters, digits, space, '.', '_', '-')."""
    cleaned = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip() or "study"
    return "_" + cleaned if cleaned.startswith(".") else cleaned


if __name__ == "__main__":
    sys.exit(main())
