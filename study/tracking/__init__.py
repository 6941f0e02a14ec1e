"""The MLflow side of the study: a parent run per study, a nested child run per trial, all owned by one `Tracker`
per process (study.tracking.tracker). The objective and the session call the Tracker, never MLflow.

What the runs hold (see docs/logging.md):

* parent: study settings, dataset (log_input), best_val_accuracy, best params, importances,
  trials.csv, and the best model registered under the study's name with alias `best` (summary.py);
* child: params, tags `optuna_trial_number` / `trial_state`, per-epoch metrics (step = epoch),
  final metrics, confusion matrices, learning curves, the momentum curve (json, png and metrics
  whose step encodes the momentum) and, for complete trials, the model (writer.py).

The modules: tracker.py (the Tracker), runs.py (one MLflow call each, and the one rule that ends a run),
parent.py (finding the study's parent run), writer.py (the Tracker's background writer), recovery.py (the
runs of processes that died), summary.py (the end-of-study summary).
"""

from study.tracking.runs import Ending, TrialRun
from study.tracking.tracker import Tracker

__all__ = ["Ending", "Tracker", "TrialRun"]
