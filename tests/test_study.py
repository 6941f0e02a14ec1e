"""The study end to end: what each trial logs, pruning, diverged and interrupted trials, the MLflow contract (for
real, slow), Ctrl-C and resume, and where the stores are.

Bad input is in tests/test_cli.py, the MLproject and conda.yaml checks in tests/test_mlproject.py, the session's
behaviour across reruns (top-ups, presets, failed trials) in tests/test_session.py.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import signal
import subprocess
import sys

import mlflow
import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from gaplab.config import TrainConfig
from study import contract, stopping
from tests.helpers import (
    ROOT,
    child_runs,
    configured_backend,
    fake_train,
    load_study,
    make_folder,
    run_mocked,
    subprocess_env,
    wait_for_running_trial,
)

# -- tuner logic with a mock trainer: fast, no Keras -------------------------------------------


def test_pruned_trials_log_final_metrics_and_presets_are_never_pruned(mock_study):
    # Pruning on epoch 1 against the median: high-momentum trials look bad early.
    assert run_mocked(["--trials", "14", "--epochs", "3", "--image_size", "16", "--pruner", "median"]) == 0
    study = load_study(mock_study)
    assert all(t.state.name == "COMPLETE" for t in study.trials[:4])
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, "some searched trials should be pruned"
    runs = {r.data.tags["optuna_trial_number"]: r for r in child_runs("shapes-16px")}
    for trial in pruned:
        run = runs[str(trial.number)]
        assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "PRUNED"
        assert {"gap", "mode_gap", "val_accuracy", "val_accuracy_recalibrated"} <= set(run.data.metrics)


@pytest.mark.parametrize("prune_on, judged", [("own_momentum", "val_accuracy"),
                                             ("best_momentum", "val_accuracy_at_best_momentum")])
def test_the_pruner_judges_the_chosen_val_accuracy_and_the_objective_stays_the_own(mock_study, prune_on, judged):
    # The median pruner reads every epoch's report (study.pruning); --pruner none reads none, so is sent none.
    assert run_mocked(["--trials", "7", "--epochs", "2", "--image_size", "16", "--pruner", "median",
                            "--prune_on", prune_on]) == 0
    searched = [t for t in load_study(mock_study).trials if t.user_attrs["batchnorm"] and t.state.name == "COMPLETE"]
    for trial in searched:
        assert trial.intermediate_values == {1: pytest.approx(trial.user_attrs[judged]),
                                             2: pytest.approx(trial.user_attrs[judged])}
        assert trial.value == trial.user_attrs["val_accuracy"]
    assert any(t.user_attrs["val_accuracy"] < t.user_attrs["val_accuracy_at_best_momentum"] for t in searched)
    parent = MlflowClient().get_run(child_runs("shapes-16px")[0].data.tags["mlflow.parentRunId"])
    assert parent.data.params["prune_on"] == prune_on


def test_each_trial_logs_its_momentum_curve_as_json_figure_metrics_and_user_attribute(mock_study):
    from gaplab.momentum import momentum_step
    from study.contract import MOMENTUM_CURVE_ATTR, MOMENTUM_CURVE_KEYS

    assert run_mocked(["--trials", "6", "--epochs", "2", "--image_size", "16", "--pruner", "none"]) == 0
    client = MlflowClient()
    runs = {r.data.tags["optuna_trial_number"]: r for r in child_runs("shapes-16px")}
    trials = load_study(mock_study).trials
    assert [MOMENTUM_CURVE_ATTR in t.user_attrs for t in trials] == [False, False, True, True, True, True]
    for trial in trials:
        run_id = runs[str(trial.number)].info.run_id
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        if not trial.user_attrs["batchnorm"]:
            assert not {"momentum_curve.json", "momentum_curve.png"} & artifacts
            continue
        curve = trial.user_attrs[MOMENTUM_CURVE_ATTR]
        assert set(curve) == {"own_momentum", "recalibrated", *MOMENTUM_CURVE_KEYS}
        assert curve["momentum"] == sorted({*TrainConfig().momentum_grid, trial.user_attrs["bn_momentum"]})
        assert mlflow.artifacts.load_dict(f"runs:/{run_id}/momentum_curve.json") == curve
        assert "momentum_curve.png" in artifacts
        for key, values in ((contract.VAL_ACCURACY_AT_MOMENTUM_METRIC, curve["val_accuracy"]),
                            (contract.TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC, curve["train_eval_accuracy"])):
            points = {m.step: m.value for m in client.get_metric_history(run_id, key)}
            assert points == {momentum_step(m): pytest.approx(v) for m, v in zip(curve["momentum"], values)}
        metrics = client.get_run(run_id).data.metrics
        assert metrics["best_momentum"] == trial.user_attrs["best_momentum"]
        best = curve["val_accuracy"][curve["momentum"].index(metrics["best_momentum"])]
        assert metrics["val_accuracy_at_best_momentum"] == pytest.approx(best) == pytest.approx(
            max(curve["val_accuracy"]))
        # --pruner none reads no epoch's report, so the grid is not scored per epoch (study.pruning): the
        # history holds the final value alone, at the last epoch.
        per_epoch = client.get_metric_history(run_id, "val_accuracy_at_best_momentum")
        assert [m.step for m in per_epoch] == [2]
    # trials.csv keeps the curve's summary, not the nested curve.
    from study.tracking.summary import trials_table

    columns = set(trials_table(load_study(mock_study)).columns)
    assert "user_attrs_best_momentum" in columns and "user_attrs_" + MOMENTUM_CURVE_ATTR not in columns


def test_diverged_trial_is_failed_never_best(mock_study):
    def diverging(config, data, callbacks=(), verbose=0, **options):
        result = fake_train(config, data, callbacks)
        if config.bn_momentum == 0.8:  # seed-final, otherwise the best
            result.diverged = True
            result.val_accuracy = math.nan
        return result

    assert run_mocked(["--trials", "4", "--epochs", "1", "--image_size", "16", "--pruner", "none"], diverging) == 0
    study = load_study(mock_study)
    assert study.trials[3].state.name == "FAIL"
    assert study.best_trial.number != 3


def test_an_error_raised_while_stopping_still_ends_the_trial_as_interrupted(mock_study):
    # Ctrl-C can land inside library cleanup code (a zip file being closed, say) whose own error
    # then replaces the KeyboardInterrupt. The stop was requested all the same.
    def interrupted_in_cleanup(config, data, callbacks=(), verbose=0, **options):
        if config.batchnorm and config.bn_momentum == 0.99:  # seed-bn, the third trial
            stopping.requested.set()
            raise ValueError("I/O operation on closed file")
        return fake_train(config, data, callbacks)

    code = run_mocked(["--trials", "4", "--epochs", "1", "--image_size", "16", "--pruner", "none"],
                      interrupted_in_cleanup)
    assert code == stopping.EXIT_CODE
    assert [t.state.name for t in load_study(mock_study).trials[:3]] == ["COMPLETE", "COMPLETE", "FAIL"]
    runs = {r.data.tags["optuna_trial_number"]: r for r in child_runs("shapes-16px")}
    assert runs["2"].info.status == "KILLED", runs["2"].data.tags.get("error")
    assert "ValueError: I/O operation on closed file" in runs["2"].data.tags["error"]
    parent = MlflowClient().get_run(runs["2"].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"


# -- the real thing ------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_run_fulfils_the_tracking_contract(tmp_path):
    env = subprocess_env(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    done = subprocess.run(
        ["mlflow", "run", str(ROOT), "-P", "trials=3", "-P", "epochs=2", "-P", "image_size=32",
         "-P", f"storage={storage}", "-P", "confirm=0", "--env-manager", "local", "--experiment-name", "shapes-32px"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[3/3]" in done.stdout
    assert "sees no GPU, so training runs on the CPU" in done.stdout

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("shapes-32px")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, "the run `mlflow run` created is reused, not duplicated"
    parent = parents[0]
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main"
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "shapes-32px", "named after the study, not MLflow's random name"
    assert "filed this study under experiment" not in done.stdout
    for key in ("trials", "image_size", "epochs", "seed", "dataset", "dataset_size", "dataset_digest", "backend",
                "study_name", "pruner", "prune_on"):
        assert key in parent.data.params, key
    assert parent.data.params["backend"] == configured_backend()
    assert parent.data.params["backend_version"] == importlib.metadata.version(configured_backend())
    assert parent.data.params["device"] == "auto"
    assert parent.inputs.dataset_inputs[0].dataset.digest == parent.data.params["dataset_digest"]
    assert {"best_val_accuracy", "best_trial_number", "best_batch_size", "best_dropout",
            "best_depth"} <= set(parent.data.metrics)
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "param_importances.json"} <= parent_artifacts
    # Importances count the trials with batchnorm only: here seed-bn alone, too few to score.
    importances = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/param_importances.json")
    assert (importances["trials"], importances["without_batchnorm_left_out"]) == (1, 2)
    assert importances["reason"] == "1 finished trial(s) with batchnorm; importances need at least 3"
    assert not any(k.startswith("importance_") for k in parent.data.metrics)

    assert len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    for child in children:
        expected_params = {"batch_size", "dropout", "depth", "image_size", "epochs", "seed"}
        assert expected_params <= set(child.data.params)
        # A model without batchnorm has no momentum (study.space).
        assert ("bn_momentum" in child.data.params) == (child.data.params["batchnorm"] == "True")
        assert child.data.params["device"] == "CPU"
        assert child.data.tags["trial_state"] == "COMPLETE" and child.info.status == "FINISHED"
        assert {"train_accuracy", "train_eval_accuracy", "val_accuracy", "test_accuracy", "gap", "mode_gap",
                "generalization_gap", "val_accuracy_recalibrated", "steps"} <= set(child.data.metrics)
        timings = {key for key in child.data.metrics if key.endswith("_seconds")}
        assert {"system/timing/fit_seconds", "system/timing/eval_seconds",
                "system/timing/first_epoch_seconds"} <= timings
        assert all(key.startswith("system/timing/") for key in timings), "every timing on the System metrics tab"
        assert len(client.get_metric_history(child.info.run_id, "system/timing/fit_seconds")) == 1
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps[:2] == [1, 2] and max(steps) == 2, (key, steps)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"confusion_matrix.png", "confusion_matrix.json", "confusion_matrix_test.png",
                "confusion_matrix_test.json", "learning_curves.png"} <= artifacts
        if child.data.params["batchnorm"] == "True":  # seed-bn; the first two presets have no BN
            assert {"momentum_curve.json", "momentum_curve.png"} <= artifacts
            assert {"best_momentum", "val_accuracy_at_best_momentum", contract.VAL_ACCURACY_AT_MOMENTUM_METRIC} <= set(
                child.data.metrics)
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy_at_best_momentum")]
            assert steps == [1, 2]

    best_number = int(parent.data.metrics["best_trial_number"])
    best_child = next(r for r in children if r.data.tags["optuna_trial_number"] == str(best_number))
    assert ("best_bn_momentum" in parent.data.metrics) == (best_child.data.params["batchnorm"] == "True")
    version = client.get_model_version_by_alias("shapes-32px", "best")
    assert version.run_id == best_child.info.run_id
    model = mlflow.pyfunc.load_model("models:/shapes-32px@best")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("uint8")
    probabilities = model.predict(images)
    assert probabilities.shape == (3, 6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    # Images held as float32 in 0-255 are the same images.
    np.testing.assert_allclose(model.predict(images.astype("float32")), probabilities, rtol=1e-5, atol=1e-6)
    assert "uint8 or float32" in model.metadata.metadata["input"]


@pytest.mark.slow
def test_ctrl_c_fails_the_running_trial_and_resume_loses_nothing(tmp_path):
    env = subprocess_env(tmp_path)
    command = [sys.executable, "-m", "study.run", "--confirm", "0", "--epochs", "3", "--image_size", "16",
               "--pruner", "none"]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    process = subprocess.Popen([*command, "--trials", "4"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _, number = wait_for_running_trial(storage, "shapes-16px", [process.pid], first_number=1)
    assert number == 1
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_CODE, stderr[-3000:]
    assert "rerun the same command to resume" in stderr

    study = optuna.load_study(study_name="shapes-16px", storage=storage)
    assert [t.state.name for t in study.trials[:2]] == ["COMPLETE", "FAIL"]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    killed = [r for r in child_runs("shapes-16px") if r.data.tags["optuna_trial_number"] == "1"]
    assert [r.info.status for r in killed] == ["KILLED"], [r.data.tags.get("error") for r in killed]

    resumed = subprocess.run([*command, "--trials", "4"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = optuna.load_study(study_name="shapes-16px", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert sorted(t.user_attrs["preset"] for t in complete) == sorted(
        ["seed-initial", "seed-deeper", "seed-bn", "seed-final"]), "the interrupted preset is retried, none doubled"


def test_a_bad_image_stops_the_study_naming_the_flag_that_skips_it(mock_study, capsys):
    root = make_folder(mock_study / "photos", {"cat": 6, "dog": 6}, size=16)
    (root / "dog" / "broken.jpg").write_bytes(b"not an image")
    args = ["--trials", "1", "--data_dir", str(root), "--image_size", "16", "--epochs", "1", "--pruner", "none"]
    assert run_mocked(args) == 2
    error = capsys.readouterr().err
    assert "broken.jpg" in error and "--skip_bad_images" in error
    assert run_mocked([*args, "--skip_bad_images", "true"]) == 0
    assert "skipped 1 unreadable image file(s)" in capsys.readouterr().err


def test_a_study_honours_mlflow_experiment_name(mock_study, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "my experiments")
    assert run_mocked(["--trials", "4", "--epochs", "1", "--image_size", "16", "--pruner", "none"]) == 0
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("my experiments").experiment_id])
    assert len(runs) == 5 and {r.info.run_name for r in runs if "mlflow.parentRunId" not in r.data.tags} == {
        "shapes-16px"}


def test_a_moved_stores_folder_is_refused_on_rerun_and_the_old_path_is_not_re_created(tmp_path, monkeypatch, capsys):
    # The rerun used to re-create the old folder and write the new trials' artifacts there.
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    args = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]
    monkeypatch.chdir(old)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{old / 'mlflow.db'}")
    assert run_mocked(["--trials", "1", *args]) == 0
    mlflow.set_tracking_uri(None)
    old.rename(new)
    monkeypatch.chdir(new)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{new / 'mlflow.db'}")
    capsys.readouterr()
    assert run_mocked(["--trials", "2", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (
        f"error: study 'shapes-16px' was run with the MLflow store {old / 'mlflow.db'}, which no longer exists; this "
        f"run's is sqlite:///{new / 'mlflow.db'}. If the stores' folder was moved, its runs and artifacts still point "
        f"to {old}: move the folder back there to resume, or start a new study with another --study_name."), lines
    assert not old.exists()
    assert len(load_study(new).trials) == 1, "nothing was queued or run"


def test_a_tracking_server_that_answers_its_health_check_passes_even_behind_a_login(tmp_path):
    import http.server
    import threading

    from study.storage import check_tracking_reachable

    class Server(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/health" else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_reachable(f"http://u:pw@127.0.0.1:{server.server_port}")
        check_tracking_reachable(f"http://127.0.0.1:{server.server_port}/behind/login")  # answered 401
    finally:
        server.shutdown()
        server.server_close()
