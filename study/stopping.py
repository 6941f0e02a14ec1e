"""Ctrl-C and SIGTERM, in one place: how a study stops cleanly.

The contract: while `graceful_stop()` is active (study.run's command holds it), SIGINT and SIGTERM
set `requested` and raise KeyboardInterrupt. The trial that was running ends FAIL in Optuna with its
MLflow run KILLED (study.tracking.Tracker.trial, the one place that turns an error raised once a stop was
requested into the interrupt), nothing else is started, and the command exits 130;
on leaving the block the previous signal handlers are back. Signals after the first set `repeated`
and raise nothing (except in training, below): a second or third Ctrl-C cuts the stop's waits short
but never its clean-up, which would leave runs RUNNING.

While the Keras backend is imported, `interrupts_deferred()` only records the signal and raises
KeyboardInterrupt once the block is done: an exception raised while jaxlib's extension modules are
being created crashed the process (segfault, exit -11) instead of stopping it.

While a trial trains, `stops_between_batches()` does the same, and training raises at its next batch
(study.objective.StopRequestCallback); a second signal raises at once. A KeyboardInterrupt raised
inside TensorFlow's native calls came back as their own error with a traceback on stderr (seen as
"SystemError: <built-in function __import__> returned a result with an exception set" from
tf.nest's flatten).

Two ways an interrupt can get lost are covered here too:

* Python swallows a KeyboardInterrupt raised inside a garbage-collection callback (seen with
  JAX's), so training calls `raise_if_requested()` after every batch;
* library clean-up can raise its own error in place of the KeyboardInterrupt (seen as
  "partially initialized module 'keras'" when the signal lands during an import):
  `is_interruption(error)` says that an error raised once a stop was requested is the interrupt.

Nothing here imports Keras, so the command can hold the handlers before its heavy imports.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130

requested = threading.Event()
# A second (third, ...) signal after a stop was requested: it cuts short the waits of a stop (the
# tracking writer's) and is forwarded to workers, but raises nothing, so that the clean-up it lands
# in (ending runs KILLED, marking trials FAIL) is never cut short.
repeated = threading.Event()


def _request_stop(signum, frame):
    if requested.is_set():
        repeated.set()
        return
    requested.set()
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def graceful_stop(process_exits: bool = False) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM request a stop (also where a launcher or a background
    shell job had set SIGINT to be ignored); the previous handlers are restored on exit.

    `process_exits`: the process ends after the block (the command run as a program). Once a stop was
    requested, further signals are then ignored instead: they would cut the interpreter's exit short
    (its atexit handlers, MLflow's among them) and turn exit code 130 into a death by signal.
    """
    requested.clear()
    repeated.clear()
    # Libraries' log records that no handler takes (SQLAlchemy's "Error closing cursor" with two
    # tracebacks, where the signal cut a query short) are dropped after a stop request too.
    after_stop = InterruptedTrialFilter()
    logging.lastResort.addFilter(after_stop)
    unraisable_before = sys.unraisablehook
    sys.unraisablehook = functools.partial(_unraisable, unraisable_before)
    try:
        with _handled_by(_request_stop, after_stop=signal.SIG_IGN if process_exits else None):
            yield
    finally:
        logging.lastResort.removeFilter(after_stop)
        sys.unraisablehook = unraisable_before


def _unraisable(previous, unraisable) -> None:
    """Python drops an exception raised where it cannot propagate (a garbage collector's or a weakref's
    callback, seen with SQLAlchemy's while the stores opened) and prints "Exception ignored in ...". The
    KeyboardInterrupt of a stop request is not lost that way: the request is recorded, and the command
    acts on it at its next `raise_if_requested()`; so it is not printed either."""
    if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and requested.is_set()):
        previous(unraisable)


@contextlib.contextmanager
def _handled_by(handler, after_stop=None) -> Iterator[None]:
    """Within the block SIGINT and SIGTERM go to `handler`; the previous handlers are back after it, or
    `after_stop` where given and a stop was requested.

    Only the main thread can set handlers; elsewhere the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            if after_stop is not None and requested.is_set():
                signal.signal(signum, after_stop)
            elif handler_before is not None:  # None: set outside Python; it cannot be put back
                signal.signal(signum, handler_before)


def _record_stop(signum, frame):
    if requested.is_set():
        repeated.set()
    requested.set()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM only request a stop; leaving the block raises KeyboardInterrupt if
    one was requested. For imports of native extension modules, which must not be interrupted halfway."""
    with _handled_by(_record_stop):
        yield
    raise_if_requested()


def _request_stop_unless_repeated(signum, frame):
    if requested.is_set():
        repeated.set()
        raise KeyboardInterrupt(signal.Signals(signum).name)
    requested.set()


@contextlib.contextmanager
def stops_between_batches() -> Iterator[None]:
    """Within the block the first SIGINT or SIGTERM only requests a stop, which the code in the block honours
    at its next `raise_if_requested()` (training: each batch); a second one raises KeyboardInterrupt at once.
    Leaving the block raises KeyboardInterrupt if a stop was requested. For the training and measurement
    passes of a trial, where the signal's exception would land inside native code."""
    with _handled_by(_request_stop_unless_repeated):
        yield
    raise_if_requested()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM received in the block reach the handlers there were before when it ends.

    For steps that must not stop halfway, such as moving a new store into place, also where no
    `graceful_stop()` is held (the report).
    """
    received: list[int] = []
    with _handled_by(lambda signum, frame: received.append(signum)):
        yield
    for signum in dict.fromkeys(received):
        signal.raise_signal(signum)


def raise_if_requested() -> None:
    """KeyboardInterrupt if a stop was requested: for loops the signal's own exception may miss."""
    if requested.is_set():
        raise KeyboardInterrupt("stop requested")


def is_interruption(error: BaseException) -> bool:
    """Whether `error` ends the study as an interrupt: a KeyboardInterrupt, or any error once a stop was requested."""
    return isinstance(error, KeyboardInterrupt) or requested.is_set()


class InterruptedTrialFilter(logging.Filter):
    """Drops a library's log record of a trial that an interrupt ended (Optuna logs it at WARNING with the
    KeyboardInterrupt's whole traceback); the command's own "interrupted" line says it. Other failures pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        interrupted = record.exc_info is not None and isinstance(record.exc_info[1], KeyboardInterrupt)
        return not (interrupted or requested.is_set())
