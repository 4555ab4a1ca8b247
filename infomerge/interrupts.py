"""Signals, exit codes and error reporting shared by the command-line tools.

Exit status of every ``infomerge-*`` command (also stated in each ``--help``):

    0    success
    1    runtime failure (a corrupt artifact or checkpoint, a failed validation, an I/O error)
    2    usage error: a bad argument, input file or output path, found before any work
    130  interrupted (SIGINT, Ctrl-C) or terminated (SIGTERM); temporaries were removed

SIGTERM's default action kills the process without running ``finally`` / ``except`` blocks, so a
temporary file or directory of :mod:`infomerge.artifacts.atomic` would stay behind (``timeout``,
``docker stop`` and systemd send SIGTERM). :func:`signals_raise` installs handlers that turn SIGTERM
and SIGHUP into :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so the same
clean-up as for Ctrl-C runs. A second signal while cleaning up is ignored (SIGKILL still works);
the next write into the same folder sweeps what a killed process left
(:func:`infomerge.artifacts.atomic.sweep_stale`).

:func:`run_cli` maps what a command raises to a one-line message and an exit status: no raw
traceback for anything a user can cause; ``--debug`` prints the traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

from infomerge.errors import InfomergeError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "exit status: 0 ok, 1 runtime failure, 2 usage error (bad argument, input or output path; "
    "nothing done), 130 interrupted (Ctrl-C or SIGTERM; nothing half-written left). "
    "--debug prints the traceback of a failure."
)

# signals turned into an exception (SIGINT already is one: KeyboardInterrupt)
_HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP.

    A ``KeyboardInterrupt``, so every ``except BaseException`` clean-up (the atomic writers) and
    every handler of Ctrl-C treats it the same way. ``signum`` is the signal's number.
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"terminated by {signal.Signals(signum).name}")


_state = threading.local()


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    if getattr(_state, "raised", False):
        # already unwinding: let the clean-up finish (SIGKILL still ends the process)
        print(f"{signal.Signals(signum).name}: cleaning up, please wait", file=sys.stderr, flush=True)
        return
    _state.raised = True
    _state.received = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def raise_if_signalled() -> None:
    """Raise the interrupt of a signal whose exception was lost.

    A handler's exception raised inside a finalizer (a generator or object cleaned up by the garbage
    collector) is swallowed by Python, and the command would run on to the end. Long commands call
    this between their steps: if a signal was received but the work is still going, it raises
    :class:`Terminated` (or ``KeyboardInterrupt``) again, so the clean-up runs after all.
    """
    signum = getattr(_state, "received", None)
    if signum is not None:
        _state.received = None
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread, SIGINT
    raises ``KeyboardInterrupt``, and further signals during the clean-up are ignored.

    Outside the main thread (where Python cannot install handlers) it does nothing. The previous
    handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.raised = False
    _state.received = None
    signums = (*_HANDLED, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signums}
    try:
        for s in signums:
            signal.signal(s, _handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _state.raised = False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Block SIGINT, SIGTERM and SIGHUP for the block (a few renames that must not be split);
    a signal that arrives meanwhile is delivered when the block ends.

    Only in the main thread of a POSIX system; elsewhere it does nothing.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = {signal.SIGINT, *_HANDLED}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def exit_code_of(exc: BaseException) -> int:
    """The exit status for an exception: 130 for an interrupt, ``exc.exit_code`` for an
    :class:`~infomerge.errors.InfomergeError` (1 or 2), 1 for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, InfomergeError):
        return int(getattr(exc, "exit_code", EXIT_FAILURE))
    return EXIT_FAILURE


def describe(exc: BaseException) -> str:
    """One line for the user: the error's own message for infomerge errors and I/O errors, the
    type and message (and the hint to rerun with ``--debug``) for anything unexpected."""
    if isinstance(exc, Terminated):
        return f"{exc}; stopped, temporaries removed"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; stopped, temporaries removed"
    if isinstance(exc, InfomergeError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or exc} (check that the location exists and is writable)"
    return f"{type(exc).__name__}: {exc} (an internal error: rerun with --debug and report the traceback)"


def run_cli(prog: str, body: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``body()`` with :func:`signals_raise`; return its exit status, or the status of what it
    raised (:func:`exit_code_of`) after printing ``prog: error: <one line>`` on stderr.

    Args:
        prog: the command's name, prefixed to the message.
        body: the command; returns its exit status (None: 0).
        debug: print the full traceback of a failure as well (``--debug``).

    ``SystemExit`` (argparse's usage errors) passes through unchanged.
    """
    try:
        with signals_raise():
            rc = body()
        return EXIT_OK if rc is None else int(rc)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a message and a status
        exc = _as_interrupt(exc)
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            _ignore_further_signals()  # the status is decided: a straggler must not kill the exit
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {describe(exc)}", file=sys.stderr, flush=True)
        return exit_code_of(exc)


def _as_interrupt(exc: BaseException) -> BaseException:
    """``exc``, or the interrupt it stands for: when a signal was received, an exception of another
    type is the handler's interrupt translated by an extension that caught it (torch turns an
    exception raised inside its sequence protocol into ``ValueError: could not determine the
    shape of object type ...``; seen once in a CI run of the bench export's SIGTERM test), so the
    command reports the interrupt and exits 130."""
    signum = getattr(_state, "received", None)
    if signum is None or isinstance(exc, KeyboardInterrupt):
        return exc
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def exit_process(status: int | None) -> NoReturn:
    """End a command-line process with ``status`` (a ``main()``'s return value; None: 0).

    After an interrupt (status 130) the process ends with :func:`os._exit`, once stdout and stderr
    are flushed: the clean-up already ran while the interrupt unwound (:func:`run_cli`). Interpreter
    finalization is skipped because CPython remembers a ``KeyboardInterrupt`` that passed through
    Python code run by an extension's embedded evaluation (pybind11's ``eval``/``exec`` reach
    CPython's ``run_eval_code_obj``, which sets the interpreter's "unhandled KeyboardInterrupt"
    flag), and at exit it then kills itself with SIGINT (status -2) even though the command handled
    the interrupt; measured here in about 1 of 25 Ctrl-C's during an export on a loaded machine,
    with the flag read back as 1 in exactly that run. Skipping finalization also keeps daemon
    threads still in native code from meeting the static destructors of the thread pools they use.
    Any other status exits normally (``sys.exit``).
    """
    code = EXIT_OK if status is None else int(status)
    if code != EXIT_INTERRUPTED:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _ignore_further_signals() -> None:
    """After an interrupt was handled, ignore SIGINT / SIGTERM / SIGHUP until the process exits.

    :func:`signals_raise` restores Python's handlers when its block ends; a signal still pending
    then (delivered to another thread, or unblocked by :func:`signals_deferred`) would meet
    Python's default SIGINT handler outside :func:`run_cli` and end the process by the signal
    instead of with status 130 after the clean-up."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (*_HANDLED, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (signal 0 probe)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Terminated",
    "describe",
    "exit_code_of",
    "exit_process",
    "raise_if_signalled",
    "pid_alive",
    "run_cli",
    "signals_deferred",
    "signals_raise",
]
