"""The benchmark `python -m study.bench`: a short real study at 16 px, its fields and its time accounting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from study import bench
from tests.helpers import configured_backend, subprocess_env


def test_bad_bench_input_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "study.bench", "--epochs", "1"], cwd=tmp_path,
                          env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --epochs=1 is too few; use at least 2 (the first epoch compiles)."


@pytest.mark.parametrize("json_path, message", [
    ("{tmp}", "--json='{tmp}' is a folder; pass a file path, e.g. {tmp}/bench.json."),
    ("{tmp}/missing/bench.json", "--json='{tmp}/missing/bench.json': its folder does not exist; create it or pick "
                                 "another path."),
])
def test_a_json_path_that_cannot_be_written_is_refused_before_the_run(tmp_path, monkeypatch, capsys, json_path,
                                                                      message):
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--json", json_path.format(tmp=tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=tmp_path)}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bench_reports_throughput_compile_time_and_parts_that_add_up_to_the_wall_time(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "study.bench", "--image_size", "16", "--images", "240", "--epochs", "2",
         "--trials", "2", "--batch_size", "16", "--device", "auto", "--json", str(out)],
        cwd=work, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [path.name for path in work.iterdir()] == ["bench.json"], "its stores and artifacts were temporary"
    report = json.loads(out.read_text())
    assert report["backend"] == configured_backend()
    assert report["device"] == "CPU" and report["requested_device"] == "auto"
    assert report["train_images"] == 168 and report["trials"] == 2 and report["batch_size"] == 16
    assert [trial["batch_size"] for trial in report["per_trial"]] == [16, 16]
    for trial in report["per_trial"]:
        assert trial["steady_images_per_second"] > 0
        assert trial["first_epoch_seconds"] > 0 and trial["compile_seconds"] >= 0
        # Full batches only: 168 // 16 = 10 batches of 16 per epoch.
        assert trial["training_images"] == 2 * 160
        assert 0 < trial["training_seconds"] < trial["fit_seconds"]
        assert all(trial[f"{part}_seconds"] >= 0 for part in ("measurements", "tracking", "sampling")), trial
    parts = report["outside_training"]
    assert set(parts) == {"compile", "measurements", "tracking", "sampling", "once_per_run"}
    assert all(seconds >= 0 for seconds in parts.values()), parts
    assert 0 < report["training_seconds"] < report["wall_seconds"]
    assert "device CPU" in done.stdout and "images/s" in done.stdout and "once_per_run" in done.stdout
    # Tracking, sampling and once per run stay CPU work on a GPU: set against the training a GPU shortens.
    assert 0 < report["staying_on_a_gpu_seconds"] < report["outside_training_seconds"]
    assert f"{report['staying_on_a_gpu_per_training']:.2f}x the training" in done.stdout
    assert "training runs on the CPU" in done.stdout
