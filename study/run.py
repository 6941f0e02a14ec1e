"""Run (or resume) the study: an Optuna search over the seed CNN, every trial tracked in MLflow.

    python -m study.run --trials 50                     # built-in dataset
    python -m study.run --trials 20 --data_dir ../shared/data/trashnet150 --image_size 64
    mlflow run . -P trials=50 --env-manager local       # the same, launched by MLflow

`trials` is the study's total of finished (complete or pruned) trials: rerunning with the same
study name and storage tops the study up to that total. Ctrl-C marks the running trials FAIL,
ends their MLflow runs KILLED and exits with 130; rerun the command to resume.
`--workers N` trains N trials at once in N processes (study.workers); the same command on another
machine, with the same --study_name, --storage and MLFLOW_TRACKING_URI, joins the study.
Every flag below is also an MLproject parameter of the same name (see MLproject).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gaplab.device import DEVICES, DeviceError, prepare_backend
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
    add("--skip_bad_images", "--skip-bad-images", type=str, default="false",
        help="true: skip unreadable image files (each is listed) instead of stopping with an error naming them "
             "(default %(default)s)")
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
        help="auto (the first GPU the backend sees, else the CPU), cpu, or gpu (an error without one) "
             "(default %(default)s)")
    add("--workers", type=int, default=1,
        help="worker processes training trials of the study at the same time (default %(default)s)")
    add("--gpus", type=str, default="",
        help="GPU indices for the workers, e.g. 0,1; worker i trains on GPU i mod G (default: every GPU there is)")
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
    skip_bad_images: bool = False
    device: str = "auto"
    workers: int = 1
    gpus: tuple[str, ...] = ()


def validate(args: argparse.Namespace) -> Settings:
    """Check every value before anything is created; raise UsageError naming the value."""
    if args.trials < 1:
        raise UsageError(f"--trials={args.trials} is invalid; use at least 1.")
    from gaplab.config import ConfigError, TrainConfig
    from study.contract import PRUNE_ON_METRIC

    try:
        TrainConfig(image_size=args.image_size, epochs=args.epochs, seed=args.seed).validate()
    except ConfigError as error:
        raise UsageError(f"--{error}") from None
    if args.pruner not in PRUNERS:
        raise UsageError(f"--pruner={args.pruner!r} is unknown; use one of {', '.join(PRUNERS)}.")
    if args.data_dir and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data_dir={args.data_dir!r} is not a folder; pass a folder of class subfolders, "
                         "or leave it empty for the built-in dataset.")
    if args.study_name and not STUDY_NAME_PATTERN.match(args.study_name):
        raise UsageError(f"--study_name={args.study_name!r} is invalid; use up to 100 letters, digits, "
                         "spaces, '.', '_' or '-', starting with a letter or digit.")
    if args.prune_on not in PRUNE_ON_METRIC:
        raise UsageError(f"--prune_on={args.prune_on!r} is unknown; use one of {', '.join(PRUNE_ON_METRIC)}.")
    if args.device not in DEVICES:
        raise UsageError(f"--device={args.device!r} is unknown; use one of {', '.join(DEVICES)}.")
    if args.skip_bad_images not in ("true", "false"):
        raise UsageError(f"--skip_bad_images={args.skip_bad_images!r} is invalid; use true or false.")
    if args.workers < 1:
        raise UsageError(f"--workers={args.workers} is invalid; use at least 1.")
    from study.workers import list_gpus, parse_gpus

    gpus = parse_gpus(args.gpus, list_gpus())
    storage = args.storage or default_storage()
    check_storage_url(storage)
    import mlflow

    from study.storage import check_tracking_store

    # Both stores are checked before either is written (check_tracking_uri creates MLflow's).
    check_tracking_store(mlflow.get_tracking_uri(), create=True)
    return Settings(trials=args.trials, data_dir=args.data_dir, image_size=args.image_size, epochs=args.epochs,
                    seed=args.seed, study_name=args.study_name, storage=storage, pruner=args.pruner,
                    prune_on=args.prune_on, skip_bad_images=args.skip_bad_images == "true", device=args.device,
                    workers=args.workers, gpus=gpus)


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

    def __init__(self, target: int, stream=sys.stdout, label: str = ""):
        self.target, self.stream, self.label = target, stream, label
        self.started = time.perf_counter()
        self.finished_here = 0
        self.last_state = None

    def __call__(self, study, trial) -> None:
        import optuna

        from study.contract import PRESET_ATTR

        done = count_finished(study)
        self.last_state = trial.state
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
        print(f"{self.label}[{done}/{self.target}] trial {trial.number}{label} {trial.state.name:<8} val={val:.3f} "
              f"gap={gap:+.3f} best={best} ETA {_format_seconds(eta)}", file=self.stream, flush=True)


def main(argv: list[str] | None = None, *, train_fn=None) -> int:
    """The command; its exit code. `train_fn` stands in for gaplab.trainer.train (tests)."""
    from study import stopping

    with stopping.graceful_stop():
        try:
            return _command(list(sys.argv[1:] if argv is None else argv), train_fn)
        except (KeyboardInterrupt, Exception) as error:
            if not stopping.is_interruption(error):
                raise
            # Before or after the trials (start-up, loading data, writing the summary): nothing
            # half-trained to mark; a run this process had open is ended KILLED.
            print("\ninterrupted; rerun the same command to resume.", file=sys.stderr)
            mlflow = sys.modules.get("mlflow")
            while mlflow is not None and mlflow.active_run() is not None:
                mlflow.end_run("KILLED")
            return stopping.EXIT_CODE


def _command(argv: list[str], train_fn) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = validate(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    quiet_logging()
    try:
        prepare_backend(settings.device)
    except DeviceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from study.workers import WORKER_INDEX_ENV, gpu_environment

    worker_index = os.environ.get(WORKER_INDEX_ENV)
    if worker_index is None and settings.workers == 1:
        # Before TensorFlow or JAX is imported: they read these once.
        os.environ.update(gpu_environment(0, settings.gpus))
    # Heavy imports after validation, so bad input is answered at once.
    from gaplab.data import DataError

    try:
        if worker_index is not None:
            return run_worker_process(settings, int(worker_index))
        return run_study(settings, argv, train_fn)
    except (DataError, DeviceError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def load_data(settings: Settings):
    from gaplab.data import DEFAULT_IMAGES, generate_shapes, load_image_folder

    if settings.data_dir:
        data = load_image_folder(settings.data_dir, settings.image_size, seed=settings.seed,
                                 skip_bad_images=settings.skip_bad_images)
        if data.skipped_files:
            print(f"skipped {len(data.skipped_files)} unreadable image file(s): "
                  + ", ".join(str(path) for path in data.skipped_files[:5])
                  + (", ..." if len(data.skipped_files) > 5 else ""), file=sys.stderr)
        return data
    return generate_shapes(settings.image_size, DEFAULT_IMAGES, settings.seed)


def make_pruner(name: str, epochs: int):
    import optuna

    if name == "median":
        # Four presets run first; start pruning once a few searched trials have reported.
        return optuna.pruners.MedianPruner(n_startup_trials=6, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def fixed_settings(settings: Settings, data) -> dict[str, object]:
    """The settings every process of one study must share (contract.FIXED_SETTINGS), and the data folder."""
    return {"dataset": data.name, "dataset_digest": data.digest, "image_size": settings.image_size,
            "epochs": settings.epochs, "seed": settings.seed, "data_dir": settings.data_dir}


def check_fixed_settings(study, study_name: str, current: dict[str, object]) -> None:
    """Store the study's fixed settings when new; UsageError if this run's differ from the stored ones."""
    from study.contract import FIXED_SETTINGS, SETTINGS_ATTR

    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, current)
        return
    differing = [name for name in FIXED_SETTINGS if stored.get(name) != current[name]]
    if differing:
        theirs = ", ".join(f"{name}={stored.get(name)!r}" for name in differing)
        ours = ", ".join(f"{name}={current[name]!r}" for name in differing)
        raise UsageError(f"study {study_name!r} was run with {theirs} (data_dir={stored.get('data_dir')!r}); this "
                         f"run has {ours}. Rerun with the study's settings, or start a new study with another "
                         "--study_name.")


def count_running(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def attach_parent_run(study, study_name: str, launcher_run: str | None):
    """Start (or reopen) the study's parent run; (the run, whether it is new).

    A study has one parent run for all its processes; its id is kept in the study. The first
    process uses the run `mlflow run` created for it, if any, else starts one.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from study.contract import PARENT_RUN_ID_ATTR

    stored = study.user_attrs.get(PARENT_RUN_ID_ATTR)
    if stored:
        try:
            if mlflow.MlflowClient().get_run(stored).info.lifecycle_stage == "active":
                return mlflow.start_run(run_id=stored), False
        except MlflowException:
            pass  # not in this tracking store (or deleted): the study gets a new parent run here
    if launcher_run:
        parent = mlflow.start_run(run_id=launcher_run)
        # `mlflow run` gives its run a random name; the study's is what users look for in the UI.
        mlflow.MlflowClient().update_run(launcher_run, name=study_name)
        experiment = mlflow.get_experiment(parent.info.experiment_id).name
        if experiment != study_name:
            print(f"note: mlflow run filed this study under experiment {experiment!r}; to file it under its own, "
                  f"run mlflow run . --experiment-name {study_name} ...", flush=True)
    else:
        # MLFLOW_EXPERIMENT_NAME, where set, picks the experiment as it does for any MLflow script.
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or study_name)
        parent = mlflow.start_run(run_name=study_name)
    study.set_user_attr(PARENT_RUN_ID_ATTR, parent.info.run_id)
    return parent, True


