"""Benchmark a short real study on synthetic images: how fast trials train, and where the rest goes.

    python -m study.bench                                             # 32 px, CPU or GPU, whatever is seen
    KERAS_BACKEND=jax python -m study.bench --image_size 224 --images 10000 --epochs 3 --trials 10 \\
        --batch_size 128 --device gpu --json bench.json                # the seed's shape on a GPU
    python -m study.bench --workers 2                                 # 2 workers together against 1

Use it to size a study before running one, and to tell a GPU run from a CPU one. It needs no data:
the images are random pixels of shape (image_size, image_size, 3) in 6 classes, split 70/15/15
per class as an image folder is (gaplab.data.dataset_from_arrays).
The study is real (Optuna sampling, training, the measurements after each fit, MLflow tracking of
every trial with its figures and model, the end-of-study summary), in throw-away stores under a
temporary folder that also holds every artifact and is removed at the end, with no pruning and
without the seed presets, so every trial runs every epoch.
`--batch_size 0` samples the batch size from the search space like a study does; any other value
fixes it (the other parameters are still searched). The shared values (trials, image size, epochs,
seed, device, workers) are checked as `study.run` checks them, and the device is chosen as there.

It prints, and writes to `--json PATH`:
* backend, its version, and the device trials trained on;
* per trial: steady-state training images/s (median epoch after the first, training alone) and
  first-epoch seconds, and its seconds of training and of each part below but once per run;
* the study's wall time, the part spent training, and the fraction outside training split into
  compile (first epoch minus a steady one, plus model reset), measurements (validation each epoch,
  inference-mode and recalibrated accuracies, the momentum curve, confusion matrices), tracking
  (MLflow on the training thread: runs, metrics each epoch, handing the trial to the background
  writer; reporting to the pruner), sampling (Optuna: suggesting, storage, callbacks) and once per
  run (imports, data, stores, parent run, waiting for the writer, end-of-study summary). The parts
  add up to the wall time;
* the parts that stay as they are on a GPU (tracking, sampling, once per run: CPU work) against the
  training, which a GPU shortens;
* with `--workers N` (N > 1): the same study run alone, then N copies at once (independent
  processes and stores, sharing the machine and its devices), and their training images per second
  of wall time together against the one alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gaplab.config import TrainConfig
from gaplab.device import DEVICES, DeviceError, prepare_backend
from study.commands import ArgumentParser, UsageError, command, fail, native_logs_filtered, quiet_logging
from study.settings import check_training_values


class BenchFailed(RuntimeError):
    """A trial of the benchmark study failed, so its figures would not describe a study."""


PARTS = ("compile", "measurements", "tracking", "sampling", "once_per_run")
# The parts that are CPU work whatever trains the model: on a GPU they stay while training, compiling and
# the measurements' inference passes get faster.
GPU_STAYING_PARTS = ("tracking", "sampling", "once_per_run")
NUM_CLASSES = 6


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=command("study.bench"), description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--image_size", "--image-size", type=int, default=32, help="pixels (default %(default)s)")
    add("--images", type=int, default=1200, help="synthetic images in all (default %(default)s)")
    add("--epochs", type=int, default=3, help="epochs per trial, at least 2 for a steady epoch (default %(default)s)")
    add("--trials", type=int, default=4, help="trials in the study (default %(default)s)")
    add("--batch_size", "--batch-size", type=int, default=0,
        help="fixed batch size, or 0 to sample it from the search space (default %(default)s)")
    add("--workers", type=int, default=1,
        help="also run N copies at once and compare; at most one per CPU core when training on CPUs, 4 per GPU "
             "otherwise (default %(default)s)")
    add("--device", type=str, default="auto", help=f"one of {', '.join(DEVICES)} (default %(default)s)")
    add("--seed", type=int, default=0, help="seed for data, sampler and training")
    add("--json", type=str, default="", help="also write the results to this file")
    return parser


def validate(args: argparse.Namespace) -> TrainConfig:
    """The base TrainConfig of the benchmark study; UsageError naming the first bad value (as study.run's)."""
    base = check_training_values(args)
    if args.epochs < 2:
        raise UsageError(f"--epochs={args.epochs} is too few; use at least 2 (the first epoch compiles).")
    if args.images < 10 * NUM_CLASSES:
        raise UsageError(f"--images={args.images} is too few; use at least {10 * NUM_CLASSES}.")
    if args.batch_size < 0:
        raise UsageError(f"--batch_size={args.batch_size} is invalid; use 0 (search space) or a positive size.")
    if args.json:
        check_json_path(args.json)
    from study import workers  # imports NumPy and Optuna: after the checks that need none

    workers.check_worker_count(args.workers, args.device, workers.parse_gpus("", workers.list_gpus()))
    return base


def check_json_path(value: str) -> None:
    """UsageError unless `--json value` is a file this process can write: checked before the run, not after."""
    path = Path(value).expanduser()
    folder = path.resolve().parent
    if path.is_dir():
        raise UsageError(f"--json={value!r} is a folder; pass a file path, e.g. {path / 'bench.json'}.")
    if not folder.is_dir():
        raise UsageError(f"--json={value!r}: its folder does not exist; create it or pick another path.")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"--json={value!r} cannot be written (no write permission in {folder}); pick another "
                         "path.")


