"""Which of a trial's per-epoch reports an Optuna pruner can ever read, so the trainer measures only those.

With `prune_on=best_momentum` a report costs a val pass at every grid momentum (about half a
training epoch). A report nobody reads changes no decision, so `read_epochs(pruner, prunable)`
answers, per epoch, whether any pruning decision (this trial's or a later one's) can read this
trial's report of that epoch; the trainer runs the grid's val pass only there
(`gaplab.trainer.train(best_momentum_at_epoch=...)`) and `study.objective.PruningCallback`
reports only there. Worked out from Optuna 5's pruners:

* `NopPruner` reads nothing.
* `MedianPruner` / `PercentilePruner` judge a trial at step s >= n_warmup_steps on the best of all
  its reports so far (so every report of a prunable trial counts) against the COMPLETE trials'
  reports at step s. Any trial may complete, a preset included, so every report at a step
  >= n_warmup_steps is read; only a preset's reports before the warm-up are not. (Epochs count
  from 1, so `n_warmup_steps=1` leaves none.) The start-up trials are not judged, but they
  complete, and their reports are what the later trials are judged against.
* `SuccessiveHalvingPruner` / `HyperbandPruner` read a trial's report only when that trial asks
  (`should_prune`, which a preset never does) and only at a rung step,
  min_resource * reduction_factor ** k (k >= the bracket's early-stopping rate): the value is
  stored as the trial's rung value and compared with the other trials' rung values. Reports at
  other steps, and all of a preset's, are read by nothing.
* Any other pruner: every report, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna


def read_epochs(pruner: optuna.pruners.BasePruner, prunable: bool) -> Callable[[int], bool]:
    """Whether `pruner` can read the report of a trial (`prunable`: it asks the pruner) at an epoch (from 1)."""
    if isinstance(pruner, optuna.pruners.NopPruner):
        return lambda epoch: False
    if isinstance(pruner, optuna.pruners.PercentilePruner):
        warmup = pruner._n_warmup_steps
        return lambda epoch: prunable or epoch >= warmup
    if isinstance(pruner, (optuna.pruners.SuccessiveHalvingPruner, optuna.pruners.HyperbandPruner)):
        min_resource, factor = pruner._min_resource, pruner._reduction_factor
        if not isinstance(min_resource, int):  # "auto": estimated from the trials that completed
            return lambda epoch: prunable
        # Hyperband's brackets start at rates 0, 1, ...: their rung steps together are every power.
        first_rate = getattr(pruner, "_min_early_stopping_rate", 0)
        return lambda epoch: prunable and _is_rung_step(epoch, min_resource, factor, first_rate)
    return lambda epoch: True


def _is_rung_step(epoch: int, min_resource: int, factor: int, first_rate: int) -> bool:
    step = min_resource * factor**first_rate
    while step < epoch:
        step *= factor
    return step == epoch
