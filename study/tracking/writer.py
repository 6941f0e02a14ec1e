"""The tracking writer: the background threads of a process's Tracker (study.tracking.Tracker), which write
each finished trial's MLflow run while the next trial trains. Only the Tracker uses it.

Once a trial has trained, the objective hands its run over (`Tracker.hand_over`);
the writer renders the figures, logs the final metrics, artifacts and model (`write_trial`), and only
then ends the run (`end_trial_run`). What the study promises still holds:

* a run ends, FINISHED, KILLED (pruned) or FAILED (diverged) with its trial_state tag, only after all
  it logs is written; until then it is RUNNING;
* a write that fails ends that run FAILED with the error (tag `error` starting "writing the run
  failed", error.txt) and its model FAILED; the study goes on, and the Optuna trial keeps its state:
  the measurement stands, only its record is incomplete;
* the writer holds at most one trial: `submit` first waits for the previous one, so a store slower
  than training slows the study down instead of piling up trials, and a stop has one trial to wait for;
* each epoch's metrics (`EpochLogger`) are written by a second thread of the writer, in order, so that
  the training thread does not wait for a store write per epoch (12 ms on SQLite with 2 busy cores;
  training on a GPU is about 20x faster, the write is not), and the epochs do not wait behind a
  trial's figures and model. A run's trial write, and the end of a run
  that is not handed over (study.tracking.Tracker), wait for that run's epochs first; an epoch that cannot
  be written ends a handed-over run FAILED like a failed write;
* before the summary (study.tracking.summary) and when its Tracker closes, the process waits for the
  writer; after a stop (Ctrl-C, SIGTERM) for at most STOP_DRAIN_SECONDS, after which the runs not
  written are ended KILLED (error tag starting "not written") and one line says so;
* after kill -9 a run the writer held stays RUNNING until study.tracking.recovery.end_unwritten_trial_runs
  ends it KILLED: the heartbeat path does where the process died during its next trial, and every
  start of the study and every summary does for processes of its host.

The model is built on the training thread (`prepare_write`) and only saved here: building a Keras
model draws its initializers' seeds from Python's global `random` (keras.random.make_default_seed),
which the trainer reseeds for each trial just before it builds or resets its model, so a build on
this thread changes the next trial's initial weights (measured: 4 of 5 seeded builds on TensorFlow,
5 of 5 on JAX). Saving a built model here while the main thread trains changed neither training nor
the saved weights on either backend.
"""

from __future__ import annotations

import functools
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

import keras
import mlflow
import numpy as np
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from gaplab.curve import MomentumCurve
from gaplab.data import Dataset
from gaplab.device import backend_package
from gaplab.trainer import EpochCallback, TrainResult
from study import shared_figures, stopping
from study.contract import (
    CONFUSION_MATRIX_ARTIFACT,
    CONFUSION_MATRIX_TEST_ARTIFACT,
    MOMENTUM_CURVE_ARTIFACT,
    MOMENTUM_CURVE_FIGURE,
    NOT_WRITTEN,
    TIMING_METRIC_PREFIX,
    WRITE_FAILED,
)
from study.tracking.runs import Ending, TrialRun, end_run, fail_pending_model, momentum_curve_metrics

# After a stop request, how long the process waits for the writer before ending its runs KILLED.
STOP_DRAIN_SECONDS = 30.0
# How often a drain looks for a second stop request.
DRAIN_POLL_SECONDS = 0.2
# How long a run that ends on the training thread (not handed over) waits for its epochs' metrics; only a
# stuck store makes it wait at all.
EPOCHS_WAIT_SECONDS = 10.0


@dataclass
class TrialWrite:
    """What the writer logs to a finished trial's run (`write_trial`) and how the run then ends (`end_trial_run`).

    `trial_state` is the Optuna state the trial ends in (COMPLETE, PRUNED, or FAIL where training
    diverged, with `error`). `model` is the stock-Keras model to log, built on the training thread
    (see the module docstring), under the logged model `model_id` created there.
    """

    run: TrialRun
    result: TrainResult
    trial_state: str
    error: str | None = None
    model: keras.Model | None = field(default=None, repr=False)
    model_id: str | None = None
    model_metadata: dict[str, str] = field(default_factory=dict)
    tracking_uri: str = field(default_factory=mlflow.get_tracking_uri)

    @property
    def model_uri(self) -> str | None:
        return f"models:/{self.model_id}" if self.model_id else None