def synthetic_data(image_size: int, images: int, seed: int):
    """Random pixels in the seed's shape, 6 balanced classes, split 70/15/15 per class as folders are."""
    # After the arguments are checked, as every heavy import here (see `run_bench`).
    import numpy as np

    from gaplab.data import dataset_from_arrays

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (images, image_size, image_size, 3), dtype=np.uint8)
    y = np.arange(images) % NUM_CLASSES
    return dataset_from_arrays(x, y, tuple(f"class{index}" for index in range(NUM_CLASSES)), name="synthetic",
                               source=f"synthetic:?image_size={image_size}&images={images}&seed={seed}", seed=seed)


class _Clock:
    """Seconds spent inside chosen functions during the study, per trial."""

    def __init__(self):
        self.trials: list[dict] = []

    def timed(self, function, part: str):
        """`function`, adding the seconds of each call to the current trial's `part`."""

        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            try:
                result = function(*args, **kwargs)
            finally:
                self.trials[-1][part] = self.trials[-1].get(part, 0.0) + time.perf_counter() - started
            if part == "train_call":
                self.trials[-1]["result"] = result
            return result

        return timed_call


def run_bench(args: argparse.Namespace, base: TrainConfig, started: float) -> dict:
    """One study in throw-away stores; the measurements as a dict (see the module docstring).

    `started` is when the command started (time.perf_counter): the wall time counts from there.
    """
    # After the arguments are checked; the imports count as once per run. The backend's C++ start-up lines
    # are dropped as study.run drops them.
    with native_logs_filtered():
        import mlflow
        import optuna

        from gaplab import device
        from gaplab.trainer import train
        from study import space
        from study.objective import Objective
        from study.session import training_device_for
        from study.tracking import Tracker

        training_device = training_device_for(args.device)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = synthetic_data(args.image_size, args.images, args.seed)
    study_name = f"bench-{args.image_size}px"
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="gaplab-bench-") as folder:
        mlflow.set_tracking_uri(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        # A sqlite store keeps artifacts in ./mlruns of the working folder unless its experiment says otherwise.
        mlflow.set_experiment(experiment_id=mlflow.create_experiment(
            study_name, artifact_location=(Path(folder) / "artifacts").as_uri()))
        sampler = optuna.samplers.TPESampler(seed=args.seed)
        if args.batch_size:
            sampler = optuna.samplers.PartialFixedSampler({"batch_size": args.batch_size}, sampler)
        study = optuna.create_study(study_name=study_name, storage=f"sqlite:///{Path(folder) / 'optuna.db'}",
                                    direction="maximize", sampler=sampler, pruner=optuna.pruners.NopPruner())
        study_params = {"image_size": args.image_size, "epochs": args.epochs, "seed": args.seed,
                        "device": training_device}
        with mlflow.start_run(run_name=study_name) as parent, \
                Tracker(study_name, parent_run_id=parent.info.run_id) as tracker:
            objective = Objective(tracker, data, base, study_params, train_fn=clock.timed(train, "train_call"),
                                  suggest_fn=clock.timed(space.suggest, "sampling"))

            def timed_objective(trial):
                clock.trials.append({"number": trial.number, "began": time.perf_counter()})
                try:
                    return objective(trial)
                finally:
                    clock.trials[-1]["ended"] = time.perf_counter()

            mlflow.log_params({"backend": device.backend(), "backend_version": device.backend_version(),
                               "device": args.device})
            study.optimize(timed_objective, n_trials=args.trials, catch=(Exception,), gc_after_trial=False)
            tracker.summarize(study)
        failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
        if failed:
            raise BenchFailed(f"{len(failed)} of {args.trials} benchmark trials failed (first: trial "
                              f"{failed[0].number}); Optuna's warning above shows the error.")
    wall = time.perf_counter() - started
    return _account(clock.trials, wall, data, args, training_device, device.backend(), device.backend_version())


def _account(trials: list[dict], wall: float, data, args, training_device: str, backend: str, version: str) -> dict:
    """Per-trial figures and the wall time split into training and the parts outside it, per trial and in total."""
    parts = dict.fromkeys(PARTS, 0.0)
    training = 0.0
    per_trial = []
    for index, trial in enumerate(trials):
        result = trial["result"]
        timings = result.timings
        steady = timings["steady_epoch_seconds"]
        compile_in_fit = max(timings["first_epoch_seconds"] - steady, 0.0)
        trained = timings["epochs_seconds"] - compile_in_fit + timings["data_seconds"]
        # Inside fit but outside its epochs and validation passes (at the own momentum and, with
        # prune_on=best_momentum, at the grid's): the per-epoch callbacks (MLflow metrics, pruner).
        epoch_callbacks = (timings["fit_seconds"] - timings["epochs_seconds"] - timings["validation_seconds"]
                           - timings["grid_validation_seconds"])
        own = {"compile": compile_in_fit + timings["build_seconds"], "sampling": trial.get("sampling", 0.0)}
        own["measurements"] = trial["train_call"] - trained - own["compile"] - epoch_callbacks
        own["tracking"] = trial["ended"] - trial["began"] - trial["train_call"] - own["sampling"] + epoch_callbacks
        if index:  # Optuna's work between two trials: tell, storage, ask.
            own["sampling"] += trial["began"] - trials[index - 1]["ended"]
        training += trained
        for part, seconds in own.items():
            parts[part] += seconds
        batch = min(result.config.batch_size, len(data.train))  # as gaplab.trainer.FullBatches cuts them
        images_per_epoch = len(data.train) // batch * batch
        per_trial.append({
            "number": trial["number"], "batch_size": result.config.batch_size, "depth": result.config.depth,
            "epochs": result.epochs,
            "steady_images_per_second": images_per_epoch / steady if steady > 0 else float("nan"),
            "first_epoch_seconds": timings["first_epoch_seconds"], "steady_epoch_seconds": steady,
            "compile_seconds": own["compile"], "fit_seconds": timings["fit_seconds"],
            "training_images": images_per_epoch * result.epochs,
            "training_seconds": trained, "measurements_seconds": own["measurements"],
            "tracking_seconds": own["tracking"], "sampling_seconds": own["sampling"],
        })
    inside_trials = trials[-1]["ended"] - trials[0]["began"] if trials else 0.0
    parts["once_per_run"] = wall - inside_trials
    outside = sum(parts.values())
    # CPU work that a faster training device does not shorten.
    staying = sum(parts[part] for part in GPU_STAYING_PARTS)
    return {
        "backend": backend, "backend_version": version, "device": training_device, "requested_device": args.device,
        "image_size": args.image_size, "images": args.images, "train_images": len(data.train),
        "epochs": args.epochs, "trials": len(trials), "batch_size": args.batch_size or "search space",
        "per_trial": per_trial,
        "median_steady_images_per_second": statistics.median(t["steady_images_per_second"] for t in per_trial),
        "wall_seconds": wall, "training_seconds": training,
        "outside_training_seconds": outside, "outside_training_fraction": outside / wall,
        "outside_training": parts,
        "staying_on_a_gpu_seconds": staying, "staying_on_a_gpu_per_training": staying / training,
        "training_images_per_wall_second": sum(t["training_images"] for t in per_trial) / wall,
    }


def compare_workers(args: argparse.Namespace, argv: list[str]) -> dict:
    """The study alone, then `args.workers` copies at once; training images per wall second, together vs one."""
    with tempfile.TemporaryDirectory(prefix="gaplab-bench-workers-") as folder:
        def launch(index: int) -> tuple[subprocess.Popen, Path]:
            out = Path(folder) / f"worker{index}.json"
            command = [sys.executable, "-m", "study.bench", *argv, "--workers", "1", "--json", str(out),
                       "--seed", str(args.seed + index)]
            return subprocess.Popen(command, stdout=subprocess.DEVNULL), out

        def finish(runs) -> list[dict]:
            reports = []
            for process, out in runs:
                if process.wait() != 0:
                    raise BenchFailed(f"a benchmark worker exited with {process.returncode}; "
                                      "run the same command without --workers to see why.")
                reports.append(json.loads(out.read_text()))
            return reports

        alone = finish([launch(0)])[0]
        started = time.perf_counter()
        together = finish([launch(index) for index in range(args.workers)])
        together_wall = time.perf_counter() - started
    one = alone["training_images_per_wall_second"]
    all_images = sum(t["training_images"] for report in together for t in report["per_trial"])
    return {
        "workers": args.workers, "one_worker": alone,
        "one_worker_images_per_second": one, "all_workers_images_per_second": all_images / together_wall,
        "speedup": all_images / together_wall / one, "workers_wall_seconds": together_wall,
    }


def format_report(report: dict) -> str:
    lines = [f"backend {report['backend']} {report['backend_version']}, device {report['device']}; "
             f"{report['trials']} trials x {report['epochs']} epochs on {report['train_images']} training images "
             f"at {report['image_size']} px, batch size {report['batch_size']}",
             "  trial  batch depth  images/s  first epoch   training  compile  measurements  tracking  sampling"]
    for trial in report["per_trial"]:
        lines.append(f"  {trial['number']:5d} {trial['batch_size']:6d} {trial['depth']:5d} "
                     f"{trial['steady_images_per_second']:9,.0f} {trial['first_epoch_seconds']:11.2f}s "
                     f"{trial['training_seconds']:9.2f}s {trial['compile_seconds']:7.2f}s "
                     f"{trial['measurements_seconds']:12.2f}s {trial['tracking_seconds']:8.2f}s "
                     f"{trial['sampling_seconds']:8.2f}s")
    wall = report["wall_seconds"]
    lines.append(f"wall {wall:.1f}s: training {report['training_seconds']:.1f}s, outside training "
                 f"{report['outside_training_seconds']:.1f}s ({report['outside_training_fraction']:.0%})")
    for part, seconds in report["outside_training"].items():
        lines.append(f"  {part:<13} {seconds:7.1f}s  {seconds / wall:6.1%}")
    lines.append(f"staying on a GPU ({', '.join(GPU_STAYING_PARTS)}): {report['staying_on_a_gpu_seconds']:.1f}s, "
                 f"{report['staying_on_a_gpu_per_training']:.2f}x the training; a device that trains k times "
                 "faster leaves them as they are")
    if "workers" in report:
        workers = report["workers"]
        lines.append(f"{workers['workers']} workers together: {workers['all_workers_images_per_second']:,.0f} "
                     f"training images/s of wall time against {workers['one_worker_images_per_second']:,.0f} for one "
                     f"({workers['speedup']:.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        base = validate(args)
        quiet_logging()
        prepare_backend(args.device)
        if args.workers > 1:
            # The children get the same arguments, less --workers, --json and --seed, which they are given.
            workers = compare_workers(args, _without(argv, ("--workers", "--json", "--seed")))
            report = {**workers.pop("one_worker"), "workers": workers}
        else:
            report = run_bench(args, base, started)
    except (UsageError, DeviceError) as error:
        return fail(str(error))
    except BenchFailed as error:
        return fail(str(error), exit_code=1)
    # The file first: the results are kept even if printing them fails.
    unwritten = None
    if args.json:
        try:
            Path(args.json).expanduser().write_text(json.dumps(report, indent=2))
        except OSError as error:
            unwritten = f"--json={args.json!r} could not be written ({error}); the results are printed above."
    print(format_report(report), flush=True)
    return fail(unwritten, exit_code=1) if unwritten else 0


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """`argv` less the given flags and their values (as `--flag value` or `--flag=value`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not any(arg.startswith(flag + "=") for flag in flags):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())
