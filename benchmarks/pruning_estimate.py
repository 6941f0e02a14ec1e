"""Does the per-epoch climb prune the same trials as measuring every momentum? Two real studies, side by side.

    PYTHONPATH=src:. python benchmarks/pruning_estimate.py --trials 50
    PYTHONPATH=src:. python benchmarks/pruning_estimate.py --trials 20 --data_dir ../shared/data/trashnet150 \\
        --image_size 64

With `prune_on=best_momentum` (the default) the pruner reads, each epoch, the val accuracy at the best grid
momentum. Before the last epoch the trainer estimates it by a climb from the previous epoch's best
(`gaplab.momentum.climb_to_best`); `train(best_momentum_search="full")` measures every momentum instead.
This runs the same study twice in this process (`study.session.run_study`, the command's own code, the
default median pruner, the presets, the same sampler seed), once each way, in throw-away stores, and
compares trial by trial: state, the epoch a pruned trial stopped at, and every value reported to the
pruner. While the two agree, the sampler sees the same history and proposes the same configs, so the
first disagreement is where the studies part. It also prints the grid's val passes and seconds each way.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from pathlib import Path

import mlflow
import optuna

from gaplab.config import TrainConfig
from gaplab.trainer import train
from study import session
from study.settings import Settings


def run(search: str, args: argparse.Namespace, folder: Path) -> dict:
    """One study with `search` in `folder`; per trial (number, state, params, reported values) and the grid's cost."""
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    settings = Settings(trials=args.trials, base=TrainConfig(image_size=args.image_size, epochs=args.epochs,
                                                             seed=args.seed),
                        data_dir=args.data_dir, study_name="", storage=storage, pruner="median",
                        prune_on="best_momentum")
    costs = {"grid_validation_passes": 0.0, "grid_validation_seconds": 0.0}

    def counted_train(*positional, **keywords):
        result = train(*positional, best_momentum_search=search, **keywords)
        for name in costs:
            costs[name] += result.timings[name]
        return result

    os.chdir(folder)  # the MLflow store's default artifact root is ./mlruns
    outcome = session.run_study(settings, argv=[], train_fn=functools.partial(counted_train))
    study = optuna.load_study(study_name=outcome.study_name, storage=storage)
    trials = [{"number": t.number, "state": t.state.name, "params": t.params,
               "reported": {int(step): value for step, value in t.intermediate_values.items()}}
              for t in study.get_trials(deepcopy=False)]
    return {"trials": trials, **costs}


def compare(full: dict, climb: dict) -> dict:
    """Trial-by-trial agreement, up to the first trial whose config or outcome differs."""
    agreed, first_difference, lower = 0, None, []
    for a, b in zip(full["trials"], climb["trials"]):
        if a["params"] != b["params"]:
            first_difference = first_difference if first_difference is not None else a["number"]
            break
        for step, value in a["reported"].items():
            estimate = b["reported"].get(step)
            if estimate is not None and estimate != value:
                lower.append({"trial": a["number"], "epoch": step, "full": value, "climb": estimate})
        if (a["state"], max(a["reported"], default=0)) != (b["state"], max(b["reported"], default=0)):
            first_difference = a["number"]
            break
        agreed += 1
    pruned = {name: sorted(t["number"] for t in study["trials"] if t["state"] == "PRUNED")
              for name, study in (("full", full), ("climb", climb))}
    return {"trials_agreeing": agreed, "first_difference": first_difference, "differing_reports": lower,
            "reports_compared": sum(len(t["reported"]) for t in full["trials"][:agreed]),
            "pruned": pruned}


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
    comparison = compare(results["full"], results["climb"])
    print(f"{args.trials} trials: {comparison['trials_agreeing']} agree in config, state, stopping epoch and every "
          f"report ({comparison['reports_compared']} reports); first difference: {comparison['first_difference']}")
    for name in ("full", "climb"):
        print(f"  {name:5}: pruned {comparison['pruned'][name]}; grid val passes "
              f"{results[name]['grid_validation_passes']:.0f} in {results[name]['grid_validation_seconds']:.1f} s")
    for row in comparison["differing_reports"]:
        print(f"  trial {row['trial']} epoch {row['epoch']}: full {row['full']:.4f}, climb {row['climb']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "comparison": comparison}, indent=2))


if __name__ == "__main__":
    main()