def prepare_write(run: TrialRun, result: TrainResult, data: Dataset, trial_state: str,
                  error: str | None = None, with_model: bool = False) -> TrialWrite:
    """The writer's job for a finished trial, made on the training thread: with `with_model`, the stock-Keras
    model and its logged model (PENDING until written), whose URI the trial records before it ends."""
    portable = result.portable_model() if with_model else None
    if portable is None:
        return TrialWrite(run, result, trial_state, error)
    size = data.image_size
    # No signature: MLflow enforces a signature's input dtype exactly, and users hold images as
    # uint8 as often as float32 in 0-255; the model takes both, so its input and output are
    # described in the model's metadata instead. (mlflow 3.17 with Keras 3: input_example= fails,
    # input_example.json is written before its folder exists.)
    model_metadata = {"input": f"images, shape (n, {size}, {size}, 3), RGB values 0-255, dtype uint8 or float32",
                      "output": f"probabilities, shape (n, {data.num_classes}), classes {list(data.class_names)}"}
    logged = mlflow.initialize_logged_model(name=run.name, source_run_id=run.run_id,
                                            params=run.params, experiment_id=run.experiment_id)
    return TrialWrite(run, result, trial_state, error, portable, logged.model_id, model_metadata)


def write_trial(write: TrialWrite) -> None:
    """Final metrics, timings, confusion matrices, learning curves, the momentum curve and (where prepared) the
    model, named as the run (`trial-NNN`, or a confirmation's `confirm-<arm>-seed-<seed>`), on the trial's run; on
    the writer's thread, by run id. The run stays open.

    Every figure's title names its run (`TrialRun.title`), so a downloaded PNG keeps its context.
    """
    result, run_id, title, name = write.result, write.run.run_id, write.run.title, write.run.name
    client = MlflowClient(write.tracking_uri)
    timestamp = int(time.time() * 1000)
    # Final values share names with per-epoch metrics; log them at the last epoch's step, and not at
    # all where the last epoch already holds that value, so each history stays one point per epoch.
    last_epoch = {key: values[-1] for key, values in result.history.items() if values}
    finals = [Metric(key, value, timestamp, result.epochs) for key, value in result.final_metrics().items()
              if not (key in last_epoch and np.isclose(last_epoch[key], value, rtol=0, atol=1e-6))]
    # Under one prefix, so the MLflow UI groups them in a section of their own instead of sorting
    # them ahead of the accuracies.
    timings = [Metric(f"{TIMING_METRIC_PREFIX}{key}", value, timestamp, 0) for key, value in result.timings.items()]
    client.log_batch(run_id, metrics=finals + timings, tags=[RunTag("diverged", str(result.diverged).lower())])
    names = list(result.class_names)
    confusion = shared_figures.trial_confusion_renderer(tuple(names))
    for split, matrix, artifact in (("val", result.confusion_val, CONFUSION_MATRIX_ARTIFACT),
                                    ("test", result.confusion_test, CONFUSION_MATRIX_TEST_ARTIFACT)):
        client.log_dict(run_id, {"split": split, "class_names": names, "matrix": matrix.tolist()}, artifact)
        client.log_image(run_id, confusion(matrix, f"{title}: confusion matrix ({split})"),
                         artifact_file=artifact.removesuffix(".json") + ".png")
    curves = shared_figures.trial_curves_renderer(result.config.epochs)
    client.log_image(run_id, curves(result.history, f"{title}: learning curves"),
                     artifact_file="learning_curves.png")
    if result.momentum_curve is not None:
        log_momentum_curve(client, run_id, result.momentum_curve, result.config.momentum_grid, title)
    if write.model is not None:
        # mlflow.keras.log_model as it is, less its use of the calling thread's active run: the run by id.
        # step: the final metrics, logged at the last epoch, are linked to the model.
        mlflow.models.Model.log(None, mlflow.keras, name=name, run_id=run_id,
                                model_id=write.model_id, model=write.model, metadata=write.model_metadata,
                                step=result.epochs, pip_requirements=model_requirements())


