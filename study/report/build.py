"""`build_report(study, client)`: the analysis, assembled into a `Report`.

Pure: it reads the Optuna study and the MLflow runs, and writes nothing anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from study import contract
from study.report import confirmation, figures, next_steps, paired, tables
from study.report.caveats import caveats
from study.report.document import FigureImage, Finding, Report, Section, UiLinks, headings
from study.report.findings import across_trial_findings, best_setting
from study.report.links import mlflow_links
from study.report.views import TrialView, complete_by_value, fmt, points, trial_views
from study.report.views import finished as finished_trials


def build_report(study, client, ui_url: str | None = None) -> Report:
    """Analyse `study` (read only) and its MLflow runs via `client`; nothing is written anywhere. Run ids link
    to the MLflow UI at `ui_url` (default: the tracking server, else `mlflow ui`'s address; study.report.links)."""
    analysis = _analyse(study, client, ui_url)
    for make in SECTIONS:
        analysis.sections.append(make(analysis))
    classes = study.user_attrs.get(contract.CLASS_NAMES_ATTR) or []
    summary = [f"Study: {study.study_name}",
               f"Classes: {', '.join(str(c) for c in classes) or 'unknown'}",
               f"Trials: {tables.trial_counts(analysis.views)}",
               f"MLflow parent run: {analysis.parent or 'unknown'}"]
    return Report(study.study_name, summary,
                  headline(analysis.found, bool(analysis.with_curves), headings(analysis.sections)),
                  analysis.found, analysis.sections,
                  next_steps.trials_needed(analysis.views, analysis.with_curves, study.study_name, analysis.settings),
                  analysis.ui, confirmed=[f.text for f in analysis.found if f.kind in confirmation.KINDS],
                  confirmation=confirmation.as_json(analysis.confirmation))


@dataclass
class _Analysis:
    """What the sections are made from: the study's trials, its findings, and the notes bound for the caveats."""

    study: Any
    client: Any
    views: list[TrialView]
    ui: UiLinks
    parent: str | None
    settings: dict
    seed: Any
    finished: list[TrialView]
    complete: list[TrialView]
    best: TrialView | None
    with_curves: list[TrialView]
    found: list[Finding]
    notes: list[str]
    confirmation: confirmation.Confirmation
    # The sections made so far, in order: a section names an earlier one by its heading (`see`).
    sections: list[Section] = field(default_factory=list)

    def see(self, name: str) -> str:
        return headings(self.sections)[name]


def _analyse(study, client, ui_url: str | None) -> _Analysis:
    views = trial_views(study)
    finished = finished_trials(views)
    complete = complete_by_value(views)
    best = complete[0] if complete else None
    parent = study.user_attrs.get(contract.PARENT_RUN_ID_ATTR)
    notes: list[str] = []
    # With momentum curves the findings are paired (same weights, only momentum differs); without,
    # they compare trials, which differ in everything at once.
    with_curves = paired.with_curves(finished)
    rest = (paired.paired_findings(with_curves, finished) if with_curves
            else across_trial_findings(finished, paired.missing_curves(finished)))
    # With held-out curves the best setting carries the recommended fix (paired.batchnorm_findings).
    best_found = next((f for f in rest if f.kind == "best_setting"), None) or Finding(
        "best_setting", best_setting(best), split="val", scheme="best objective value")
    settings = study.user_attrs.get(contract.SETTINGS_ATTR) or {}
    confirmed = confirmation.confirmation_of(study, views, settings)
    found = [best_found, *smallest_gaps(finished), *(f for f in rest if f.kind != "best_setting"),
             *confirmation.findings(confirmed, views)]
    return _Analysis(
        study=study, client=client, views=views, ui=mlflow_links(study, client, [v.run_id for v in views], ui_url),
        parent=parent, settings=settings, seed=_seed(study, client, parent, notes), finished=finished,
        complete=complete, best=best, with_curves=with_curves, found=found, notes=notes, confirmation=confirmed)


def _seed(study, client, parent: str | None, notes: list[str]):
    seed = (study.user_attrs.get(contract.SETTINGS_ATTR) or {}).get("seed")
    if seed is None and parent:
        # Studies written before the settings were stored in the study: the parent run has the seed.
        try:
            seed = client.get_run(parent).data.params.get("seed")
        except Exception as error:  # noqa: BLE001 - a missing run only loses the seed number
            notes.append(f"The parent MLflow run {parent} could not be read ({type(error).__name__}).")
    return seed


def _findings(a: _Analysis) -> Section:
    return Section("findings", "Findings", bullets=[finding.text for finding in a.found])


def _confirmation(a: _Analysis) -> Section:
    return confirmation.section(a.confirmation)


def _seed_presets(a: _Analysis) -> Section:
    return Section("seed_presets", "Seed presets", paragraphs=[
        "The four seed presets re-run here (first trials of the study) beside the numbers the seed reported."],
        tables=[tables.seed_table(a.views)])


def _decomposition(a: _Analysis) -> Section:
    return Section("decomposition", "Gap decomposition", paragraphs=[
        "Per finished trial: the gap split into mode gap (train-mode vs inference-mode accuracy on the training "
        "split) and generalization gap (inference-mode train vs val), and val accuracy before and after "
        "re-estimating batchnorm statistics at the final weights; from the momentum curve, the val-chosen momentum and "
        "the held-out accuracy at the own and the chosen momentum. Click a column's header to sort by it."],
        tables=[tables.decomposition_table(a.views, a.ui.run)])


def _importance(a: _Analysis) -> Section:
    return tables.importance_section(a.study)


@dataclass
class _Plot:
    """A figure to draw: `draw()` gives its PNG, or nothing where there is no data (`absent` then says why)."""

    filename: str
    title: str
    caption: str
    draw: Callable[[], bytes | None]
    absent: str = "has no data."


def _plots(a: _Analysis) -> list[_Plot]:
    findings = a.see("findings")
    return [
        _Plot("momentum_curves.png", "Momentum curves",
              "Each line is one trained model evaluated with batchnorm statistics tracked at each momentum of a grid "
              "(same weights); colour is the trial's training steps; the best trial and the seed presets are "
              "labelled. A drop at high momentum often means the statistics had too few steps at that momentum to "
              f"catch up with the weights, but differences within the noise floor ({findings}) are noise.",
              lambda: figures.momentum_curves_figure(a.with_curves, curve_labels(a.views, a.best)),
              absent=f"is left out: no finished batchnorm trial has a momentum curve (see {findings})."),
        _Plot("momentum_band.png", "Momentum band by training steps",
              "For each group of trials with similar step counts: the momenta whose val accuracy was within one val "
              "standard error of the trial's val-best for 3 in 4 trials (shaded; fitted on val), with the group's "
              "size and leave-one-trial-out hits (trials that scored at least their own momentum's held-out accuracy "
              "at the middle of the band fitted without them). Only the steps the study ran are shown.",
              lambda: figures.band_figure(paired.bands(paired.pairs(a.with_curves)[0]) if a.with_curves else [])),
        _Plot("params.png", "Gap and val accuracy vs each parameter",
              "Each point is a finished trial; momentum is shown as 1 − bn_momentum on a log axis.",
              lambda: figures.params_figure(a.finished)),
        _Plot("ema_horizon.png", "Gap vs EMA horizon",
              "Horizon = training steps × (1 − bn_momentum); left of the red line the running statistics have seen "
              "less than one time constant of updates.",
              lambda: figures.horizon_figure(a.finished)),
        _Plot("momentum_batch.png", "Momentum × batch size", "Colour is the gap; batchnorm trials only.",
              lambda: figures.momentum_batch_figure(a.finished)),
        _Plot("parallel.png", "Parallel coordinates", figures.PARALLEL_CAPTION,
              lambda: figures.parallel_figure(a.finished)),
        _Plot("learning_curves.png", "Learning curves of the top trials",
              "Per-epoch train (fit) and val accuracy from the trials' MLflow metric histories.",
              lambda: figures.curves_figure(a.client, a.complete[:3])),
    ]


def _figures(a: _Analysis) -> Section:
    section = Section("figures", "Figures")
    for plot in _plots(a):
        try:
            png = plot.draw()
        except Exception as error:  # noqa: BLE001 - one missing figure must not lose the report
            a.notes.append(f"Figure '{plot.title}' could not be drawn: {type(error).__name__}: {error}")
            continue
        if png:
            section.figures.append(FigureImage(plot.filename, plot.title, plot.caption, png))
        else:
            a.notes.append(f"Figure '{plot.title}' {plot.absent}")
    confusion = _confusion(a)
    if confusion:
        section.figures.append(confusion)
    return section


def _confusion(a: _Analysis) -> FigureImage | None:
    if a.best is None:
        return None
    try:
        drawn = figures.confusion_png(a.client, a.best)
    except Exception as error:  # noqa: BLE001
        a.notes.append(f"The best trial's confusion matrix could not be read: {type(error).__name__}: {error}")
        return None
    if not drawn:
        return None
    return FigureImage("confusion_matrix.png", f"Confusion matrix of the best trial ({a.best.number})",
                       "Rows: true class; columns: predicted class; classes: " + ", ".join(drawn[1]) + ".", drawn[0])


def _top_trials(a: _Analysis) -> Section:
    return Section("top_trials", "Top trials",
                   paragraphs=[f"The {tables.TOP_N} complete trials with the highest val accuracy."],
                   tables=[tables.top_table(a.views, a.ui.run)], code=next_steps.retrain(a.best, a.settings))


def _caveats(a: _Analysis) -> Section:
    return Section("caveats", "Caveats", bullets=caveats(a.views, a.best, a.seed, a.notes, a.settings.get("prune_on"),
                                                           a.study.user_attrs.get(contract.TRIALS_TARGET_ATTR)))


# The report's sections, in order: a section's number is its place here. The caveats come last, as they
# gather the notes of the sections before them.
SECTIONS: tuple[Callable[[_Analysis], Section], ...] = (
    _findings, _confirmation, _seed_presets, _decomposition, _importance, _figures, _top_trials, _caveats)


def smallest_gaps(finished: list[TrialView]) -> list[Finding]:
    """Says so when the smallest gaps belong to trials without batchnorm (no statistics to go stale)."""
    ordered = sorted((v for v in finished if math.isfinite(v.get("gap"))), key=lambda v: v.get("gap"))[:2]
    if len(ordered) < 2 or any(v.batchnorm for v in ordered):
        return []
    names = " and ".join(f"trial {v.number}" + (f" (preset {v.preset})" if v.preset else "") for v in ordered)
    gaps = " and ".join(fmt(v.get("gap")) for v in ordered)
    return [Finding("smallest_gaps", f"The two smallest gaps ({gaps}) belong to {names}, which have no batchnorm: "
                    "no statistics can go stale there.", split="val", scheme="per trial")]


def headline(found: list[Finding], paired_curves: bool, titles: dict[str, str]) -> list[str]:
    """The first screen: what to do, what it measured on held-out images, whether to keep batchnorm, how sure.

    Every choice behind it was made on val or fixed in advance (`study.report.paired`); it only reads the
    findings. What would change what a reader does comes first: a best setting with no gap, an effect that
    holds only for trials stopped early. `titles`: the sections' headings by name (`document.headings`).
    """
    by_kind = {f.kind: f for f in found}
    effects = [f for f in found if f.kind == "paired_effect"]
    effect = by_kind.get("headline_effect")
    split = by_kind.get("across_trial_split")
    floor = by_kind.get("noise_floor")
    noise = f" Noise floor: {floor.estimate * 100:.1f} points per accuracy." if floor and floor.estimate else ""
    if paired_curves and effect is not None:
        recommendation = by_kind["recommendation"].text
        do = recommendation[len("Recommendation: "):recommendation.index(". ")]
        lines = [f.text for f in found if f.kind == "first_screen_note"]
        lines.append(f"What to do (chosen on val across the trials that trained to the end): {do}.")
        lines.append(effect.text)
        if "keep_batchnorm" in by_kind:
            lines.append(by_kind["keep_batchnorm"].text)
        lines.append("How sure: one seed; the interval is the median's order-statistic interval (exact binomial "
                     "coverage), and TPE's trials are not independent draws, so read it as approximate." + noise)
        return lines
    if paired_curves and effects and effects[0].estimate is not None:
        return ["What closes the gap: unknown; the momentum curves predate held-out accuracy per momentum.",
                f"By how much: a median {points(effects[0].estimate)} points of val accuracy per trial, "
                f"n={effects[0].n} (optimistic: chosen and scored on val, so never negative).",
                "How sure: not at all; rerun the study with the current gaplab for held-out numbers."]
    if paired_curves and effects:
        return ["What closes the gap: not stated.", effects[0].text, "How sure: too few trials with momentum curves."]
    if split is not None and split.p_value is not None and split.p_value < 0.05:
        return [f"What goes with a smaller gap (across trials, not paired): {split.text}",
                f"By how much: a difference in median gap of {abs(split.estimate):.2f}, n={split.n}.",
                f"How sure: p={split.p_value:.2g} in a permutation test that repeats the whole search; across trials "
                "this is association, not cause."]
    return ["What closes the gap: nothing clearly; no momentum curves, and no parameter clearly goes with the gap "
            "across trials.", f"By how much: see {titles['findings']}.",
            f"How sure: not sure; see the counts in {titles['caveats']}."]


def curve_labels(views: list[TrialView], best: TrialView | None) -> dict[int, str]:
    """Which momentum curves the figure names: the best trial and the seed presets."""
    labels = {v.number: v.preset for v in views if v.preset}
    if best is not None:
        labels[best.number] = "best" + (f", {best.preset}" if best.preset else "")
    return labels
