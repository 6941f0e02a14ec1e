"""Ctrl-C and SIGTERM in one place (study.stopping): the contract, with real signals to this process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study import run as run_module
from study import stopping
from tests.helpers import configured_backend, subprocess_env, wait_for_running_trial


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_requests_a_stop_raises_keyboard_interrupt_and_the_handlers_come_back(signum):
    before = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
        with stopping.graceful_stop():
            assert not stopping.requested.is_set()
            os.kill(os.getpid(), signum)
    assert stopping.requested.is_set()
    with pytest.raises(KeyboardInterrupt, match="stop requested"):
        stopping.raise_if_requested()
    # Once a stop is requested, any error counts as the interruption (a library's clean-up error).
    assert stopping.is_interruption(ValueError("I/O operation on closed file"))
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == before
    with stopping.graceful_stop():  # a new block starts with no stop requested
        assert not stopping.requested.is_set()
        assert not stopping.is_interruption(ValueError("a real failure"))


def test_while_deferred_a_signal_only_requests_a_stop_raised_when_the_block_ends():
    with stopping.graceful_stop():
        with pytest.raises(KeyboardInterrupt, match="stop requested"):
            with stopping.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                reached = True  # the signal did not interrupt the block
        assert reached and stopping.requested.is_set()
        assert signal.getsignal(signal.SIGINT) is stopping._request_stop, "the stop handler is back"
    with stopping.graceful_stop(), stopping.interrupts_deferred():
        pass  # no signal: nothing is raised


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_between_batches_the_first_signal_waits_for_a_check_and_a_second_stops_at_once(signum):
    with stopping.graceful_stop():
        with pytest.raises(KeyboardInterrupt, match="stop requested"):
            with stopping.stops_between_batches():
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # a batch: the signal's handler has run, and raised nothing
                assert stopping.requested.is_set()
                stopping.raise_if_requested()  # the next batch's check
        with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
            with stopping.stops_between_batches():
                os.kill(os.getpid(), signum)  # a stop was already requested: at once
                time.sleep(0.05)
        assert signal.getsignal(signum) is stopping._request_stop, "the stop handler is back"
    with stopping.graceful_stop():
        with pytest.raises(KeyboardInterrupt, match="stop requested"):
            with stopping.stops_between_batches():
                os.kill(os.getpid(), signum)
                finished = True  # no check in the block: leaving it raises
        assert finished


def test_library_logs_nobody_handles_are_dropped_after_a_stop_request_only(capsys):
    engine = logging.getLogger("tests.unhandled_library")
    engine.propagate = False  # no handler of its own or above: only logging.lastResort takes its records
    try:
        with stopping.graceful_stop():
            engine.error("Error closing cursor: before a stop")
            stopping.requested.set()
            engine.error("Error closing cursor: after a stop")
        engine.error("Error closing cursor: after the command")
    finally:
        engine.propagate = True
    printed = capsys.readouterr().err
    assert "before a stop" in printed and "after the command" in printed and "after a stop\n" not in printed


def _record(error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("optuna.study._optimize", logging.WARNING, __file__, 1, "Trial 3 failed", (), exc_info)


def test_the_log_of_a_trial_ended_by_an_interrupt_is_dropped_and_other_failures_pass():
    interrupted_trials = stopping.InterruptedTrialFilter()
    with stopping.graceful_stop():
        assert not interrupted_trials.filter(_record(KeyboardInterrupt("SIGINT")))
        assert interrupted_trials.filter(_record(RuntimeError("simulated crash")))
        assert interrupted_trials.filter(_record(None))
        stopping.requested.set()  # after Ctrl-C, whatever Optuna says of the trial it ended
        assert not interrupted_trials.filter(_record(None))


def test_the_command_restores_the_signal_handlers_it_installed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    assert run_module.main(["--trials", "0"]) == 2
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == before


def _backend_library_is_loading(pid: int) -> bool:
    """Whether process `pid` has mapped a shared library of the Keras backend's package: it is importing Keras."""
    package = {"jax": "jaxlib"}.get(configured_backend(), configured_backend())
    return f"/{package}/" in Path(f"/proc/{pid}/maps").read_text()


def test_ctrl_c_during_start_up_exits_130_with_one_line(tmp_path):
    # On JAX a KeyboardInterrupt raised while jaxlib's extension modules were created crashed the process
    # (exit -11): the signal is now acted on once the backend is imported.
    process = subprocess.Popen([sys.executable, "-m", "study.run", "--confirm", "0",
                                "--trials", "1", "--image_size", "16"],
                               cwd=tmp_path, env=subprocess_env(tmp_path), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # The backend is imported only after validation: once its libraries load, the start-up is under way.
    deadline = time.time() + 120
    while not _backend_library_is_loading(process.pid):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "the command did not start importing its Keras backend within 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_CODE, stderr[-3000:]
    assert "Traceback" not in stderr and "interrupted; rerun the same command to resume." in stderr


@pytest.mark.slow
def test_ctrl_c_mid_trial_prints_one_line_without_a_traceback(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    process = subprocess.Popen([sys.executable, "-m", "study.run", "--confirm", "0", "--trials", "2", "--epochs", "3",
                                "--image_size", "16", "--pruner", "none"], cwd=tmp_path, env=subprocess_env(tmp_path),
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_running_trial(storage, "shapes-16px", [process.pid])
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_CODE, stderr[-3000:]
    assert "Traceback" not in stderr and "failed with" not in stderr, stderr[-3000:]
    assert stderr.strip().endswith("interrupted: the running trials are marked FAIL and their MLflow runs KILLED; "
                                   "rerun the same command to resume."), stderr[-3000:]
