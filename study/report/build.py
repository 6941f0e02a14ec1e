"""`build_report(study, client)`: the analysis, assembled into a `Report`.

Pure: it reads the Optuna study and the MLflow runs, and writes nothing anywhere.
"""

from __future__ import annotations

from study import contract
from study.report import figures, paired, tables
from study.report.caveats import caveats
from study.report.document import SECTION_TITLES, FigureImage, Report, Section
from study.report.findings import across_trial_findings, best_setting
from study.report.views import complete_by_value, trial_views
from study.report.views import finished as finished_trials


def build_report(study, client) -> Report:
    """Analyse `study` (read only) and its MLflow runs via `client`; nothing is written anywhere."""
    views = trial_views(study)
    finished = finished_trials(views)
    complete = complete_by_value(views)
    best = complete[0] if complete else None
    parent = study.user_attrs.get(contract.PARENT_RUN_ID_ATTR)
    notes: list[str] = []
    seed = study.user_attrs.get(contract.SETTINGS_ATTR, {}).get("seed")
    if seed is None and parent:
        # Studies written before the settings were stored in the study: the parent run has the seed.
        try:
            seed = client.get_run(parent).data.params.get("seed")
        except Exception as error:  # noqa: BLE001 - a missing run only loses the seed number
            notes.append(f"The parent MLflow run {parent} could not be read ({type(error).__name__}).")

    # With momentum curves the findings are paired (same weights, only momentum differs); without,
    # they compare trials, which differ in everything at once.
    with_curves = paired.with_curves(finished)
    found = [best_setting(best)] + (paired.paired_findings(with_curves, finished) if with_curves
                                    else across_trial_findings(finished, paired.missing_curves(finished)))
    sections = [Section(SECTION_TITLES[0], bullets=found)]
    sections.append(Section(SECTION_TITLES[1], paragraphs=[
        "The four seed presets re-run here (first trials of the study) beside the numbers the seed reported."],
        tables=[tables.seed_table(views)]))
    sections.append(Section(SECTION_TITLES[2], paragraphs=[
        "Per finished trial: the gap split into mode gap (train-mode vs inference-mode accuracy on the training "
        "split) and generalization gap (inference-mode train vs val), and val accuracy before and after "
        "re-estimating batchnorm statistics."], tables=[tables.decomposition_table(views)]))
    sections.append(tables.importance_section(study))

    figs = Section(SECTION_TITLES[4])
    plots = [
        ("momentum_curves.png", "Momentum curves",
         lambda: figures.momentum_curves_figure(paired.with_curves(finished))),
        ("params.png", "Gap and val accuracy vs each parameter", lambda: figures.params_figure(finished)),
        ("ema_horizon.png", "Gap vs EMA horizon", lambda: figures.horizon_figure(finished)),
        ("momentum_batch.png", "Momentum × batch size", lambda: figures.momentum_batch_figure(finished)),
        ("learning_curves.png", "Learning curves of the top trials",
         lambda: figures.curves_figure(client, complete[:3])),
    ]
    captions = {
        "momentum_curves.png": "Each line is one trained model evaluated with batchnorm statistics tracked at each "
                               "momentum of a grid (same weights); colour is the trial's training steps. Where a "
                               "line drops, the statistics had too few steps at that momentum to settle.",
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
        elif filename == "momentum_curves.png":
            notes.append(f"Figure '{title}' is left out: no finished batchnorm trial has a momentum curve (see 1. "
                         "Findings).")
        else:
            notes.append(f"Figure '{title}' has no data yet.")
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
                            tables=[tables.top_table(views)]))
    sections.append(Section(SECTION_TITLES[6], bullets=caveats(views, best, seed, notes)))

    classes = study.user_attrs.get(contract.CLASS_NAMES_ATTR) or []
    summary = [f"Study: {study.study_name}",
               f"Classes: {', '.join(str(c) for c in classes) or 'unknown'}",
               f"Trials: {len(views)} ({len(finished)} finished with metrics)",
               f"MLflow parent run: {parent or 'unknown'}"]
    return Report(study.study_name, summary, found, sections)
