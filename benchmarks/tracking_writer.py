"""What tracking costs the training thread per trial, written inline against by the background writer, in one run.

    PYTHONPATH=src:. python benchmarks/tracking_writer.py --image_size 32 --epochs 6 --trials 4

Two studies on the built-in data, in throw-away stores, take turns trial by trial with the same sampler
seed (so the same configs): one writes each trial's run on the training thread (figures, artifacts, final
metrics, model, then the run's end: what the objective did before study.tracking.writer), the other hands it to
the background writer (study.tracking.writer). Per trial it prints the seconds the objective spent outside
training and sampling (run start, user attributes, preparing the write, waiting for the writer, handing
over), the train() call's seconds (with the per-epoch callbacks: the inline study writes each epoch's
metrics there; the writer thread shares the CPU), and the seconds each thread spent writing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import optuna

from gaplab.config import TrainConfig
from gaplab.data import DEFAULT_IMAGES, generate_shapes
from gaplab.trainer import train
from study import space
from study.objective import Objective
from study.tracking import Tracker, writer


class InlineWriter(writer.TrackingWriter):
    """Writes each epoch's metrics, and writes and ends each run, on the calling (training) thread, as the
    objective did before the writer."""

    def log_epoch(self, epoch: writer.EpochMetrics) -> None:
        writer.write_epoch(epoch)

    def submit(self, write: writer.TrialWrite) -> None:
        failure = None
        try:
            writer.write_trial(write)
        except Exception as error:  # noqa: BLE001 - ended FAILED, as the background writer does
            failure = error
        writer.end_trial_run(write, failure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = generate_shapes(args.image_size, DEFAULT_IMAGES, 0)
    base = TrainConfig(image_size=args.image_size, epochs=args.epochs)
    writes: dict[str, list[float]] = {}
    timed_write = writer.write_trial

    def write_timed(write):
        started = time.perf_counter()
        timed_write(write)
        writes.setdefault(threading.current_thread().name, []).append(time.perf_counter() - started)

    writer.write_trial = write_timed
    seconds = {"inline": [], "background": []}
    trained = {"inline": [], "background": []}
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        mlflow.set_experiment("tracking-writer")
        studies, objectives, parents = {}, {}, {}
        for mode in seconds:
            parents[mode] = mlflow.MlflowClient().create_run(
                mlflow.get_experiment_by_name("tracking-writer").experiment_id, run_name=mode).info.run_id
            studies[mode] = optuna.create_study(storage=f"sqlite:///{Path(folder) / 'optuna.db'}", study_name=mode,
                                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                                pruner=optuna.pruners.NopPruner())
            outside = {}

            def timed_train(*call, outside=outside, **options):
                started = time.perf_counter()
                result = train(*call, **options)
                outside["train"] = outside.get("train", 0.0) + time.perf_counter() - started
                return result

            def timed_suggest(*call, outside=outside):
                started = time.perf_counter()
                config = space.suggest(*call)
                outside["suggest"] = outside.get("suggest", 0.0) + time.perf_counter() - started
                return config

            tracking_writer = InlineWriter() if mode == "inline" else writer.TrackingWriter()
            tracker = Tracker(mode, parent_run_id=parents[mode], tracking_writer=tracking_writer)
            objectives[mode] = (Objective(tracker, data, base, {}, prune_on="own_momentum", train_fn=timed_train,
                                          suggest_fn=timed_suggest), outside, tracking_writer)
        for _ in range(args.trials):
            for mode, (objective, outside, _) in objectives.items():
                outside.clear()

                def timed(trial, objective=objective, outside=outside):
                    started = time.perf_counter()
                    try:
                        return objective(trial)
                    finally:
                        outside["objective"] = time.perf_counter() - started

                studies[mode].optimize(timed, n_trials=1)
                seconds[mode].append(outside["objective"] - outside["train"] - outside.get("suggest", 0.0))
                trained[mode].append(outside["train"])
        objectives["background"][2].drain()
    for mode, values in seconds.items():
        print(f"{mode:>10}: tracking on the training thread per trial "
              + " ".join(f"{value:.2f}" for value in values) + f" s; median {statistics.median(values):.2f} s; "
              f"train() median {statistics.median(trained[mode]):.2f} s")
    for thread, values in writes.items():
        print(f"writes on thread {thread}: median {statistics.median(values):.2f} s ({len(values)})")


if __name__ == "__main__":
    main()
