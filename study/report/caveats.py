"""The caveats: trial counts by state, pruning (and trials pruned for stale statistics), missing momentum
curves, edges of the search range, a single seed."""

from __future__ import annotations

import math

from optuna.trial import TrialState

from gaplab.config import PRESETS
from study import space
from study.report import paired
from study.report.tables import trial_counts
from study.report.views import TrialView, fmt_param
from study.report.views import finished as finished_trials


def _edge(view: TrialView, name: str) -> str | None:
    """'lower'/'upper' when the best value sits at the edge of the range it was sampled from."""
    declared = space.param(name)
    dist = view.distributions.get(declared.optuna_name)
    value = view.params.get(name)
    if value is None or dist is None:
        return None
    value = declared.to_optuna(value)  # compare in the sampled space: 1 - momentum in permille, dropout in percent
    if hasattr(dist, "choices"):
        choices = sorted(dist.choices)
        return "lower" if value == choices[0] else "upper" if value == choices[-1] else None
    low, high = dist.low, dist.high
    if declared.whole:
        return "lower" if value <= low else "upper" if value >= high else None
    scale = (lambda x: math.log(x)) if getattr(dist, "log", False) and low > 0 else (lambda x: x)
    position = (scale(value) - scale(low)) / (scale(high) - scale(low)) if high > low else 0.5
    edge = "lower" if position <= 0.05 else "upper" if position >= 0.95 else None
    if edge and declared.complement:  # 1 - momentum's lower edge is momentum's upper edge
        edge = "upper" if edge == "lower" else "lower"
    return edge


def _range_text(view: TrialView, name: str) -> str:
    """The range `name` was sampled from; only for parameters `_edge` found a distribution for."""
    dist = view.distributions[space.optuna_name(name)]
    if hasattr(dist, "choices"):
        return ", ".join(str(c) for c in dist.choices)
    low, high = (space.to_public(space.optuna_name(name), bound) for bound in (dist.low, dist.high))
    return f"{fmt_param(name, min(low, high))} to {fmt_param(name, max(low, high))}"


def untrained_presets(views: list[TrialView]) -> list[str]:
    """The seed presets of which the study has no trial at all, in the seed's order."""
    tried = {v.preset for v in views}
    return [name for name in PRESETS if name not in tried]


def caveats(views: list[TrialView], best: TrialView | None, seed: int | str | None, notes: list[str],
            prune_on: str | None = None, target: int | None = None) -> list[str]:
    """The caveats; `prune_on` is the study's stored setting (None for studies that predate it), `target` the
    --trials its latest command asked for (None for studies that predate it)."""
    counts = {state: sum(v.state == state for v in views) for state in TrialState}
    out = [f"Trials: {trial_counts(views)}."]
    waiting = [v for v in views if v.state == TrialState.WAITING]
    if counts[TrialState.RUNNING]:
        out.append("The study is still running: rerun the report when it has finished.")
    elif target is not None and len(finished_trials(views)) >= target and (waiting or untrained_presets(views)):
        # Studies queue each preset as it starts; older versions queued all four up front, and they wait there.
        presets = [v.preset for v in waiting if v.preset] + untrained_presets(views)
        count = len(presets) + len(waiting) - len([v for v in waiting if v.preset])
        queued = f"the seed preset(s) {', '.join(presets)}" if count == len(presets) else \
            f"{len(waiting)} queued trial(s)"
        out.append(f"The study reached its --trials={target} before {queued} could run; rerun python -m study.run "
                   f"with a larger --trials to train {'them' if count > 1 else 'it'}.")
    elif counts[TrialState.WAITING]:
        out.append(f"{counts[TrialState.WAITING]} trial(s) are queued but none is running: the study was interrupted "
                   "or has not been resumed. Rerun python -m study.run with the same --study_name and --storage to "
                   "finish it, then rerun the report.")
    finished = finished_trials(views)
    missing = paired.with_curves(finished) and paired.missing_curves(finished)
    for line in (paired.pruned_for_statistics(finished, prune_on), missing):
        if line:
            out.append(line)
    if counts[TrialState.PRUNED]:
        out.append("Pruned trials are measured at the epoch where they stopped, so their gap and accuracies "
                   "come from fewer epochs than complete trials; the headline effect leaves them out, and they are "
                   "a secondary line of their own.")
    if best is not None and not best.preset:  # a preset's values are fixed, not sampled from the range
        for name in space.names():
            edge = _edge(best, name)
            if edge:
                out.append(f"The best trial's {name} = {fmt_param(name, best.params[name])} is at the {edge} edge of "
                           f"its search range ({_range_text(best, name)}): widen the range to see whether the "
                           "optimum lies beyond it.")
    seed_text = f"seed {seed}" if seed is not None else "one seed"
    out.append(f"Every trial ran once ({seed_text}): re-run the best setting with other seeds to measure the "
               "variance before trusting differences smaller than it.")
    if any(not v.batchnorm for v in views):
        out.append("The seed-initial and seed-deeper presets have no batchnorm; they are left out of the momentum "
                   "split, the EMA horizon and the recalibration figures.")
    return out + notes
