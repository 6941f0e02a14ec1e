"""`python -m study.run` with the mock trainer, as a process of its own: `python -m tests.mocked_run <flags>`.

For tests that start several commands at once, or send real signals and kill -9 at chosen moments,
without training a CNN. Two environment variables shape it:

* GAPLAB_TEST_TRIAL_SECONDS: each trial "trains" this long, checking for a stop request as the real
  trainer's batches do (study.objective.StopRequestCallback);
* GAPLAB_TEST_PAUSE_AFTER_RUN: after a trial's MLflow run is created, write `<trial number>` to the file
  GAPLAB_TEST_MARKER and sleep this long, before the run's id reaches the Optuna trial.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.helpers import exit_code, fake_train

TRIAL_SECONDS_ENV = "GAPLAB_TEST_TRIAL_SECONDS"
PAUSE_AFTER_RUN_ENV = "GAPLAB_TEST_PAUSE_AFTER_RUN"
MARKER_ENV = "GAPLAB_TEST_MARKER"


def slow_fake_train(config, data, callbacks=(), verbose=0, **options):
    """fake_train after GAPLAB_TEST_TRIAL_SECONDS of "batches", each of which honours a stop request."""
    deadline = time.monotonic() + float(os.environ.get(TRIAL_SECONDS_ENV, "0"))
    while time.monotonic() < deadline:
        time.sleep(0.02)
        for callback in callbacks:
            if hasattr(callback, "on_train_batch_end"):
                callback.on_train_batch_end(0)
    return fake_train(config, data, callbacks, verbose, **options)


def pause_after_trial_runs_are_created(seconds: float, marker: Path) -> None:
    from mlflow.tracking import MlflowClient

    from study.contract import TRIAL_NUMBER_TAG

    create_run = MlflowClient.create_run

    def create_then_pause(self, experiment_id, *args, tags=None, **kwargs):
        run = create_run(self, experiment_id, *args, tags=tags, **kwargs)
        if tags and TRIAL_NUMBER_TAG in tags:
            marker.write_text(tags[TRIAL_NUMBER_TAG])
            time.sleep(seconds)
        return run

    MlflowClient.create_run = create_then_pause


if __name__ == "__main__":
    if os.environ.get(PAUSE_AFTER_RUN_ENV):
        pause_after_trial_runs_are_created(float(os.environ[PAUSE_AFTER_RUN_ENV]), Path(os.environ[MARKER_ENV]))
    from study import run

    # As `python -m study.run` does: the process ends with the command. Its `--workers` processes run this module too.
    sys.exit(exit_code(run.main, sys.argv[1:], train_fn=slow_fake_train, program="tests.mocked_run",
                       process_exits=True))
