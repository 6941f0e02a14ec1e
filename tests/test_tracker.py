"""study.tracking.Tracker: one owner for every MLflow run of a process, and one rule for how each ends."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from study import stopping
from study.tracking import Ending, Tracker

STUDY = "shapes-16px"


@pytest.mark.parametrize("ending, trial_state, status", [
    (Ending.WRITTEN, "COMPLETE", "FINISHED"), (Ending.WRITTEN, "PRUNED", "KILLED"), (Ending.WRITTEN, "FAIL", "FAILED"),
    (Ending.WRITTEN, None, "FINISHED"), (Ending.FAILED, "COMPLETE", "FAILED"), (Ending.FAILED, None, "FAILED"),
    (Ending.INTERRUPTED, "COMPLETE", "KILLED"), (Ending.INTERRUPTED, None, "KILLED"),
    (Ending.FOUND_DEAD, "FAIL", "KILLED")])
def test_how_a_run_ends_alone_decides_its_status(ending, trial_state, status):
    assert ending.status(trial_state) == status


def _tracker_with_its_parent(folder, data) -> tuple[optuna.Study, Tracker, str]:
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{folder / 'optuna.db'}")
    tracker = Tracker(STUDY)
    parent_id = tracker.open_parent(study, None, {"trials": 2}, data)
    return study, tracker, parent_id


def test_closing_after_an_interrupt_ends_the_trial_run_left_open_and_the_parent_killed_once(mock_study, tiny_data):
    study, tracker, parent_id = _tracker_with_its_parent(mock_study, tiny_data)
    # A trial's run that the interrupt left open: its trial never got to end it.
    trial_context = tracker.trial(study.ask(), {"depth": 2})
    run = trial_context.__enter__()
    tracker.close(Ending.INTERRUPTED)
    tracker.close(Ending.WRITTEN)  # closes once: this changes nothing
    client = MlflowClient()
    trial_run, parent = client.get_run(run.run_id), client.get_run(parent_id)
    assert (trial_run.info.status, trial_run.data.tags["trial_state"]) == ("KILLED", "FAIL")
    assert trial_run.data.tags["error"] == "interrupted before its trial could end it"
    assert trial_run.data.params == {"depth": "2"}
    assert parent.info.status == "KILLED" and parent.data.params["trials"] == "2"
    assert mlflow.active_run() is None


def test_an_error_a_trial_raises_after_a_stop_request_leaves_as_the_interrupt_and_its_run_ends_killed(
        mock_study, tiny_data):
    study, tracker, parent_id = _tracker_with_its_parent(mock_study, tiny_data)
    trial = study.ask()
    stopping.requested.set()
    with pytest.raises(KeyboardInterrupt, match="stop requested; ImportError: partially initialized"), tracker:
        with tracker.trial(trial, {}) as run:
            raise ImportError("partially initialized module 'keras'")
    client = MlflowClient()
    assert client.get_run(run.run_id).info.status == "KILLED"
    assert client.get_run(run.run_id).data.tags["error"] == \
        "interrupted (ImportError: partially initialized module 'keras')"
    assert client.get_run(parent_id).info.status == "KILLED", "an interrupt leaving the Tracker ends its parent KILLED"


def test_a_trial_that_fails_by_its_own_error_ends_its_run_failed_and_a_crash_ends_the_parent_failed(
        mock_study, tiny_data):
    study, tracker, parent_id = _tracker_with_its_parent(mock_study, tiny_data)
    with pytest.raises(RuntimeError), tracker:
        with pytest.raises(RuntimeError), tracker.trial(study.ask(), {}) as run:
            raise RuntimeError("out of memory")
        raise RuntimeError("the summary crashed")
    client = MlflowClient()
    failed = client.get_run(run.run_id)
    assert (failed.info.status, failed.data.tags["error"]) == ("FAILED", "RuntimeError: out of memory")
    assert "error.txt" in {item.path for item in client.list_artifacts(run.run_id)}
    assert client.get_run(parent_id).info.status == "FAILED"


def test_a_trial_run_takes_the_name_and_tags_it_is_given_and_nests_in_a_parent_it_does_not_end(mock_study):
    mlflow.set_experiment(STUDY)
    study = optuna.create_study(storage=f"sqlite:///{mock_study / 'optuna.db'}")
    trial = study.ask()
    with mlflow.start_run() as parent:
        with Tracker(STUDY, parent_run_id=parent.info.run_id) as tracker:
            with tracker.trial(trial, {}, run_name="confirm-recommended-seed-7", tags={"confirm_arm": "recommended"}):
                pass
        assert mlflow.active_run().info.run_id == parent.info.run_id, "the caller's parent run is the caller's"
    run = MlflowClient().get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.run_name == "confirm-recommended-seed-7" and run.info.status == "FINISHED"
    assert {key: run.data.tags[key] for key in ("confirm_arm", "optuna_trial_number", "study_name",
                                                 "trial_state", "mlflow.parentRunId")} == {
        "confirm_arm": "recommended", "optuna_trial_number": "0", "study_name": STUDY, "trial_state": "COMPLETE",
        "mlflow.parentRunId": parent.info.run_id}
