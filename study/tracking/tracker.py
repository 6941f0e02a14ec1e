"""The Tracker: every MLflow run of one process, from its start to its end.

It opens (or joins) the study's parent run, hands out trial runs (`trial`), owns the writer whose threads write
the trained trials' runs (study.tracking.writer), and ends every run through one function with one status rule
(study.tracking.runs.end_run, `Ending`): FINISHED, or its trial state's status, when written; FAILED on a
failed write or a crash; KILLED when interrupted or found dead. A trial's run is the Tracker's until it is
handed to the writer (`hand_over`), and the writer's after; `close` waits for the writer and ends whatever is
still open. The runs of processes that died are ended by study.tracking.recovery (`recover`).

A stop request becomes the interrupt path in `trial`: any error a trial raises once a stop was requested
(study.stopping.is_interruption) ends its run KILLED and leaves as KeyboardInterrupt, which ends the Optuna
trial FAIL and stops `study.optimize`.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from types import TracebackType

import optuna
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from gaplab.data import Dataset
from gaplab.trainer import TrainResult
from study import stopping
from study.contract import RUN_ID_ATTR, STUDY_TAG, TRIAL_NUMBER_TAG, TRIAL_STATE_TAG, trial_run_name
from study.tracking import recovery, summary, writer
from study.tracking.parent import attach_parent_run
from study.tracking.runs import (
    Ending,
    TrialRun,
    end_run,
    experiment_of,
    log_dataset,
    log_params_once,
    mark_model_training,
)


class Tracker:
    """The MLflow runs of one process for study `study_name` (see the module docstring).

    `parent_run_id`: a parent run another process (or the caller) owns, which trial runs nest in and this
    Tracker never ends; else `open_parent` opens the study's own. `tracking_writer`: the writer of the trained
    trials' runs (default: a new study.tracking.writer.TrackingWriter; tests and benchmarks pass slowed ones).
    Used as a context manager, it closes on leaving, and ends its runs as `abort` says where an error leaves.
    """

    def __init__(self, study_name: str, parent_run_id: str | None = None,
                 tracking_writer: writer.TrackingWriter | None = None):
        self.study_name = study_name
        self.parent_run_id = parent_run_id
        self._owns_parent = False
        self._writer = tracking_writer or writer.TrackingWriter()
        # Trial runs handed out and not handed over to the writer: the Tracker ends them.
        self._open: dict[str, TrialRun] = {}
        self._closed = False

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if error is not None:
            self.abort(error)
        else:
            self.close()

    # ---------------------------------------------------------------- the parent run

    def open_parent(self, study: optuna.Study, launcher_run: str | None, params: dict[str, object],
                    data: Dataset) -> str:
        """Find or create the study's parent run and make it this process's active run (it then ends with this
        Tracker); log `params` it lacks, and the dataset on a new one. Its id. The caller holds the study's lock."""
        parent, new = attach_parent_run(study, self.study_name, launcher_run)
        self.parent_run_id, self._owns_parent = parent.info.run_id, True
        mark_model_training(parent.info.experiment_id)
        log_params_once(self.parent_run_id, params)
        if new:
            log_dataset(data)
        return self.parent_run_id

    def summarize(self, study: optuna.Study, extra_metrics: dict[str, float] | None = None,
                  holding: contextlib.AbstractContextManager | None = None) -> None:
        """The end-of-study summary on the parent run (study.tracking.summary), once every trial run is written;
        `holding` (e.g. the study's lock) is held while it is logged, not while the writer is waited for."""
        self._writer.drain()
        with holding or contextlib.nullcontext():
            recovery.end_unwritten_trial_runs(study)
            summary.log_study_summary(study, self.study_name, extra_metrics)

    def describe(self, study: optuna.Study, ending: str) -> None:
        """The parent run's description (study.tracking.summary.describe_parent_run), `ending` saying how the
        command ended."""
        summary.describe_parent_run(study, self.study_name, ending=ending, run_id=self.parent_run_id)

    # ---------------------------------------------------------------- trial runs

    @contextlib.contextmanager
    def trial(self, trial: optuna.Trial, params: dict[str, object], run_name: str | None = None,
              tags: dict[str, str] | None = None) -> Iterator[TrialRun]:
        """A child run of the parent run for one trial, named `run_name` (default `trial-NNN`) and tagged with
        the study, the trial number and `tags`; its id is the trial's contract.RUN_ID_ATTR.

        The run is not this thread's active run: the writer ends it on its own thread once handed over
        (`hand_over`). Until then it ends here by the outcome: returning means COMPLETE, optuna.TrialPruned
        PRUNED, an interruption (see the module docstring) KILLED, raised again as KeyboardInterrupt, and any
        other error FAILED with the error logged.
        """
        if self.parent_run_id is None:
            raise ValueError("a trial run is nested in the study's parent run: open it (Tracker.open_parent) or "
                             "give the Tracker parent_run_id.")
        name = run_name or trial_run_name(trial.number)
        run_tags = run_context.resolve_tags({
            **(tags or {}), TRIAL_NUMBER_TAG: str(trial.number), STUDY_TAG: self.study_name,
            TRIAL_STATE_TAG: "RUNNING", MLFLOW_PARENT_RUN_ID: self.parent_run_id, MLFLOW_RUN_NAME: name})
        client = MlflowClient()
        # A signal between the run's creation and its registration would leave a run nothing ends: it takes
        # effect once the run is registered (`close` then ends it KILLED).
        with stopping.signals_deferred():
            created = client.create_run(experiment_of(self.parent_run_id), tags=run_tags, run_name=name)
            run = TrialRun(created.info.run_id, created.info.experiment_id, trial.number, name,
                           {key: str(value) for key, value in params.items()})
            self._open[run.run_id] = run
        state, ending, error_text, details = "COMPLETE", Ending.WRITTEN, None, None
        try:
            trial.set_user_attr(RUN_ID_ATTR, run.run_id)
            client.log_batch(run.run_id, params=[Param(key, value) for key, value in run.params.items()])
            yield run
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except (KeyboardInterrupt, Exception) as error:
            state = "FAIL"
            if not stopping.is_interruption(error):
                error_text, details = f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error))
                raise
            ending, error_text = Ending.INTERRUPTED, f"interrupted ({type(error).__name__}: {error})"
            if isinstance(error, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt(f"stop requested; {type(error).__name__}: {error}") from error
        finally:
            if self._open.pop(run.run_id, None) is not None:
                self._end_trial_run(client, run, ending, state, error_text, details)

    def _end_trial_run(self, client: MlflowClient, run: TrialRun, ending: Ending, state: str,
                       error: str | None, details: str | None) -> None:
        """End a run that was not handed over, after the epochs' metrics the writer still holds for it."""
        failure = self._writer.wait_for_epochs(run.run_id, writer.EPOCHS_WAIT_SECONDS)
        if failure is not None:
            print(f"trial {run.trial_number}: its epochs' metrics could not all be written to MLflow "
                  f"({type(failure).__name__}: {failure}).", file=sys.stderr, flush=True)
        end_run(client, run.run_id, ending, state, error, details)

    def epoch_logger(self, run: TrialRun) -> writer.EpochLogger:
        """A training callback that logs each epoch's metrics to `run` through the writer."""
        return writer.EpochLogger(run.run_id, self._writer)

    def prepare_write(self, run: TrialRun, result: TrainResult, data: Dataset, trial_state: str,
                      error: str | None = None, with_model: bool = False) -> writer.TrialWrite:
        """What the writer will log to a trained trial's run (study.tracking.writer.prepare_write)."""
        return writer.prepare_write(run, result, data, trial_state, error, with_model)

    def hand_over(self, write: writer.TrialWrite) -> None:
        """Give a trained trial's run to the writer, once it holds no other: the writer writes and ends it."""
        self._writer.wait_until_free()
        # Both or neither: a signal in between would leave the run to two owners or to none.
        with stopping.signals_deferred():
            self._writer.submit(write)
            self._open.pop(write.run.run_id, None)

    # ---------------------------------------------------------------- the end

    def recover(self, study: optuna.Study) -> list[int]:
        """End KILLED the runs finished trials of dead processes left RUNNING (study.tracking.recovery); their
        trial numbers."""
        return recovery.end_unwritten_trial_runs(study)

    def close(self, ending: Ending = Ending.WRITTEN) -> None:
        """Wait for the writer (at most writer.STOP_DRAIN_SECONDS after a stop), end the trial runs still open
        KILLED (or FAILED where the command `ending` FAILED), then the parent run, if this Tracker opened it, as
        `ending` says. Once: later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        stopped = ending is Ending.INTERRUPTED or stopping.requested.is_set()
        try:
            self._writer.drain(writer.STOP_DRAIN_SECONDS if stopped else None)
        finally:
            open_ending = Ending.FAILED if ending is Ending.FAILED else Ending.INTERRUPTED
            why = "the command failed" if open_ending is Ending.FAILED else "interrupted"
            # A client only where there are runs to end: an interrupt before the store exists must not create it.
            client = MlflowClient() if self._open or self._owns_parent else None
            for run in list(self._open.values()):
                end_run(client, run.run_id, open_ending, "FAIL", f"{why} before its trial could end it")
                self._open.pop(run.run_id, None)
            if self._owns_parent:
                end_run(client, self.parent_run_id, ending)

    def abort(self, error: BaseException) -> None:
        """`close` for a command that `error` ended: KILLED where it is an interruption, else FAILED (a crash:
        left open, MLflow's exit hook would end the parent run FINISHED)."""
        self.close(Ending.INTERRUPTED if stopping.is_interruption(error) else Ending.FAILED)
