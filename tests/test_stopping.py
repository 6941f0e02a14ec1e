"""Ctrl-C and SIGTERM in one place (study.stopping): the contract, with real signals to this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study import run as run_module
from study import stopping
from tests.conftest import configured_backend, subprocess_env


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


def test_the_command_restores_the_signal_handlers_it_installed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    assert run_module.main(["--trials", "0"]) == 2
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == before


def _backend_library_is_loading(pid: int) -> bool:
    """Whether process `pid` has mapped a shared library of the Keras backend's package: it is importing Keras."""
    package = {"jax": "jaxlib"}.get(configured_backend(), configured_backend())
    return f"/{package}/" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.xfail(configured_backend() == "jax", strict=True, reason=(
    "on JAX a KeyboardInterrupt raised while jaxlib's extension modules are created segfaults the process "
    "(exit -11, in jaxlib/xla_client.py's import); the interrupt must wait until the backend is imported"))
def test_ctrl_c_during_start_up_exits_130_with_one_line(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "study.run", "--trials", "1", "--image_size", "16"],
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
