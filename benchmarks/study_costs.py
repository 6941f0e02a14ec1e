"""Where a real study's wall time goes: its trials' training epochs against everything else, side by side.

    python benchmarks/study_costs.py --repo /tmp/before --repo . -- -P trials=50
    python benchmarks/study_costs.py --repo . --python -- --trials 20 --data_dir ../shared/data/trashnet150 \\
        --image_size 64

Each `--repo` is a checkout of this project. For each, in the order given (`--rounds` repeats the
whole order, so two checkouts alternate), it runs the study in a fresh temporary folder with that
checkout's own code (PYTHONPATH), as `mlflow run REPO --env-manager local ARGS` (the default
entry point) or, with `--python`, `python -m study.run ARGS`, and times the command. It then reads
the timing metrics (`system/timing/*`) of every trial run from the study's MLflow store and prints, per checkout:

* training epochs: the trials' `epochs_seconds`, compile included (the yardstick);
* measurements: everything in `fit_seconds` that is not a training epoch (the per-epoch val pass,
  the grid's val passes, the per-epoch callbacks) plus `eval_seconds` (the passes after fit, of
  which the momentum curve);
* the rest of the wall time: tracking, sampling and once per run (imports, data, stores, summary);

each in seconds and as a multiple of the training epochs or a share of wall. The results also go
to `--json`. Only ratios taken in one invocation compare: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMINGS = ("epochs_seconds", "fit_seconds", "validation_seconds", "grid_validation_seconds", "eval_seconds",
           "momentum_curve_seconds", "data_seconds", "build_seconds", "copy_seconds")
# Where a trial run's timings are (study.contract.TIMING_METRIC_PREFIX), and where older checkouts put them.
TIMING_PREFIXES = ("system/timing/", "timing/")


def run_study(repo: Path, args: list[str], use_python: bool, folder: Path) -> tuple[float, float]:
    """When one study run in `folder` with `repo`'s code started and ended (time.time()); raises if it fails."""
    env = {**os.environ, "PYTHONPATH": f"{repo / 'src'}{os.pathsep}{repo}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    command = ([sys.executable, "-m", "study.run", *args] if use_python
               else ["mlflow", "run", str(repo), "--env-manager", "local", *args])
    started = time.time()
    with open(folder / "study.log", "w") as log:
        subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return started, time.time()


def trial_timings(folder: Path) -> list[dict[str, float]]:
    """The timing metrics (`system/timing/*`, or `timing/*` from older checkouts) of every trial run in `folder`'s
    MLflow store (runs without them are left out), and when each run started (`start`, time.time()), in that
    order."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=50_000)
    trials = []
    for run in runs:
        # A checkout older than the System metrics tab's prefix logged them under "timing/".
        prefix = next((p for p in TIMING_PREFIXES if f"{p}epochs_seconds" in run.data.metrics), None)
        if prefix is not None:
            trials.append({"start": run.info.start_time / 1000,
                           **{name: run.data.metrics.get(f"{prefix}{name}", 0.0) for name in TIMINGS}})
    return sorted(trials, key=lambda trial: trial["start"])


def _train_call(trial: dict[str, float]) -> float:
    return sum(trial[name] for name in ("fit_seconds", "eval_seconds", "data_seconds", "build_seconds",
                                        "copy_seconds"))


def account(started: float, ended: float, trials: list[dict[str, float]]) -> dict:
    wall = ended - started
    total = {name: sum(t[name] for t in trials) for name in TIMINGS}
    epochs = total["epochs_seconds"]
    callbacks = (total["fit_seconds"] - epochs - total["validation_seconds"] - total["grid_validation_seconds"])
    measurements = total["fit_seconds"] - epochs + total["eval_seconds"]
    train_other = total["data_seconds"] + total["build_seconds"] + total["copy_seconds"]
    rest = wall - total["fit_seconds"] - total["eval_seconds"] - train_other
    # Where the rest falls: before the first trial's run starts (the launcher, imports, data, stores), between
    # one trial's train() call and the next trial's run (tracking, sampling), and after the last trial's
    # train() call (its tracking, waiting for the writer, the summary).
    before = trials[0]["start"] - started
    between = sum(later["start"] - earlier["start"] - _train_call(earlier)
                  for earlier, later in zip(trials, trials[1:]))
    after = ended - trials[-1]["start"] - _train_call(trials[-1])
    parts = {
        "per-epoch val": total["validation_seconds"],
        "per-epoch grid val": total["grid_validation_seconds"],
        "per-epoch callbacks (metrics, pruner)": callbacks,
        "passes after fit": total["eval_seconds"],
        "  of which the momentum curve": total["momentum_curve_seconds"],
        "data, model reset, weight copy": train_other,
        "tracking, sampling, once per run": rest,
        "  before the first trial": before,
        "  between trials": between,
        "  after the last trial": after,
    }
    return {"wall_seconds": wall, "trials": len(trials), "training_epochs_seconds": epochs,
            "measurements_seconds": measurements, "parts_seconds": parts,
            "wall_per_training": wall / epochs, "measurements_per_training": measurements / epochs,
            "rest_share_of_wall": rest / wall}


def format_table(results: list[tuple[str, dict]]) -> str:
    header = "| part | " + " | ".join(label for label, _ in results) + " |"
    lines = [header, "|---|" + "---|" * len(results)]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row("wall", [f"{r['wall_seconds']:.0f} s ({r['wall_per_training']:.2f}x training)" for _, r in results])
    row("trials with timings", [str(r["trials"]) for _, r in results])
    row("training epochs (compile included)", [f"{r['training_epochs_seconds']:.0f} s" for _, r in results])
    row("measurements", [f"{r['measurements_seconds']:.0f} s ({r['measurements_per_training']:.2f}x training)"
                         for _, r in results])
    for part in results[0][1]["parts_seconds"]:
        row(part, [f"{r['parts_seconds'][part]:.0f} s" for _, r in results])
    row("tracking, sampling, once per run, share of wall", [f"{r['rest_share_of_wall']:.0%}" for _, r in results])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", action="append", required=True, help="a checkout of this project (repeatable)")
    parser.add_argument("--rounds", type=int, default=1, help="run every checkout this many times, alternating")
    parser.add_argument("--python", action="store_true", help="python -m study.run ARGS instead of mlflow run")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("study_args", nargs=argparse.REMAINDER, help="after --: the study's arguments")
    args = parser.parse_args()
    study_args = args.study_args[1:] if args.study_args[:1] == ["--"] else args.study_args
    results = []
    for round_index in range(args.rounds):
        for repo in args.repo:
            repo_path = Path(repo).resolve()
            with tempfile.TemporaryDirectory(prefix="gaplab-costs-") as folder:
                started, ended = run_study(repo_path, study_args, args.python, Path(folder))
                result = account(started, ended, trial_timings(Path(folder)))
            label = f"{repo} (round {round_index + 1})" if args.rounds > 1 else repo
            results.append((label, result))
            print(f"{label}: wall {result['wall_seconds']:.0f} s, {result['wall_per_training']:.2f}x its training "
                  "epochs", flush=True)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
