"""Bad input on every command: one line `error: ...` on stderr and exit 2, in the same words where values are shared."""

from __future__ import annotations

import pytest

from gaplab.__main__ import main as gaplab_main
from study import bench, workers
from study import run as run_module


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