def run_study(settings: Settings, argv: list[str], train_fn=None) -> int:
    """The command: create or check the stores, then train in this process or in `--workers` processes."""
    import keras
    import mlflow
    import optuna

    from gaplab import device
    from gaplab.config import TrainConfig
    from study import contract, space, summary, tracking, workers
    from study.storage import check_tracking_uri, fail_stale_trials, heartbeat_grace, masked, open_optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    training_device = training_device_for(settings)
    # Read and drop the launcher's run id: a trial's `start_run` would otherwise resume that run.
    launcher_run = tracking.parent_run_id_from_launcher()
    os.environ.pop("MLFLOW_RUN_ID", None)
    tracking_uri = check_tracking_uri()
    storage = open_optuna_storage(settings.storage, tracking.end_stale_trial_run)
    data = load_data(settings)
    study_name = settings.study_name or f"{data.name}-{settings.image_size}px"
    base = TrainConfig(image_size=settings.image_size, epochs=settings.epochs, seed=settings.seed)
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                direction="maximize", pruner=make_pruner(settings.pruner, settings.epochs))
    check_fixed_settings(study, study_name, fixed_settings(settings, data))
    # Before presets are queued and the target is checked: a trial of a process that died must
    # neither count as present nor stay RUNNING (its MLflow run is ended by the storage's callback).
    fail_stale_trials(study)
    queued = space.enqueue_presets(study, base)
    already = count_finished(study)
    trials_at_start = len(study.trials)
    joining = count_running(study) > 0

    parent, new_parent = attach_parent_run(study, study_name, launcher_run)
    parent_id = parent.info.run_id
    study.set_user_attr(contract.TRACKING_URI_ATTR, tracking_uri)
    study.set_user_attr(contract.CLASS_NAMES_ATTR, list(data.class_names))
    mlflow.set_tag(contract.STUDY_TAG, study_name)
    fixed = {"image_size": settings.image_size, "epochs": settings.epochs, "seed": settings.seed}
    tracking.log_params_once(parent_id, {
        "trials": settings.trials, "data_dir": settings.data_dir, "study_name": study_name,
        "storage": masked(settings.storage), "pruner": settings.pruner, "prune_on": settings.prune_on, **fixed,
        "dataset": data.name, "dataset_size": data.size, "dataset_digest": data.digest,
        "dataset_source": data.source, "backend": keras.backend.backend(),
        "backend_version": device.backend_version(), "device": settings.device,
    })
    if new_parent:
        tracking.log_dataset(data)

    print(f"study {study_name!r}: {already}/{settings.trials} trials finished; dataset {data.name} "
          f"({len(data.train)}/{len(data.val)}/{len(data.test)} at {data.image_size}px); storage "
          f"{masked(settings.storage)}; MLflow {masked(tracking_uri)} run {parent_id}"
          + (f"; queued presets {', '.join(queued)}" if queued else "")
          + (f"; {settings.workers} workers" if settings.workers > 1 else ""), flush=True)

    seeds = [workers.sampler_seed(settings.seed, trials_at_start, index, joining) for index in range(settings.workers)]
    if settings.workers == 1:
        study.sampler = optuna.samplers.TPESampler(seed=seeds[0])
        objective = tracked_objective(settings, study_name, data, base, training_device, parent_id, train_fn)
        code = run_worker(study, objective, settings.trials, label="")
        interrupted = code == 130
    else:
        def trial_of(worker: str) -> str:
            mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(contract.WORKER_ATTR) == worker]
            if not mine:
                return "no trial (it had not started one)"
            return (f"trial {mine[-1].number}, which another worker fails after {heartbeat_grace()} s "
                    "without heartbeat and replaces")

        interrupted, deaths = workers.run_workers(argv, seeds, settings.gpus, trial_of)
        code = 130 if interrupted else 0
        if deaths and not interrupted:
            print(f"{len(deaths)} worker(s) died; the others went on.", file=sys.stderr)

    if interrupted:
        print("\ninterrupted: the running trials are marked FAIL and their MLflow runs KILLED; "
              "rerun the same command to resume.", file=sys.stderr)
        while mlflow.active_run() is not None:  # a trial's run if the interrupt beat its own handler
            mlflow.end_run("KILLED")
        return 130
    done = count_finished(study)
    if done < settings.trials:
        print(f"error: the study has {done}/{settings.trials} finished trials and no worker is left; see the "
              "errors above and the FAILED runs' 'error' tag in MLflow, then rerun to resume.", file=sys.stderr)
        mlflow.end_run("FAILED")
        return 1
    summary.log_study_summary(study, study_name)
    mlflow.log_metric("study_seconds", time.perf_counter() - started)
    mlflow.end_run("FINISHED")
    return 0 if code == 0 else 1