def end_trial_run(write: TrialWrite, failure: BaseException | None = None) -> None:
    """End a written trial's run by its outcome; where the write failed (`failure`), FAILED with that error
    (the trial_state tag keeps the Optuna state) and its model, if any, FAILED."""
    client = MlflowClient(write.tracking_uri)
    if failure is None:
        end_run(client, write.run.run_id, Ending.WRITTEN, write.trial_state, write.error, write.error)
        return
    fail_pending_model(client, write.model_id)
    end_run(client, write.run.run_id, Ending.FAILED, write.trial_state,
            f"{WRITE_FAILED}: {type(failure).__name__}: {failure}", "".join(traceback.format_exception(failure)))


def abandon_trial_run(write: TrialWrite, reason: str) -> None:
    """End a finished trial's run that will not be written KILLED, with `NOT_WRITTEN: reason` as its error."""
    client = MlflowClient(write.tracking_uri)
    fail_pending_model(client, write.model_id)
    end_run(client, write.run.run_id, Ending.INTERRUPTED, write.trial_state, f"{NOT_WRITTEN}: {reason}")


def log_momentum_curve(client: MlflowClient, run_id: str, curve: MomentumCurve, grid: tuple[float, ...],
                       title: str) -> None:
    """momentum_curve.json (the trial's `MOMENTUM_CURVE_ATTR`), momentum_curve.png (every momentum of `grid`
    labelled) and the curve's metrics, on run `run_id`."""
    data = curve.as_dict()
    client.log_dict(run_id, data, MOMENTUM_CURVE_ARTIFACT)
    render = shared_figures.trial_momentum_renderer(tuple(grid), shared_figures.momentum_decades(curve.momentum))
    heading = f"{title}: momentum curve (own momentum {curve.own_momentum:g}, best {curve.best_momentum:g})"
    client.log_image(run_id, render(data, heading), artifact_file=MOMENTUM_CURVE_FIGURE)
    client.log_batch(run_id, metrics=momentum_curve_metrics(curve))


@functools.cache
def model_requirements() -> list[str]:
    """What serving a logged model needs: Keras and its backend, pinned to the versions trained with.

    Given explicitly because MLflow's inference of requirements reloads the model in a
    subprocess, which took 12 s per trial, several times the training itself.
    """
    return [f"{name}=={metadata.version(name)}" for name in ("keras", backend_package(), "numpy")]


@dataclass
class EpochMetrics:
    """One epoch's metrics for one run, as `TrackingWriter.log_epoch` queues them."""

    run_id: str
    metrics: list[Metric]
    tracking_uri: str = field(default_factory=mlflow.get_tracking_uri)


class EpochLogger(EpochCallback):
    """Logs each epoch's metrics to one run, with step = epoch, through `tracking_writer` (off the training thread)."""

    def __init__(self, run_id: str, tracking_writer: TrackingWriter):
        super().__init__()
        self.run_id = run_id
        self.writer = tracking_writer

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        self.writer.log_epoch(EpochMetrics(self.run_id, [
            Metric(key, value, timestamp, epoch) for key, value in metrics.items()]))


