"""The study: CLI/MLproject agreement, bad parameters, the MLflow contract, resume, failures, Ctrl-C."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from gaplab.config import TrainConfig
from study import contract, stopping
from study import run as run_module
from tests.conftest import (
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

MLPROJECT_TYPES = {"int": int, "float": float, "string": str}


@pytest.mark.parametrize("entry_point", ["main", "report"])
def test_mlproject_parameters_match_the_cli(entry_point):
    from study import report

    parser_factory = {"main": run_module.build_parser, "report": report.build_parser}[entry_point]
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    declared = spec["entry_points"][entry_point]["parameters"]
    actions = {action.dest: action for action in parser_factory()._actions if action.dest != "help"}
    assert set(declared) == set(actions), "MLproject and the CLI must offer the same parameters"
    command = spec["entry_points"][entry_point]["command"]
    for name, declaration in declared.items():
        action = actions[name]
        assert f"--{name}" in action.option_strings
        assert f"--{name} {{{name}}}" in command, f"MLproject command must pass --{name}"
        assert (action.type or str) is MLPROJECT_TYPES[declaration["type"]], name
        assert action.default == declaration["default"], name
    assert spec["conda_env"] == "conda.yaml"


def test_conda_env_lists_the_same_dependencies_as_pyproject():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(item["pip"] for item in conda if isinstance(item, dict))
    assert set(pyproject) <= set(pip)


BAD_PARAMETERS = [
    (["--trials", "0"], "--trials=0 is invalid"),
    (["--data_dir", "no/such/folder"], "--data_dir='no/such/folder' is not a folder"),
    (["--pruner", "sometimes"], "--pruner='sometimes' is unknown; use one of median, hyperband, none"),
    (["--prune_on", "stale"], "--prune_on='stale' is unknown; use one of best_momentum, own_momentum"),
    (["--storage", "not a url"], "--storage='not a url' is not a database URL"),
    (["--storage", "sqlite:///missing/dir/o.db"], "does not exist"),
    (["--storage", "sqlite:///."], "is a folder, not a database file"),
    (["--study_name", "../etc"], "--study_name='../etc' is invalid"),
    (["--image_size", "4"], "--image_size=4 is invalid; use at least 14 pixels"),
    (["--image_size", "13"], "--image_size=13 is invalid; use at least 14 pixels: the seed presets every study "
                             "trains have 3 conv blocks, which need 14."),
    (["--epochs", "0"], "--epochs=0 is invalid; use at least 1"),
    (["--tri", "2"], "unrecognized arguments: --tri 2"),
    (["--skip_bad_images", "yes"], "--skip_bad_images='yes' is invalid; use true or false"),
    (["--device", "tpu"], "--device='tpu' is unknown; use one of auto, cpu, gpu"),
]


def test_bad_input_exits_2_with_one_line_from_the_real_command(tmp_path):
    # End to end once, as a user meets it: the process's exit code and stderr. The other cases run in-process.
    done = subprocess.run([sys.executable, "-m", "study.run", "--trials", "0"], cwd=tmp_path,
                          env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --trials=0 is invalid; use at least 1."
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing may be created"


# The command in a child that says, after it exits, which deep learning backends it had imported.
_REFUSING_CHILD = ("import sys\nfrom study import run\ncode = run.main(sys.argv[1:])\n"
                   "print(' '.join(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))\nsys.exit(code)")

EARLY_REFUSALS = [
    (["--storage", "sqlit:///x.db"], {}, "--storage='sqlit:///x.db' names the database 'sqlit', which SQLAlchemy "
                                         "does not know"),
    (["--storage", "postgresql+psycopg://u:pw@127.0.0.1:1/db"], {},
     "--storage='postgresql+psycopg://u:***@127.0.0.1:1/db' cannot be opened (connection failed"),
    (["--storage", "postgresql+pg8000://u@127.0.0.1:1/db"], {}, "needs the database driver 'pg8000'"),
    ([], {"MLFLOW_TRACKING_URI": "sqlit:///m.db"}, "MLFLOW_TRACKING_URI='sqlit:///m.db' has the scheme 'sqlit', "
                                                   "which MLflow does not know"),
    ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
     "MLFLOW_TRACKING_URI='http://127.0.0.1:1' cannot be used (one try of at most 10 s)"),
    ([], {"MLFLOW_TRACKING_URI": "postgresql+psycopg://u@127.0.0.1:1/m"},
     "MLFLOW_TRACKING_URI='postgresql+psycopg://u@127.0.0.1:1/m' cannot be opened (connection failed"),
    (["--data_dir", "one"], {}, "class 'b' in one has 1 image(s); the 70/15/15 split needs at least 3 per class"),
]


@pytest.mark.parametrize("args, env_extra, message", EARLY_REFUSALS)
def test_stores_tracking_uris_and_class_sizes_are_refused_before_keras_and_create_nothing(
        tmp_path, args, env_extra, message):
    work = tmp_path / "work"
    make_folder(work / "one", {"a": 5, "b": 1}, size=16)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _REFUSING_CHILD, "--trials", "1", *args], cwd=work,
                          env={**subprocess_env(tmp_path), **env_extra}, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert done.stdout.strip() == "", f"a backend was imported before the refusal: {done.stdout}"
    assert took < 20, f"refused after {took:.1f} s"  # about 1 s here; the bound allows a loaded machine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"], "no store may be created"
    assert sorted(p.name for p in work.iterdir()) == ["one"]


@pytest.mark.parametrize("args, message", BAD_PARAMETERS)
def test_bad_parameters_get_one_line_and_exit_2_before_anything_is_created(mock_study, capsys, args, message):
    assert run_mocked(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and message in err, err
    assert sorted(p.name for p in mock_study.iterdir()) == [], "nothing may be created"


def test_device_gpu_without_a_gpu_is_one_line_naming_the_backend_and_exit_2(mock_study, capsys):
    from gaplab.device import visible_gpus

    if visible_gpus():
        pytest.skip("this machine has a GPU")
    assert run_mocked(["--device", "gpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert error.startswith(f"error: device 'gpu' was asked for but the Keras backend {configured_backend()}")
    assert "sees no GPU" in error and error.endswith("or use --device cpu.")
    assert sorted(p.name for p in mock_study.iterdir()) == [], "nothing may be created"


def test_a_keras_backend_that_is_not_installed_is_one_line_and_exit_2(mock_study, monkeypatch, capsys):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    # The check reads KERAS_BACKEND (as Keras will), so it answers before any backend is imported.
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert run_mocked([]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: the Keras backend is torch (KERAS_BACKEND) but torch is not installed; install it (e.g. pip "
        "install -e \".[jax]\" and set KERAS_BACKEND=jax) or choose an installed backend.")
    assert sorted(p.name for p in mock_study.iterdir()) == []


# -- tuner logic with a mock trainer: fast, no Keras -------------------------------------------


def test_resume_tops_up_to_the_total_without_duplicates(mock_study):
    args = ["--epochs", "2", "--image_size", "16", "--pruner", "none"]
    assert run_mocked(["--trials", "3", *args]) == 0
    assert run_mocked(["--trials", "5", *args]) == 0
    assert run_mocked(["--trials", "5", *args]) == 0  # already there: runs nothing
    study = load_study(mock_study)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    presets = [t.user_attrs.get("preset") for t in study.trials]
    assert presets == ["seed-initial", "seed-deeper", "seed-bn", "seed-final", None], "presets once, first"
    children = child_runs("shapes-16px")
    assert sorted(int(r.data.tags["optuna_trial_number"]) for r in children) == [0, 1, 2, 3, 4]
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert parents == {study.user_attrs["mlflow_parent_run_id"]}, "every invocation attaches to the study's run"
    experiment = MlflowClient().get_experiment_by_name("shapes-16px")
    runs = MlflowClient().search_runs([experiment.experiment_id])
    assert len(runs) == 6, "one parent run, five trial runs: the rerun with nothing to do creates no run"
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_failing_trial_is_recorded_and_the_study_goes_on(mock_study, monkeypatch):
    from study import space

    real_suggest = space.suggest

    def crash_trial_5(trial, base):
        config = real_suggest(trial, base)
        return config.replace(dropout=0.99) if trial.number == 5 else config

    monkeypatch.setattr(space, "suggest", crash_trial_5)
    assert run_mocked(["--trials", "6", "--epochs", "1", "--image_size", "16", "--pruner", "none"]) == 0
    study = load_study(mock_study)
    states = {t.number: t.state.name for t in study.trials}
    assert states[5] == "FAIL" and list(states.values()).count("COMPLETE") == 6
    failed = next(r for r in child_runs("shapes-16px") if r.data.tags["optuna_trial_number"] == "5")
    assert failed.info.status == "FAILED" and failed.data.tags["trial_state"] == "FAIL"
    assert "simulated crash" in failed.data.tags["error"]


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
         "-P", f"storage={storage}", "--env-manager", "local", "--experiment-name", "shapes-32px"],
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
    command = [sys.executable, "-m", "study.run", "--epochs", "3", "--image_size", "16", "--pruner", "none"]
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
    from tests.conftest import make_folder

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


def test_the_eta_is_bounded_and_readable_for_any_trial_count():
    # A huge --trials printed "ETA 2522579688333431852236m48s".
    from study.progress import format_seconds

    assert [format_seconds(s) for s in (7, 303, 7500, 3 * 86400 + 4 * 3600 + 59)] == ["7s", "5m03s", "2h05m", "3d04h"]
    assert format_seconds(2.0 * 10**9 * 60) == format_seconds(1e300) == "over a year"
    assert format_seconds(float("inf")) == format_seconds(float("nan")) == "?"


def test_presets_past_the_trials_total_are_not_called_interrupted(mock_study):
    # After --trials 3 the fourth preset stayed queued, and the report said the study "was interrupted or has not
    # been resumed". Presets are now queued as they start: the fourth is not queued at all.
    from study.report.build import build_report

    args = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]
    assert run_mocked(["--trials", "3", *args]) == 0
    study = load_study(mock_study)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    caveats = build_report(study, MlflowClient()).section("caveats").bullets
    assert not any("interrupted" in line for line in caveats), caveats
    assert ("The study reached its --trials=3 before the seed preset(s) seed-final could run; rerun python -m "
            "study.run with a larger --trials to train it.") in caveats


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


def test_a_preset_that_failed_by_its_own_error_is_not_retried_and_does_not_block_reruns(mock_study):
    # Before, a failed preset was trained again first by every later command: one that always fails (too
    # deep for the images, out of memory) failed each rerun, which then stopped at its allowed failures.
    def deeper_fails(config, data, **options):
        if config.depth == 3 and not config.batchnorm:
            raise RuntimeError("out of memory")
        return fake_train(config, data, **options)

    args = ["--epochs", "1", "--image_size", "16", "--pruner", "none"]
    assert run_mocked(["--trials", "3", *args], train_fn=deeper_fails) == 0
    assert run_mocked(["--trials", "5", *args], train_fn=deeper_fails) == 0
    study = load_study(mock_study)
    trials = [(t.user_attrs.get(contract.PRESET_ATTR), t.state.name) for t in study.trials]
    assert trials[:5] == [("seed-initial", "COMPLETE"), ("seed-deeper", "FAIL"), ("seed-bn", "COMPLETE"),
                          ("seed-final", "COMPLETE"), (None, "COMPLETE")]
    assert study.trials[1].user_attrs[contract.FAILED_BY_ERROR_ATTR] == "RuntimeError"
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 5 and len(study.trials) == 6
