"""Shared test helpers: generated image folders, the mock trainer, the command run in this process or as
processes of their own, and checks on the stores a study leaves.

Imported with `from tests.helpers import ...`; the fixtures live in tests/conftest.py. Also imported by
`python -m tests.mocked_run`, so nothing here imports pytest.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRASHNET = ROOT.parent / "shared" / "data" / "trashnet150"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """The environment for a `python -m study.*` subprocess: this checkout first, stores and caches in tmp_path."""
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "GAPLAB_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}


def configured_backend() -> str:
    """The Keras backend the tests (and their subprocesses) run on, e.g. 'tensorflow' or 'jax'."""
    import keras

    return keras.backend.backend()


# -- images ------------------------------------------------------------------------------------


def write_image(path: Path, colour, size: int = 20, mode: str = "RGB", fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.new("RGB", (size, size), tuple(colour))
    image = rgb.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    )
    image.save(path, format=fmt)
    return path


def make_folder(root: Path, counts: dict[str, int], size: int = 20, ext: str = ".png") -> Path:
    """root/<class>/<i><ext>, each class its own colour with a little per-image variation."""
    rng = np.random.default_rng(0)
    for index, (name, count) in enumerate(sorted(counts.items())):
        base = np.array([(index * 70) % 256, (index * 130 + 40) % 256, (index * 200 + 90) % 256])
        for i in range(count):
            colour = np.clip(base + rng.integers(-10, 10, 3), 0, 255)
            write_image(root / name / f"{i}{ext}", colour, size)
    return root


# -- the command in this process, with a mock trainer -------------------------------------------


def exit_code(main, argv: list[str], **options) -> int:
    """`main(argv)`'s exit code as `python -m` would give it: argparse's usage errors exit via SystemExit."""
    try:
        return main(argv, **options)
    except SystemExit as exit_:
        return exit_.code


def train_result(config, class_names=("a", "b"), **fields) -> object:
    """A real gaplab.trainer.TrainResult: `fields` as given, every other required field a neutral value of its type.

    Built from the dataclass's own fields, so a field added to TrainResult is filled here (or, if its
    type is new, named in the error) instead of being forgotten by a hand-written fake.
    """
    from gaplab.trainer import TrainResult

    neutral = {bool: lambda: False, int: lambda: 1, float: lambda: 0.5, dict: dict, list: list, tuple: tuple,
               np.ndarray: lambda: np.eye(len(class_names), dtype=int)}
    namespace = vars(sys.modules[TrainResult.__module__])
    values = {"config": config, "class_names": tuple(class_names)}
    for field in dataclasses.fields(TrainResult):
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        if field.name in values or field.name in fields or has_default:
            continue
        # Only the required fields' annotations are resolved (as typing.get_type_hints would, one by one).
        hint = eval(field.type, namespace) if isinstance(field.type, str) else field.type
        kind = typing.get_origin(hint) or hint
        if kind not in neutral:
            raise TypeError(f"TrainResult.{field.name} has type {hint}, which train_result() in "
                            "tests/helpers.py has no neutral value for; add one there.")
        values[field.name] = neutral[kind]()
    return TrainResult(**{**values, **fields})


def _fake_val(config, momentum: float) -> float:
    # Stale statistics cost accuracy in proportion to momentum; dropout costs a little at any momentum.
    return 0.9 - 0.5 * momentum * config.batchnorm - 0.1 * config.dropout


def fake_train(config, data, callbacks=(), verbose=0, best_momentum_at_epoch=None):
    """Stands in for gaplab.trainer.train: the gap grows with momentum, as in the phenomenon; dropout 0.99
    (never sampled) raises."""
    from gaplab import MomentumCurve
    from gaplab.trainer import EpochCallback

    if config.dropout == 0.99:
        raise RuntimeError("simulated crash")
    val = _fake_val(config, config.bn_momentum)
    momenta = sorted({*config.momentum_grid, config.bn_momentum}) if config.batchnorm else []
    curve = MomentumCurve(
        own_momentum=config.bn_momentum, momentum=tuple(momenta),
        val_accuracy=tuple(_fake_val(config, m) for m in momenta),
        train_eval_accuracy=tuple(_fake_val(config, m) + 0.05 for m in momenta), train_accuracy=0.9,
        recalibrated_val_accuracy=0.88, recalibrated_train_eval_accuracy=0.93) if momenta else None
    history = {"train_loss": [], "train_accuracy": [], "val_loss": [], "val_accuracy": []}
    model_holder = type("Holder", (), {"stop_training": False})()
    for epoch in range(1, config.epochs + 1):
        metrics = {"train_loss": 1.0 / epoch, "train_accuracy": 0.9, "val_loss": 1.0, "val_accuracy": val}
        if curve and best_momentum_at_epoch is not None and best_momentum_at_epoch(epoch):
            metrics.update(val_accuracy_at_best_momentum=curve.val_accuracy_at_best_momentum,
                           best_momentum=curve.best_momentum)
        for key, value in metrics.items():
            history.setdefault(key, []).append(value)
        for callback in callbacks:
            if isinstance(callback, EpochCallback):
                callback.set_model(model_holder)
                callback.on_epoch(epoch, metrics)
        if model_holder.stop_training:
            break
    return train_result(
        config, data.class_names, history=history, epochs=len(history["val_accuracy"]), steps=10 * config.epochs,
        stopped_early=model_holder.stop_training, train_accuracy=0.9, train_eval_accuracy=0.85, val_accuracy=val,
        test_accuracy=val - 0.01, val_accuracy_recalibrated=0.88,
        timings={"data_seconds": 0.0, "build_seconds": 0.0, "fit_seconds": 0.1, "eval_seconds": 0.0,
                 "first_epoch_seconds": 0.1, "steady_epoch_seconds": 0.1},
        momentum_curve=curve)


def without_confirmation(argv: list[str]) -> list[str]:
    """`argv` with `--confirm 0` where it names no --confirm: the default confirmation (contract.DEFAULT_CONFIRM_K
    seeds x 3 arms) would add its trainings to every test that runs the command; tests about it name --confirm, or
    pass `confirm_default=True`."""
    return argv if any(arg.startswith("--confirm") for arg in argv) else [*argv, "--confirm", "0"]


def run_mocked(argv: list[str], train_fn=fake_train, confirm_default: bool = False) -> int:
    """`python -m study.run` in this process, with `train_fn` injected as the trainer; its exit code. Without
    confirmation unless `argv` names --confirm or `confirm_default` keeps the command's default."""
    from study import run

    return exit_code(run.main, argv if confirm_default else without_confirmation(argv), train_fn=train_fn)


