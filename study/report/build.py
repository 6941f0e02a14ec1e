"""`build_report(study, client)`: the analysis, assembled into a `Report`.

Pure: it reads the Optuna study and the MLflow runs, and writes nothing anywhere.
"""

from __future__ import annotations

import math

from study import contract
from study.report import figures, next_steps, paired, tables
from study.report.caveats import caveats
from study.report.document import SECTION_TITLES, FigureImage, Finding, Report, Section
from study.report.findings import across_trial_findings, best_setting
from study.report.links import mlflow_links
from study.report.views import TrialView, complete_by_value, fmt, points, trial_views
from study.report.views import finished as finished_trials


def build_report(study, client, ui_url: str | None = None) -> Report:
    """Analyse `study` (read only) and its MLflow runs via `client`; nothing is written anywhere. Run ids link
    to the MLflow UI at `ui_url` (default: the tracking server, else `mlflow ui`'s address; study.report.links)."""
    views = trial_views(study)
    ui = mlflow_links(study, client, [v.run_id for v in views], ui_url)
    finished = finished_trials(views)
    complete = complete_by_value(views)
    best = complete[0] if complete else None
    parent = study.user_attrs.get(contract.PARENT_RUN_ID_ATTR)
    notes: list[str] = []
    seed = (study.user_attrs.get(contract.SETTINGS_ATTR) or {}).get("seed")
    if seed is None and parent:
        # Studies written before the settings were stored in the study: the parent run has the seed.
        try:
            seed = client.get_run(parent).data.params.get("seed")
        except Exception as error:  # noqa: BLE001 - a missing run only loses the seed number
            notes.append(f"The parent MLflow run {parent} could not be read ({type(error).__name__}).")

    # With momentum curves the findings are paired (same weights, only momentum differs); without,
    # they compare trials, which differ in everything at once.
    with_curves = paired.with_curves(finished)
    rest = (paired.paired_findings(with_curves, finished) if with_curves
            else across_trial_findings(finished, paired.missing_curves(finished)))
    # With held-out curves the best setting carries the recommended fix (paired.batchnorm_findings).
    best_found = next((f for f in rest if f.kind == "best_setting"), None) or Finding(
        "best_setting", best_setting(best), split="val", scheme="best objective value")
    found = [best_found, *smallest_gaps(finished), *(f for f in rest if f.kind != "best_setting")]
    settings = study.user_attrs.get(contract.SETTINGS_ATTR) or {}
    sections = [Section(SECTION_TITLES[0], bullets=[finding.text for finding in found])]
    sections.append(Section(SECTION_TITLES[1], paragraphs=[
        "The four seed presets re-run here (first trials of the study) beside the numbers the seed reported."],
        tables=[tables.seed_table(views)]))
    sections.append(Section(SECTION_TITLES[2], paragraphs=[
        "Per finished trial: the gap split into mode gap (train-mode vs inference-mode accuracy on the training "
        "split) and generalization gap (inference-mode train vs val), and val accuracy before and after "
        "re-estimating batchnorm statistics at the final weights; from the momentum curve, the val-chosen momentum and "
        "the held-out accuracy at the own and the chosen momentum. Click a column's header to sort by it."],
        tables=[tables.decomposition_table(views, ui.run)]))
    sections.append(tables.importance_section(study))

    figs = Section(SECTION_TITLES[4])
    plots = [
        ("momentum_curves.png", "Momentum curves",
         lambda: figures.momentum_curves_figure(with_curves, curve_labels(views, best))),
        ("momentum_band.png", "Momentum band by training steps",
         lambda: figures.band_figure(paired.bands(paired.pairs(with_curves)[0]) if with_curves else [])),
        ("params.png", "Gap and val accuracy vs each parameter", lambda: figures.params_figure(finished)),
        ("ema_horizon.png", "Gap vs EMA horizon", lambda: figures.horizon_figure(finished)),
        ("momentum_batch.png", "Momentum × batch size", lambda: figures.momentum_batch_figure(finished)),
        ("parallel.png", "Parallel coordinates", lambda: figures.parallel_figure(finished)),
        ("learning_curves.png", "Learning curves of the top trials",
         lambda: figures.curves_figure(client, complete[:3])),
    ]
    captions = {
        "momentum_curves.png": "Each line is one trained model evaluated with batchnorm statistics tracked at each "
                               "momentum of a grid (same weights); colour is the trial's training steps; the best "
                               "trial and the seed presets are labelled. A drop at high momentum often means the "
                               "statistics had too few steps at that momentum to catch up with the weights, but "
                               "differences within the noise floor (1. Findings) are noise.",
        "momentum_band.png": "For each group of trials with similar step counts: the momenta whose val accuracy "
                             "was within one val standard error of the trial's val-best for 3 in 4 trials (shaded; "
                             "fitted on val), with the group's size and leave-one-trial-out hits (trials that scored "
                             "at least their own momentum's held-out accuracy at the middle of the band fitted "
                             "without them). Only the steps the study ran are shown.",
        "params.png": "Each point is a finished trial; momentum is shown as 1 − bn_momentum on a log axis.",
        "ema_horizon.png": "Horizon = training steps × (1 − bn_momentum); left of the red line the running "
                           "statistics have seen less than one time constant of updates.",
        "momentum_batch.png": "Colour is the gap; batchnorm trials only.",
        "parallel.png": figures.PARALLEL_CAPTION,
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
        elif filename == "momentum_curves.png":
            notes.append(f"Figure '{title}' is left out: no finished batchnorm trial has a momentum curve (see 1. "
                         "Findings).")
        else:
            notes.append(f"Figure '{title}' has no data.")
    if best is not None:
        try:
            drawn = figures.confusion_png(client, best)
        except Exception as error:  # noqa: BLE001
            drawn = None
            notes.append(f"The best trial's confusion matrix could not be read: {type(error).__name__}: {error}")
        if drawn:
            figs.figures.append(FigureImage(
                "confusion_matrix.png", f"Confusion matrix of the best trial ({best.number})",
                "Rows: true class; columns: predicted class; classes: " + ", ".join(drawn[1]) + ".", drawn[0]))
    sections.append(figs)
    sections.append(Section(SECTION_TITLES[5],
                            paragraphs=[f"The {tables.TOP_N} complete trials with the highest val accuracy."],
                            tables=[tables.top_table(views, ui.run)], code=next_steps.retrain(best, settings)))
    sections.append(Section(SECTION_TITLES[6], bullets=caveats(views, best, seed, notes, settings.get("prune_on"),
                                                                   study.user_attrs.get(contract.TRIALS_TARGET_ATTR))))

    classes = study.user_attrs.get(contract.CLASS_NAMES_ATTR) or []
    summary = [f"Study: {study.study_name}",
               f"Classes: {', '.join(str(c) for c in classes) or 'unknown'}",
               f"Trials: {tables.trial_counts(views)}",
               f"MLflow parent run: {parent or 'unknown'}"]
    return Report(study.study_name, summary, headline(found, bool(with_curves)), found, sections,
                  next_steps.trials_needed(views, with_curves, study.study_name, settings), ui)


def smallest_gaps(finished: list[TrialView]) -> list[Finding]:
    """Says so when the smallest gaps belong to trials without batchnorm (no statistics to go stale)."""
    ordered = sorted((v for v in finished if math.isfinite(v.get("gap"))), key=lambda v: v.get("gap"))[:2]
    if len(ordered) < 2 or any(v.batchnorm for v in ordered):
        return []
    names = " and ".join(f"trial {v.number}" + (f" (preset {v.preset})" if v.preset else "") for v in ordered)
    gaps = " and ".join(fmt(v.get("gap")) for v in ordered)
    return [Finding("smallest_gaps", f"The two smallest gaps ({gaps}) belong to {names}, which have no batchnorm: "
                    "no statistics can go stale there.", split="val", scheme="per trial")]


def headline(found: list[Finding], paired_curves: bool) -> list[str]:
    """The first screen: what to do, what it measured on held-out images, whether to keep batchnorm, how sure.

    Every choice behind it was made on val or fixed in advance (`study.report.paired`); it only reads the
    findings. What would change what a reader does comes first: a best setting with no gap, an effect that
    holds only for trials stopped early.
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
            "across trials.", "By how much: see 1. Findings.", "How sure: not sure; see the counts in 7. Caveats."]


def curve_labels(views: list[TrialView], best: TrialView | None) -> dict[int, str]:
    """Which momentum curves the figure names: the best trial and the seed presets."""
    labels = {v.number: v.preset for v in views if v.preset}
    if best is not None:
        labels[best.number] = "best" + (f", {best.preset}" if best.preset else "")
    return labels
