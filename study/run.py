"""Run (or resume) the study: an Optuna search over the seed CNN, every trial tracked in MLflow.

    python -m study.run --trials 50                     # built-in dataset
    python -m study.run --trials 20 --data_dir ../shared/data/trashnet150 --image_size 64
    mlflow run . -P trials=50 --env-manager local       # the same, launched by MLflow

`trials` is the study's total of finished (complete or pruned) trials: rerunning with the same
study name and storage tops the study up to that total. Ctrl-C marks the running trials FAIL,
ends their MLflow runs KILLED and exits with 130 (study.stopping); rerun the command to resume.
`--workers N` trains N trials at once in N processes (study.workers); the same command on another
machine, with the same --study_name, --storage and MLFLOW_TRACKING_URI, joins the study.
`--confirm K` then retrains the recommended setting, the best one without batchnorm and the seed's with
K fresh seeds each (study.confirm); on a finished study it trains only what the confirmation lacks.
Every flag below is also an MLproject parameter of the same name (see MLproject).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gaplab.config import TrainConfig
from gaplab.dataset import DataError
from gaplab.device import DeviceError, prepare_backend
from gaplab.folders import list_image_folder
from study import stopping
from study.commands import (
    ArgumentParser,
    UsageError,
    command,
    fail,
    native_logs_filtered,
    quiet_logging,
)
from study.contract import DEFAULT_CONFIRM_K
from study.settings import (
    MAX_CONFIRM,
    STUDY_NAME_PATTERN,
    Settings,
    check_training_values,
)
from study.storage import StudyLocked, check_storage_url, default_storage

DEFAULT_TRIALS = 50
PRUNERS = ("median", "hyperband", "none")


def build_parser() -> argparse.ArgumentParser:
    from study.contract import DEFAULT_PRUNE_ON  # imports Optuna: `--help` and bad flags are answered without it

    defaults = TrainConfig()
    parser = ArgumentParser(prog=command("study.run"), description=__doc__.split("\n\n")[0])
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
        help="worker processes training trials of the study at the same time; at most one per CPU core when "
             "training on CPUs, 4 per GPU otherwise (default %(default)s)")
    add("--confirm", type=int, default=DEFAULT_CONFIRM_K,
        help="after the trials, retrain the recommended setting, the best one without batchnorm and the seed's "
             "setting with this many fresh seeds each, to confirm the answer on held-out images; 0: off; a rerun "
             f"tops it up (0 to {MAX_CONFIRM}, default %(default)s)")
    add("--gpus", type=str, default="",
        help="GPU indices for the workers, e.g. 0,1; worker i trains on GPU i mod G (default: every GPU there is)")
    return parser


def validate(args: argparse.Namespace) -> Settings:
    """Check every value before anything is created; raise UsageError naming the value.

    The cheap checks come first and need no heavy import: a bad data folder is answered before
    Optuna, MLflow or Keras loads, and no check here creates a file.
    """
    base = check_training_values(args)
    if args.pruner not in PRUNERS:
        raise UsageError(f"--pruner={args.pruner!r} is unknown; use one of {', '.join(PRUNERS)}.")
    if not 0 <= args.confirm <= MAX_CONFIRM:
        raise UsageError(f"--confirm={args.confirm} is invalid; use 0 (no confirmation) to {MAX_CONFIRM} seeds "
                         "per arm.")
    if args.skip_bad_images not in ("true", "false"):
        raise UsageError(f"--skip_bad_images={args.skip_bad_images!r} is invalid; use true or false.")
    if args.study_name and not STUDY_NAME_PATTERN.match(args.study_name):
        raise UsageError(f"--study_name={args.study_name!r} is invalid; use up to 100 letters, digits, "
                         "spaces, '.', '_' or '-', starting with a letter or digit.")
    if args.data_dir and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data_dir={args.data_dir!r} is not a folder; pass a folder of class subfolders, "
                         "or leave it empty for the built-in dataset.")
    if args.data_dir:
        try:
            list_image_folder(args.data_dir)  # its layout and classes, without decoding an image
        except DataError as error:
            raise UsageError(f"--data_dir={args.data_dir!r}: {error}") from None
    from study import workers  # imports NumPy and Optuna: after the checks that need none

    gpus = workers.parse_gpus(args.gpus, workers.list_gpus())
    workers.check_worker_count(args.workers, args.device, gpus)
    from study.contract import PRUNE_ON_METRIC

    if args.prune_on not in PRUNE_ON_METRIC:
        raise UsageError(f"--prune_on={args.prune_on!r} is unknown; use one of {', '.join(PRUNE_ON_METRIC)}.")
    storage = args.storage or default_storage()
    check_storage_url(storage)
    import mlflow  # the stores' checks come last: MLflow is the heaviest import of all

    from study.storage import check_tracking_reachable, check_tracking_store

    # Both stores are checked, servers asked once, before either is written (check_tracking_uri creates MLflow's).
    check_tracking_store(mlflow.get_tracking_uri(), create=True)
    check_tracking_reachable(mlflow.get_tracking_uri())
    return Settings(trials=args.trials, base=base, data_dir=args.data_dir, study_name=args.study_name,
                    storage=storage, pruner=args.pruner, prune_on=args.prune_on,
                    skip_bad_images=args.skip_bad_images == "true", device=args.device, workers=args.workers,
                    gpus=gpus, confirm=args.confirm)


def main(argv: list[str] | None = None, *, train_fn=None, program: str = "study.run",
         process_exits: bool | None = None) -> int:
    """The command; its exit code. `train_fn` stands in for gaplab.trainer.train (tests), in this process and in
    every `--workers` process, each of which runs `python -m <program>` (a program that passes the same
    `train_fn`): study.objective.Trainer, chosen here once.

    `process_exits` (by default: when the arguments are the process's own, `argv` None) says that the process
    ends with the command: after a stop, further signals are then ignored (study.stopping.graceful_stop).
    """
    with stopping.graceful_stop(process_exits=argv is None if process_exits is None else process_exits):
        try:
            return _command(list(sys.argv[1:] if argv is None else argv), train_fn, program)
        except (KeyboardInterrupt, Exception) as error:
            if not stopping.is_interruption(error):
                raise
            # Before or after the trials (start-up, loading data, writing the summary): nothing
            # half-trained to mark; the session's Tracker ended the runs this process had open KILLED.
            print("\ninterrupted; rerun the same command to resume.", file=sys.stderr)
            return stopping.EXIT_CODE


def _command(argv: list[str], train_fn, program: str) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = validate(args)
        quiet_logging()
        prepare_backend(settings.device)
    except (UsageError, DeviceError) as error:
        return fail(str(error))
    from study import workers  # imported by `validate` already; at the top it would slow every bad flag's answer

    worker_index = os.environ.get(workers.WORKER_INDEX_ENV)
    if worker_index is None and settings.workers == 1:
        # Before TensorFlow or JAX is imported: they read these once.
        os.environ.update(workers.gpu_environment(0, settings.gpus))
    try:
        # Heavy imports after validation, so bad input is answered at once. A signal while the backend's
        # native modules load is acted on once they have (study.stopping), and their C++ start-up lines are
        # dropped (study.commands).
        with stopping.interrupts_deferred(), native_logs_filtered():
            from study import session
            from study.objective import Trainer

            session.training_device_for(settings.device)
        trainer = Trainer(train_fn, program) if train_fn else Trainer(program=program)
        if worker_index is not None:
            return session.run_worker_process(settings, int(worker_index), trainer)
        return session.run_study(settings, argv, trainer).exit_code
    except (DataError, DeviceError, UsageError) as error:
        return fail(str(error))
    except StudyLocked as error:
        return fail(str(error), exit_code=1)


if __name__ == "__main__":
    sys.exit(main())