# -- the command with the mock trainer, as processes of their own (tests.mocked_run) -------------------------


def start_mocked(folder: Path, args: list[str], **env: str) -> subprocess.Popen:
    """`python -m study.run *args` with the mock trainer, in `folder`, its stores there unless `env` says otherwise;
    without confirmation unless `args` names --confirm (`without_confirmation`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "tests.mocked_run", *without_confirmation(args)], cwd=folder,
                            env={**subprocess_env(folder), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(processes: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    outputs = [p.communicate(timeout=timeout) for p in processes]
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs)]


def assert_one_study(storage: str, tracking_uri: str, trials: int, name: str = "shapes-16px",
                     failed_at_most: int = 0) -> None:
    """The study an uninterrupted run makes: exactly `trials` finished, each preset once among them in the seed's
    order, nothing RUNNING or queued, no sampled point repeated; at most `failed_at_most` FAIL trials (those
    an interruption ended). In MLflow: one parent run, in the study's experiment, and nothing in Default; one
    run per trial that has one (every finished trial does), under the parent; no run RUNNING anywhere."""
    import optuna
    from mlflow.tracking import MlflowClient

    from gaplab.config import PRESETS
    from study.contract import FINISHED_STATES, PARENT_RUN_ID_ATTR, PRESET_ATTR, STUDY_ROLE_TAG, STUDY_TAG

    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state.name for t in study.trials]
    finished = [t for t in study.trials if t.state in FINISHED_STATES]
    assert len(finished) == trials, states
    assert not {"RUNNING", "WAITING"} & set(states) and states.count("FAIL") <= failed_at_most, states
    presets = [t.user_attrs[PRESET_ATTR] for t in finished if PRESET_ATTR in t.user_attrs]
    assert presets == list(PRESETS)[:min(trials, len(PRESETS))], "each preset once, in the seed's order"
    searched = [tuple(sorted(t.params.items())) for t in study.trials if PRESET_ATTR not in t.user_attrs and t.params]
    assert len(searched) == len(set(searched)), "no sampled point is repeated"
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_id, r.info.status, r.data.tags.get(STUDY_ROLE_TAG)) for r in parents] == [
        (study.user_attrs[PARENT_RUN_ID_ATTR], "FINISHED", "parent")]
    # The study's trial runs; its confirmation's (`--confirm`) are tagged with its companion study's name.
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags and r.data.tags.get(STUDY_TAG) == name]
    numbers = sorted(int(r.data.tags["optuna_trial_number"]) for r in children)
    assert len(numbers) == len(set(numbers)) and {t.number for t in finished} <= set(numbers) <= {
        t.number for t in study.trials}, numbers
    assert not client.search_runs(["0"]), "no run in MLflow's Default experiment"
    everywhere = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert all(r.info.status != "RUNNING" for r in everywhere)


# -- waiting on real processes --------------------------------------------------------------------


def wait_for_running_trial(storage: str, study_name: str, pids: list[int], first_number: int = 0,
                           timeout: float = 240) -> tuple[int, int]:
    """(pid, trial number) of a process among `pids` inside a trial numbered `first_number` or later, with its
    MLflow run started."""
    import optuna

    from study.contract import RUN_ID_ATTR, WORKER_ATTR

    host = socket.gethostname()
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                if trial.number < first_number:
                    continue
                for pid in pids:
                    if trial.user_attrs.get(WORKER_ATTR) == f"{host}:{pid}" and trial.user_attrs.get(RUN_ID_ATTR):
                        return pid, trial.number
        except KeyError:
            pass  # the study is not created yet
        time.sleep(0.3)
    raise AssertionError(f"no process among {pids} started a trial of {study_name!r} within {timeout} s")


def child_runs(study_name: str) -> list:
    """The trial runs (children of the parent run, tagged with the study's name: not its confirmation's) in the
    study's MLflow experiment."""
    from mlflow.tracking import MlflowClient

    from study.contract import STUDY_TAG

    client = MlflowClient()
    experiment = client.get_experiment_by_name(study_name)
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if "mlflow.parentRunId" in r.data.tags and r.data.tags.get(STUDY_TAG) == study_name]


def load_study(tmp_path: Path, name: str = "shapes-16px"):
    """The study a mocked run wrote to tmp_path/optuna.db."""
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


# -- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
