"""Does the per-epoch climb prune the same trials as measuring every momentum? Real studies, side by side.

    PYTHONPATH=src:. python benchmarks/pruning_estimate.py --trials 50
    PYTHONPATH=src:. python benchmarks/pruning_estimate.py --trials 20 --data_dir ../shared/data/trashnet150 \\
        --image_size 64

With `prune_on=best_momentum` (the default) the pruner reads, each epoch, the val accuracy at the best grid
momentum. Before the last epoch the trainer estimates it (`gaplab.momentum.estimate_best`: climbs from the
previous epoch's estimate and from momentum 0); `train(best_momentum_search="full")` measures every momentum.
This runs the command's own study code (`study.session.run_study`: the default median pruner, the presets,
the same sampler seed) in throw-away stores, twice:

1. with every momentum measured, where at each report a callback also works out what the climb would have
   reported at those very weights (from the same accuracies), and asks the pruner what it would have
   decided with that value instead, on the same study: the estimate against the full scan, report by
   report, and the decisions that would change;
2. with the climb, as a study runs it: its pruned trials beside the first study's, trial by trial up to
   the first trial whose config differs (Optuna's TPE also ranks pruned trials by their reports, so the
   two studies part at the first report that differs), and the grid's val passes and seconds each way.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import tempfile
from pathlib import Path

import keras
import mlflow
import optuna

from gaplab.config import TrainConfig
from gaplab.metrics import eval_batch_size
from gaplab.momentum import accuracies_by_momentum, estimate_best
from gaplab.trainer import train
from study import session
from study.objective import PruningCallback
from study.settings import Settings


class WhatTheClimbWouldReport(keras.callbacks.Callback):
    """After the pruner's report of a full-scan epoch: the climb's value at these weights, and the pruner's
    decision with it (`decisions`, one dict per report before the last epoch)."""

    def __init__(self, config: TrainConfig, data, pruning: PruningCallback, decisions: list[dict]):
        super().__init__()
        self.config, self.val, self.pruning, self.decisions = config, (data.val.x, data.val.y), pruning, decisions
        self.previous: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        full = (logs or {}).get("val_accuracy_at_best_momentum")
        if full is None or epoch + 1 >= self.config.epochs:
            return
        momenta, (accuracies,) = accuracies_by_momentum(
            self.model, self.config.bn_momentum, self.config.momentum_grid, [self.val],
            own=[float(logs["val_accuracy"])], batch_size=eval_batch_size(len(self.val[1])))
        own = momenta.index(self.config.bn_momentum)
        best, known = estimate_best(momenta, accuracies.__getitem__, {own: accuracies[own]}, self.previous)
        self.previous = best
        trial = self.pruning.trial
        row = {"trial": trial.number, "epoch": epoch + 1, "full": full, "climb": accuracies[best],
               "passes": len(known) - 1, "prunable": self.pruning.prunable}
        if self.pruning.prunable and row["climb"] != full:
            study = trial.study
            stored = study._storage.get_trial(trial._trial_id)
            instead = copy.deepcopy(stored)
            instead.intermediate_values[epoch + 1] = row["climb"]
            # bool(): the median pruner answers with NumPy's bool, which json cannot write.
            row["pruned"] = bool(study.pruner.prune(study, stored))
            row["pruned_with_climb"] = bool(study.pruner.prune(study, instead))
        self.decisions.append(row)


def run(search: str, args: argparse.Namespace, folder: Path) -> dict:
    """One study with `search` in `folder`: per trial (number, state, params, reports), the grid's cost and, for
    the full scan, the climb's reports and decisions beside it."""
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    settings = Settings(trials=args.trials, base=TrainConfig(image_size=args.image_size, epochs=args.epochs,
                                                             seed=args.seed),
                        data_dir=args.data_dir, study_name="", storage=storage, pruner="median",
                        prune_on="best_momentum")
    costs = {"grid_validation_passes": 0.0, "grid_validation_seconds": 0.0}
    decisions: list[dict] = []

    def compared_train(config, data, callbacks=(), **keywords):
        if search == "full" and config.batchnorm:
            pruning = next(callback for callback in callbacks if isinstance(callback, PruningCallback))
            callbacks = [*callbacks, WhatTheClimbWouldReport(config, data, pruning, decisions)]
        result = train(config, data, callbacks=callbacks, best_momentum_search=search, **keywords)
        for name in costs:
            costs[name] += result.timings[name]
        return result

    os.chdir(folder)  # the MLflow store's default artifact root is ./mlruns
    outcome = session.run_study(settings, argv=[], train_fn=functools.partial(compared_train))
    study = optuna.load_study(study_name=outcome.study_name, storage=storage)
    trials = [{"number": t.number, "state": t.state.name, "params": t.params,
               "reported": {int(step): value for step, value in t.intermediate_values.items()}}
              for t in study.get_trials(deepcopy=False)]
    return {"trials": trials, "decisions": decisions, **costs}


def compare(full: dict, climb: dict) -> dict:
    rows = full["decisions"]
    judged = [row for row in rows if "pruned" in row]
    agreed = 0
    for a, b in zip(full["trials"], climb["trials"]):
        if a["params"] != b["params"] or a["reported"] != b["reported"] or a["state"] != b["state"]:
            break
        agreed += 1
    pruned = {name: sorted(t["number"] for t in study["trials"] if t["state"] == "PRUNED")
              for name, study in (("full", full), ("climb", climb))}
    return {
        "reports_before_the_last_epoch": len(rows),
        "climb_equals_full": sum(row["climb"] == row["full"] for row in rows),
        "largest_shortfall": max((row["full"] - row["climb"] for row in rows), default=0.0),
        "climb_passes_per_report": sum(row["passes"] for row in rows) / max(len(rows), 1),
        "differing_reports_of_prunable_trials": len(judged),
        "decisions_changed": [row for row in judged if row["pruned"] != row["pruned_with_climb"]],
        "trials_identical_in_both_studies": agreed, "pruned": pruned,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else ""
    here = Path.cwd()
    results = {}
    for search in ("full", "climb"):
        with tempfile.TemporaryDirectory(prefix=f"gaplab-pruning-{search}-") as folder:
            results[search] = run(search, args, Path(folder))
            os.chdir(here)
    c = compare(results["full"], results["climb"])
    print(f"{args.trials} trials. Reports before the last epoch: {c['reports_before_the_last_epoch']}; the climb "
          f"reported the full scan's value at {c['climb_equals_full']}, at most {c['largest_shortfall']:.4f} less "
          f"elsewhere, measuring {c['climb_passes_per_report']:.2f} val passes a report.")
    print(f"Of prunable trials' reports that differed ({c['differing_reports_of_prunable_trials']}), the pruner "
          f"would have decided otherwise at {len(c['decisions_changed'])}: {c['decisions_changed']}")
    print(f"The two studies: the first {c['trials_identical_in_both_studies']} trials identical.")
    for name in ("full", "climb"):
        print(f"  {name:5}: {len(c['pruned'][name])} pruned {c['pruned'][name]}; grid val passes "
              f"{results[name]['grid_validation_passes']:.0f} in {results[name]['grid_validation_seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "comparison": c}, indent=2))


if __name__ == "__main__":
    main()
