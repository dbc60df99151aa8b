"""Stopping ``finehard shards`` on SIGINT (Ctrl-C) or SIGTERM (Slurm, Kubernetes, ``timeout``).

Whatever the run is doing (listing the input, the hashing pass, any stage or wave, writing), a
SIGINT or SIGTERM sent to the launcher, or to its whole process group, ends it within a few
seconds with one line and exit code 128 + the signal (130, 143); the lock and the spill folder
are removed, so the same command resumes. Why this needs more than Python's default handler:

* A shell starts a background job (``finehard shards ... &`` in a script) with SIGINT ignored,
  and Python keeps an inherited ``SIG_IGN``: ``kill -INT PID`` did nothing. SIGTERM had no
  handler at all, so nothing was cleaned up. :class:`StopOnSignals` installs its own handler
  for both.
* Beam's DoFn runner catches every ``BaseException`` and raises it again as
  ``RuntimeError("KeyboardInterrupt [while running 'STEP']")`` after logging its traceback
  (``apache_beam.runners.common.DoFnRunner._reraise_augmented``), and the FnApiRunner's threads
  print theirs when multi-process workers die. So the handler records which signal came: the
  CLI reports any exception that follows it as the interrupt, and from that moment logging,
  thread tracebacks and "exception ignored" messages are silenced (:func:`pipeline.logs.silence`).
* Python runs a signal handler only between bytecodes of the main thread: a stage busy in native
  code (a model call), or exiting while a thread pool waits for its requests, would hold the
  stop. A watchdog thread, woken through the signal's wakeup fd (written by the C-level handler
  at once), ends the process :data:`GRACE_S` seconds after the signal if it has not ended by
  then (at once on a second signal), after running the cleanups registered with :func:`on_stop`
  (release the lock, remove the spill folder) and stopping its child processes.
* Once the work has unwound and the line is printed, the process ends at once (``os._exit``):
  interpreter shutdown would wait seconds for library threads (a thread pool finishing its
  requests, gRPC's) that no longer matter.
* Local worker processes (``pipeline.worker``) get SIGTERM from the launcher when it notices the
  signal (a signal to the launcher alone does not reach them, and Beam would wait for them to
  finish their bundle); signalled, they silence their stderr and end a second later.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

GRACE_S = 6.0  # from the signal to a forced end, when the normal unwinding has not ended the process
# An error another thread reports waits this long for a signal to be noticed (then it is the stop's, not
# shown): a worker process signalled with the launcher ends a second later (pipeline.worker), but one
# killed outright may be seen dying by the runner's threads before the main thread runs the handler.
NOTICE_WAIT_S = 1.0
WORKERS_FIRST_S = 0.2
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by the handler; a KeyboardInterrupt, so code that handles Ctrl-C handles it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


_cleanups: list[Callable[[], Any]] = []


@contextlib.contextmanager
def on_stop(cleanup: Callable[[], Any]) -> Iterator[None]:
    """While inside, a forced stop (:class:`StopOnSignals`) runs ``cleanup`` before the process ends."""
    _cleanups.append(cleanup)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _cleanups.remove(cleanup)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc; [] elsewhere)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                kids += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return kids


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _stop_children() -> None:
    """SIGTERM to this process's children: the local runner's worker processes (they end silently a
    second later, ``pipeline.worker``; a signal to the process alone does not reach them, and the
    runner would otherwise wait for them to finish their bundle), a model server an engine started."""
    for pid in _children(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


class _AfterSignal(logging.Filter):
    """Holds an error logged by another thread until a signal is noticed or NOTICE_WAIT_S passed; drops it
    in the first case (see :meth:`StopOnSignals._thread_exception`)."""

    def __init__(self, stop: "StopOnSignals"):
        super().__init__()
        self.stop = stop

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or threading.current_thread() is threading.main_thread():
            return not self.stop._noticed.is_set()
        return not self.stop._noticed.wait(NOTICE_WAIT_S)


class StopOnSignals:
    """Context manager: SIGINT/SIGTERM stop the work of the ``with`` block as described in the module doc.

    ``message`` is the line printed when the watchdog has to end the process itself (the CLI
    prints the same line, :meth:`line`, when the unwinding reaches it); ``{signal}`` in it becomes
    the signal's name. Only in the main thread; elsewhere a no-op.
    """

    def __init__(self, message: str = "interrupted ({signal})"):
        self.message = message
        self.signum: Optional[int] = None
        self.at: Optional[float] = None
        self._raised = False
        self._printed = False
        self._previous: dict[int, Any] = {}
        self._wakeup_old = -1
        self._pipe: Optional[tuple[int, int]] = None
        self._done = threading.Event()
        self._noticed = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- installing ---------------------------------------------------------------------------

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        try:
            self._wakeup_old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter
            os.close(r), os.close(w)
            self._pipe = None
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._thread = threading.Thread(target=self._watch, name="finehard-stop", daemon=True)
        self._thread.start()
        self._old_excepthook = threading.excepthook
        threading.excepthook = self._thread_exception
        self._filter = _AfterSignal(self)
        self._handlers = list(logging.getLogger().handlers)
        for h in self._handlers:
            h.addFilter(self._filter)
        return self

    def _thread_exception(self, args: Any) -> None:
        """A thread's uncaught exception: dropped when it came from the stop (workers ending, say)."""
        if not self._noticed.wait(NOTICE_WAIT_S):
            self._old_excepthook(args)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._pipe is None:
            return
        if self.signum is not None:
            # Stopped by a signal, and the work of the block has unwound (lock released, spill folder
            # removed, the line printed): end here. Interpreter shutdown would wait for library threads
            # (a thread pool finishing its requests, gRPC's) and collect the runner's objects: seconds.
            self.report()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):
                    stream.flush()
            os._exit(exit_code(self.signum))
        for sig, old in self._previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        threading.excepthook = self._old_excepthook
        for h in self._handlers:
            h.removeFilter(self._filter)
        signal.set_wakeup_fd(self._wakeup_old)
        self._done.set()
        os.write(self._pipe[1], b"\0")  # wakes the watchdog, which closes the pipe

    # -- the Python-level handler (main thread) -----------------------------------------------

    def _handle(self, signum: int, frame: Any) -> None:
        if not self._raised:
            self._raised = True
            self._note(signum)
            # Local worker processes signalled with us (a process group, a Slurm job) silence themselves
            # first (pipeline.worker): stopping the runner at once would close their channels under them.
            time.sleep(WORKERS_FIRST_S)
            raise Interrupted(self.signum or signum)
        # a second signal while stopping: the watchdog ends the process now (it saw the byte too)

    def _note(self, signum: int) -> None:
        from pipeline.logs import silence

        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
        silence()
        if not self._noticed.is_set():
            self._noticed.set()
            _stop_children()

    def line(self) -> str:
        """The one line that says the run was interrupted, naming the signal."""
        return self.message.replace("{signal}", signal.Signals(self.signum or signal.SIGINT).name)

    def report(self) -> int:
        """Print :meth:`line` (once) and return the exit code for the signal (130 when none was received)."""
        if not self._printed:
            self._printed = True
            print(self.line(), file=sys.stderr, flush=True)
        return exit_code(self.signum or signal.SIGINT)

    # -- the watchdog (its own thread) --------------------------------------------------------

    def _watch(self) -> None:
        assert self._pipe is not None
        r, w = self._pipe
        seen = 0
        deadline: Optional[float] = None
        try:
            while True:
                now = time.monotonic()
                ends = [deadline] if deadline is not None else []
                if ends and now >= min(ends):
                    self._force()
                    return
                wait = min([0.2] + [max(0.0, d - now) for d in ends]) if ends else 0.2
                ready, _, _ = select.select([r], [], [], wait)
                if not ready:
                    continue
                data = os.read(r, 64)
                if self._done.is_set():
                    return
                signals = [b for b in data if b in SIGNALS]
                if not signals:
                    continue
                self._note(signals[0])  # the main thread may not have run its handler yet (busy in native code)
                seen += len(signals)
                if seen >= 2:
                    self._force()
                    return
                if deadline is None:
                    deadline = time.monotonic() + GRACE_S
        finally:
            if self._done.is_set():
                os.close(r), os.close(w)

    def _force(self) -> None:
        """End the process: cleanups, child processes, the line (unless the CLI printed it), exit code."""
        from pipeline.logs import silence

        silence()
        signum = self.signum or signal.SIGINT
        for cleanup in list(_cleanups):
            with contextlib.suppress(BaseException):
                cleanup()
        for pid in _descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            self.report()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(exit_code(signum))