def training_device_for(settings: Settings) -> str:
    """The device this process trains on (DeviceError if --device gpu sees none).

    Says so in one line when `auto` fell back to the CPU.
    """
    from gaplab import device

    chosen = device.choose_device(settings.device)
    if chosen == "CPU" and settings.device == "auto":
        print(device.cpu_notice(), flush=True)
    return chosen


def tracked_objective(settings: Settings, study_name: str, data, base, training_device: str, parent_id: str,
                      train_fn=None):
    """The Optuna objective, also recording which process ran each trial (contract.WORKER_ATTR)."""
    from study.contract import WORKER_ATTR
    from study.objective import Objective

    fixed = {"image_size": settings.image_size, "epochs": settings.epochs, "seed": settings.seed,
             # Each trial's run records the device it trained on (the parent records the one asked for).
             "device": training_device}
    objective = Objective(study_name, data, base, fixed, prune_on=settings.prune_on, parent_run_id=parent_id,
                          train_fn=train_fn)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def run_trial(trial):
        trial.set_user_attr(WORKER_ATTR, worker)
        return objective(trial)

    return run_trial


def run_worker(study, objective, target: int, label: str, poll_s: float = 1.0) -> int:
    """Train trials until the study has `target` finished ones; 0, 130 if stopped, 1 once as many trials
    in a row failed as were missing when this worker started.

    A trial starts only while finished + running trials are fewer than `target`, so workers of one
    command do not overshoot; while the others' running trials would reach it, this worker waits,
    failing trials whose process died so that their place is taken.
    """
    import mlflow
    import optuna

    from study.contract import PARENT_RUN_ID_ATTR
    from study.storage import fail_stale_trials

    progress = ProgressPrinter(target, label=label)
    failures, allowed_failures = 0, max(target - count_finished(study), 1)
    try:
        while True:
            finished = count_finished(study)
            if finished >= target:
                return 0
            if finished + count_running(study) >= target:
                # The trials others run may be dead ones: fail those so that their place is taken.
                # (Before a trial of its own, study.optimize fails stale trials itself.)
                fail_stale_trials(study)
                time.sleep(poll_s)
                continue
            study.optimize(objective, n_trials=1, callbacks=[progress], catch=(Exception,), gc_after_trial=False)
            if progress.last_state != optuna.trial.TrialState.FAIL:
                failures = 0
                continue
            failures += 1
            if failures >= allowed_failures:
                print(f"error: {label}the last {failures} trial(s) all failed; see the FAILED runs' 'error' tag "
                      "in MLflow. Stopping.", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        parent = study.user_attrs.get(PARENT_RUN_ID_ATTR)
        while mlflow.active_run() is not None and mlflow.active_run().info.run_id != parent:
            mlflow.end_run("KILLED")  # a trial's run if the interrupt beat its own handler
        return 130


def run_worker_process(settings: Settings, index: int) -> int:
    """One of `--workers` processes: the command created the stores; train trials of the study until done."""
    import optuna

    from gaplab.config import TrainConfig
    from study import contract, tracking
    from study.storage import open_optuna_storage
    from study.workers import SAMPLER_SEED_ENV

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    training_device = training_device_for(settings)
    storage = open_optuna_storage(settings.storage, tracking.end_stale_trial_run)
    data = load_data(settings)
    study_name = settings.study_name or f"{data.name}-{settings.image_size}px"
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.TPESampler(seed=int(os.environ[SAMPLER_SEED_ENV])),
                              pruner=make_pruner(settings.pruner, settings.epochs))
    base = TrainConfig(image_size=settings.image_size, epochs=settings.epochs, seed=settings.seed)
    objective = tracked_objective(settings, study_name, data, base, training_device,
                                  study.user_attrs[contract.PARENT_RUN_ID_ATTR])
    return run_worker(study, objective, settings.trials, label=f"w{index} ")


if __name__ == "__main__":
    sys.exit(main())
