"""Bad input on every command: one line `error: ...` on stderr and exit 2, in the same words where values are shared."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import pytest

from gaplab.__main__ import main as gaplab_main
from study import bench, workers
from study import run as run_module
from tests.helpers import configured_backend, make_folder, run_mocked, subprocess_env


@pytest.mark.parametrize("flag", ["--data_dir", "--data-dir"])
def test_python_m_gaplab_takes_data_dir_in_snake_case_and_answers_a_missing_folder_in_one_line(
        tmp_path, capsys, flag):
    missing = tmp_path / "no-such-folder"
    assert gaplab_main([flag, str(missing), "--image_size", "16"]) == 2
    assert capsys.readouterr().err == (f"error: data folder {missing} does not exist; pass a folder with one "
                                       "subfolder of images per class.\n")


def test_python_m_gaplab_answers_an_unknown_flag_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        gaplab_main(["--data_dri", "photos"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: unrecognized arguments: --data_dri photos; "
                                       "see python -m gaplab --help\n")


@pytest.mark.parametrize("args, message", [
    (["--image_size", "4"], "--image_size=4 is invalid; use at least 14 pixels: the seed presets every study trains "
                            "have 3 conv blocks, which need 14."),
    (["--trials", "0"], "--trials=0 is invalid; use at least 1."),
    (["--device", "tpu"], "--device='tpu' is unknown; use one of auto, cpu, gpu."),
    (["--workers", "0"], "--workers=0 is invalid; use at least 1."),
])
def test_the_bench_and_the_study_answer_a_shared_bad_value_in_the_same_words(tmp_path, monkeypatch, capsys,
                                                                             args, message):
    monkeypatch.chdir(tmp_path)
    assert bench.main(args) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert run_module.main(args) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


SEED_RANGE = "use an integer from 0 to 4294967295 (2**32 - 1)."


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], f"--seed=-1 is invalid; {SEED_RANGE}"),
    (["--seed", str(2**32)], f"--seed=4294967296 is invalid; {SEED_RANGE}"),
    (["--image_size", "100000"], "--image_size=100000 is invalid; use at most 1024 pixels: one decoded image at "
                                 "100000 px takes 27.9 GiB as uint8, 1000 images 27.3 TiB."),
])
@pytest.mark.parametrize("command", [bench.main, run_module.main, gaplab_main], ids=["bench", "study", "gaplab"])
def test_every_command_answers_an_out_of_range_seed_or_size_in_one_line_naming_the_flag(
        tmp_path, monkeypatch, capsys, command, args, message):
    monkeypatch.chdir(tmp_path)
    assert command(args) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


def test_the_bench_and_the_study_bound_workers_by_the_cpu_cores_and_the_gpus(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cores = workers.cpu_cores()
    for command in (bench.main, run_module.main):
        assert command(["--workers", "1000", "--device", "cpu"]) == 2
        assert capsys.readouterr().err == (f"error: --workers=1000 is too many; use at most {cores} (one per CPU "
                                           f"core when training on CPUs, {cores} core(s) here).\n")
    assert list(tmp_path.iterdir()) == [], "nothing may be created"
    workers.check_worker_count(cores, "cpu", ("0",))  # every core may hold a worker
    workers.check_worker_count(8, "auto", ("0", "1"))
    with pytest.raises(workers.UsageError, match=r"^--workers=9 is too many; use at most 8 \(4 per GPU, 2 GPU\(s\) "
                                                 r"used\)\.$"):
        workers.check_worker_count(9, "auto", ("0", "1"))
    assert "at most one per CPU core when training on CPUs, 4 per GPU" in " ".join(
        run_module.build_parser().format_help().split())


# -- python -m study.run: refused before anything is created --------------------------------------------


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