class TrackingWriter:
    """Two threads: one writes and ends the runs handed to it, one trial at a time, the other writes each epoch's
    metrics as they come (see the module docstring).

    `write` logs a trial's run (default: `write_trial`, looked up at each call) and `log_epoch_metrics`
    an epoch's (default: `write_epoch`); tests pass slow or failing stand-ins.
    """

    def __init__(self, write: Callable[[TrialWrite], None] | None = None,
                 log_epoch_metrics: Callable[[EpochMetrics], None] | None = None):
        self._write = write
        self._log_epoch_metrics = log_epoch_metrics
        self._jobs: queue.Queue[TrialWrite] = queue.Queue()
        self._epochs: queue.Queue[EpochMetrics] = queue.Queue()
        # Guards `_held` (runs handed over and not yet ended) and the end of each run, so that a run is
        # ended once: by the thread when written, or by `drain` when abandoned; and, per run, the epoch
        # batches queued and not yet written (`_epochs_pending`) and the first that failed.
        self._changed = threading.Condition()
        self._held: dict[str, TrialWrite] = {}
        self._epochs_pending: dict[str, int] = {}
        self._epoch_failures: dict[str, BaseException] = {}
        self._threads: list[threading.Thread] = []

    def _start(self) -> None:
        """Start the threads on first use (under `_changed`)."""
        if not self._threads:
            self._threads = [threading.Thread(target=self._work, name="tracking-writer", daemon=True),
                             threading.Thread(target=self._work_epochs, name="tracking-writer-epochs", daemon=True)]
            for thread in self._threads:
                thread.start()

    def wait_until_free(self) -> None:
        """Wait until the writer holds no trial: the previous one is written and ended."""
        with self._changed:
            self._changed.wait_for(lambda: not self._held)

    def submit(self, write: TrialWrite) -> None:
        """Hand a finished trial's run over, once the previous one is written; the writer ends it."""
        with self._changed:
            self._changed.wait_for(lambda: not self._held)
            self._start()
            self._held[write.run.run_id] = write
            self._jobs.put(write)

    def log_epoch(self, epoch: EpochMetrics) -> None:
        """Queue an epoch's metrics; they are written in order, before their run's trial write."""
        with self._changed:
            self._start()
            self._epochs_pending[epoch.run_id] = self._epochs_pending.get(epoch.run_id, 0) + 1
            self._epochs.put(epoch)

    def wait_for_epochs(self, run_id: str, timeout: float | None = None) -> BaseException | None:
        """Wait until the epochs queued for `run_id` are written, at most `timeout` seconds (None: as long as it
        takes); the first error writing them, if any."""
        with self._changed:
            self._changed.wait_for(lambda: run_id not in self._epochs_pending, timeout)
            return self._epoch_failures.pop(run_id, None)

    def drain(self, timeout: float | None = None) -> list[int]:
        """Wait until every run handed over is written and ended, at most `timeout` seconds (None: as long as it
        takes); end those still unwritten KILLED and say so in one line. Their trial numbers."""
        left: list[TrialWrite] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._changed:
                # A second Ctrl-C (stopping.repeated) cuts the wait short; the runs not written then end KILLED.
                while (self._held or self._epochs_pending) and not stopping.repeated.is_set():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._changed.wait(DRAIN_POLL_SECONDS if remaining is None else min(DRAIN_POLL_SECONDS, remaining))
        finally:
            # Also where a second Ctrl-C cuts the wait short: no run is left RUNNING behind the process.
            waited = (f"within {timeout:g} s" if timeout is not None and not stopping.repeated.is_set()
                      else "before a second stop request")
            with self._changed:
                left = list(self._held.values())
                self._held.clear()
                for write in left:
                    abandon_trial_run(write, f"the process stopped and its writer did not finish {waited}")
            if left:
                print(f"the MLflow run(s) of trial(s) {', '.join(str(w.run.trial_number) for w in left)} could not be "
                      f"written {waited}: ended KILLED without their figures and model (tag 'error').",
                      file=sys.stderr, flush=True)
        return [write.run.trial_number for write in left]

    def _work(self) -> None:
        while True:
            write = self._jobs.get()
            # The run's record is incomplete where one of its epochs could not be written: still written, it
            # ends FAILED with that error.
            failure = self.wait_for_epochs(write.run.run_id)
            try:
                (self._write or write_trial)(write)
            except Exception as error:  # noqa: BLE001 - a failed write ends its run FAILED; the study goes on
                failure = failure or error
            with self._changed:
                if self._held.pop(write.run.run_id, None) is not None:
                    try:
                        end_trial_run(write, failure)
                    except Exception as error:  # noqa: BLE001 - the thread must outlive one store error
                        print(f"the MLflow run of trial {write.run.trial_number} ({write.run.run_id}) could not be "
                              f"ended: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
                    if failure is not None:
                        print(f"trial {write.run.trial_number}: {WRITE_FAILED} ({type(failure).__name__}: {failure}); "
                              "its run ends FAILED and the study goes on.", file=sys.stderr, flush=True)
                self._changed.notify_all()

    def _work_epochs(self) -> None:
        while True:
            epoch = self._epochs.get()
            try:
                (self._log_epoch_metrics or write_epoch)(epoch)
            except Exception as error:  # noqa: BLE001 - the trial write reports it; the thread must go on
                with self._changed:
                    self._epoch_failures.setdefault(epoch.run_id, error)
            with self._changed:
                self._epochs_pending[epoch.run_id] -= 1
                if not self._epochs_pending[epoch.run_id]:
                    del self._epochs_pending[epoch.run_id]
                self._changed.notify_all()


def write_epoch(epoch: EpochMetrics) -> None:
    """An epoch's metrics, on the writer's epoch thread."""
    MlflowClient(epoch.tracking_uri).log_batch(epoch.run_id, metrics=epoch.metrics)
