"""Bad input on every command: one line `error: ...` on stderr and exit 2, in the same words where values are shared."""

from __future__ import annotations

import pytest

from gaplab.__main__ import main as gaplab_main
from study import bench
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
    (["--image_size", "4"], "--image_size=4 is invalid; use at least 8 pixels."),
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
