"""Run (or resume) the study: an Optuna search over the seed CNN, every trial tracked in MLflow.

    python -m study.run --trials 50                     # built-in dataset
    python -m study.run --trials 20 --data_dir ../shared/data/trashnet150 --image_size 64
    mlflow run . -P trials=50 --env-manager local       # the same, launched by MLflow

`trials` is the study's total of finished (complete or pruned) trials: rerunning with the same
study name and storage tops the study up to that total. Ctrl-C marks the running trial FAIL,
ends its MLflow run KILLED and exits with 130; rerun the command to resume.
Every flag below is also an MLproject parameter of the same name (see MLproject).
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from gaplab.device import DEVICES, DeviceError, check_backend_installed, hide_gpus
from study.cli import ArgumentParser, UsageError, check_storage_url, default_storage, quiet_logging

DEFAULT_TRIALS = 50
PRUNERS = ("median", "hyperband", "none")
STUDY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$")


def build_parser() -> argparse.ArgumentParser:
    from gaplab.config import TrainConfig
    from study.contract import DEFAULT_PRUNE_ON

    defaults = TrainConfig()
    parser = ArgumentParser(prog="python -m study.run", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--trials", type=int, default=DEFAULT_TRIALS,
        help="total finished (complete or pruned) trials the study should have (default %(default)s)")
    add("--data_dir", "--data-dir", type=str, default="",
        help="image folder, root/<class>/*.jpg or root/{train,val,test}/<class>/ (default: built-in dataset)")
    add("--image_size", "--image-size", type=int, default=defaults.image_size, help="pixels (default %(default)s)")
    add("--epochs", type=int, default=defaults.epochs, help="maximum epochs per trial (default %(default)s)")
    add("--seed", type=int, default=defaults.seed, help="seed for data split, sampler and training")
    add("--study_name", "--study-name", type=str, default="",
        help="Optuna study, MLflow experiment and registered model name (default: <dataset>-<image_size>px)")
    add("--storage", type=str, default="",
        help="Optuna storage URL (default: sqlite:///optuna.db next to the MLflow store)")
    add("--pruner", type=str, default="median", help=f"one of {', '.join(PRUNERS)} (default %(default)s)")
    add("--prune_on", "--prune-on", type=str, default=DEFAULT_PRUNE_ON,
        help="what the pruner judges each epoch: the val accuracy at the best grid momentum (best_momentum) "
             "or at the trial's own (own_momentum); the objective is always the latter (default %(default)s)")
    add("--device", type=str, default="auto",
        help="auto (the first GPU the backend sees, else the CPU), cpu, or gpu (an error without one) (default %(default)s)")
    return parser


@dataclass(frozen=True)
class Settings:
    trials: int
    data_dir: str
    image_size: int
    epochs: int
    seed: int
    study_name: str
    storage: str
    pruner: str
    prune_on: str
    device: str = "auto"


def validate(args: argparse.Namespace) -> Settings:
    """Check every value before anything is created; raise UsageError naming the value."""
    if args.trials < 1:
        raise UsageError(f"--trials={args.trials} is invalid; use at least 1.")
    from gaplab.config import ConfigError, TrainConfig

    try:
        TrainConfig(image_size=args.image_size, epochs=args.epochs, seed=args.seed).validate()
    except ConfigError as error:
        raise UsageError(f"--{error}") from None
    if args.pruner not in PRUNERS:
        raise UsageError(f"--pruner={args.pruner!r} is unknown; use one of {', '.join(PRUNERS)}.")
    from study.contract import PRUNE_ON_METRIC

    if args.prune_on not in PRUNE_ON_METRIC:
        raise UsageError(f"--prune_on={args.prune_on!r} is unknown; use one of {', '.join(PRUNE_ON_METRIC)}.")
    if args.device not in DEVICES:
        raise UsageError(f"--device={args.device!r} is unknown; use one of {', '.join(DEVICES)}.")
    if args.data_dir and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data_dir={args.data_dir!r} is not a folder; pass a folder of class subfolders, "
                         "or leave it empty for the built-in dataset.")
    if args.study_name and not STUDY_NAME_PATTERN.match(args.study_name):
        raise UsageError(f"--study_name={args.study_name!r} is invalid; use up to 100 letters, digits, "
                         "spaces, '.', '_' or '-', starting with a letter or digit.")
    storage = args.storage or default_storage()
    check_storage_url(storage)
    return Settings(args.trials, args.data_dir, args.image_size, args.epochs, args.seed,
                    args.study_name, storage, args.pruner, args.prune_on, args.device)


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def count_finished(study) -> int:
    """Complete or pruned trials: what `--trials` counts."""
    from study.contract import FINISHED_STATES

    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


class ProgressPrinter:
    """Optuna callback: one line per finished trial with n/N, state, val, gap, best and ETA."""

    def __init__(self, target: int, stream=sys.stdout):
        self.target, self.stream = target, stream
        self.started = time.perf_counter()
        self.finished_here = 0

    def __call__(self, study, trial) -> None:
        import optuna

        from study.contract import PRESET_ATTR

        done = count_finished(study)
        if trial.state != optuna.trial.TrialState.FAIL:
            self.finished_here += 1
        per_trial = (time.perf_counter() - self.started) / max(self.finished_here, 1)
        eta = per_trial * max(self.target - done, 0)
        val = trial.user_attrs.get("val_accuracy", float("nan"))
        gap = trial.user_attrs.get("gap", float("nan"))
        try:
            best = f"{study.best_value:.3f} (#{study.best_trial.number})"
        except ValueError:
            best = "-"
        preset = trial.user_attrs.get(PRESET_ATTR)
        label = f" [{preset}]" if preset else ""
        print(f"[{done}/{self.target}] trial {trial.number}{label} {trial.state.name:<8} val={val:.3f} "
              f"gap={gap:+.3f} best={best} ETA {_format_seconds(eta)}", file=self.stream, flush=True)


def _interrupt(signum, frame):
    from study.objective import stop_requested

    stop_requested.set()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and SIGTERM end the study cleanly, also where a launcher or a background shell job
    # had set SIGINT to be ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = validate(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    quiet_logging()
    try:
        check_backend_installed()
    except DeviceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if settings.device == "cpu":
        hide_gpus()
    # Heavy imports after validation, so bad input is answered at once.
    from gaplab.data import DataError

    try:
        return run_study(settings)
    except (DataError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def load_data(settings: Settings):
    from gaplab.data import DEFAULT_IMAGES, generate_shapes, load_image_folder

    if settings.data_dir:
        return load_image_folder(settings.data_dir, settings.image_size, seed=settings.seed)
    return generate_shapes(settings.image_size, DEFAULT_IMAGES, settings.seed)


def make_pruner(name: str, epochs: int):
    import optuna

    if name == "median":
        # Four presets run first; start pruning once a few searched trials have reported.
        return optuna.pruners.MedianPruner(n_startup_trials=6, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def run_study(settings: Settings) -> int:
    import keras
    import mlflow
    import optuna

    from gaplab.config import TrainConfig
    from study import contract, space, summary, tracking
    from study.objective import Objective

    from gaplab import device

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    training_device = device.choose_device(settings.device)
    if training_device == "CPU" and settings.device == "auto":
        print(device.cpu_notice(), flush=True)
    data = load_data(settings)
    study_name = settings.study_name or f"{data.name}-{settings.image_size}px"
    base = TrainConfig(image_size=settings.image_size, epochs=settings.epochs, seed=settings.seed)
    space.depth_choices(settings.image_size)

    with warnings.catch_warnings():
        # Heartbeats are marked experimental in Optuna 5 but are its only way to fail the trial
        # of a process that died; the warning would print on every run.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            settings.storage,
            # A dead process's trial stops beating; the next run marks it FAIL instead of RUNNING.
            heartbeat_interval=15,
            grace_period=45,
        )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        pruner=make_pruner(settings.pruner, settings.epochs),
    )
    queued = space.enqueue_presets(study, base)
    already = count_finished(study)

    launcher_run = tracking.parent_run_id_from_launcher()
    if launcher_run:
        parent = mlflow.start_run()
    else:
        mlflow.set_experiment(study_name)
        parent = mlflow.start_run(run_name=study_name)
    parent_id = parent.info.run_id
    study.set_user_attr(contract.PARENT_RUN_ID_ATTR, parent_id)
    study.set_user_attr(contract.TRACKING_URI_ATTR, mlflow.get_tracking_uri())
    study.set_user_attr(contract.CLASS_NAMES_ATTR, list(data.class_names))
    mlflow.set_tag(contract.STUDY_TAG, study_name)
    fixed = {"image_size": settings.image_size, "epochs": settings.epochs, "seed": settings.seed}
    tracking.log_params_once(parent_id, {
        "trials": settings.trials, "data_dir": settings.data_dir, "study_name": study_name,
        "storage": settings.storage, "pruner": settings.pruner, "prune_on": settings.prune_on, **fixed,
        "dataset": data.name, "dataset_size": data.size, "dataset_digest": data.digest,
        "dataset_source": data.source, "backend": keras.backend.backend(),
        "backend_version": device.backend_version(), "device": settings.device,
    })
    tracking.log_dataset(data)

    print(f"study {study_name!r}: {already}/{settings.trials} trials finished; dataset {data.name} "
          f"({len(data.train)}/{len(data.val)}/{len(data.test)} at {data.image_size}px); storage {settings.storage}; "
          f"MLflow {mlflow.get_tracking_uri()} run {parent_id}"
          + (f"; queued presets {', '.join(queued)}" if queued else ""), flush=True)

    # Each trial's run records the device it trained on (the parent records the one asked for).
    objective = Objective(study_name, data, base, {**fixed, "device": training_device}, prune_on=settings.prune_on)
    progress = ProgressPrinter(settings.trials)
    stop_at_target = optuna.study.MaxTrialsCallback(settings.trials, states=contract.FINISHED_STATES)
    status = "FINISHED"
    try:
        while True:
            done = count_finished(study)
            remaining = settings.trials - done
            if remaining <= 0:
                break
            study.optimize(objective, n_trials=remaining, callbacks=[progress, stop_at_target],
                           catch=(Exception,), gc_after_trial=False)
            if count_finished(study) == done:
                print(f"error: the last {remaining} trial(s) all failed; see the FAILED runs' 'error' tag "
                      "in MLflow. Stopping.", file=sys.stderr)
                status = "FAILED"
                break
    except KeyboardInterrupt:
        print("\ninterrupted: the running trial is marked FAIL and its MLflow run KILLED; "
              "rerun the same command to resume.", file=sys.stderr)
        while mlflow.active_run() is not None:  # a trial's run if the interrupt beat its own handler
            mlflow.end_run("KILLED")
        return 130
    summary.log_study_summary(study, study_name)
    mlflow.log_metric("study_seconds", time.perf_counter() - started)
    mlflow.end_run(status)
    return 0 if status == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
