"""Logging set-up for the ``finehard`` commands and for local Beam worker processes.

Importing Beam logs "apitools not found" through the root logger, which installs a root handler
at WARNING before any of our code runs; a later ``logging.basicConfig(level=INFO)`` is then a
no-op and the CLI is silent. So the set-up here is explicit: one stderr handler on the root
(replacing whatever an import put there), the project's loggers at the chosen level, Beam's at
WARNING (INFO with ``-vv``), and a filter that drops Beam's known harmless chatter.

Local ``multi_processing`` workers are separate processes started by Beam; they inherit stderr
and ``FINEHARD_LOG_LEVEL``/``FINEHARD_BEAM_LOG_LEVEL`` and run :func:`configure_worker` (via
``python -m pipeline.worker``) before Beam's harness starts, so they print our lines, not Beam's.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import IO, Optional

from core.terminal import printable

PROJECT_LOGGERS = ("finehard", "pipeline", "transforms", "inputs", "stages", "shards", "training", "core", "model_stubs",
                   "bench")
REMOTE_JOB_LOGGERS = ("apache_beam.runners.dataflow", "apache_beam.runners.portability.portable_runner")
# In the environment, not the run config: they must cross into the worker processes Beam starts (pipeline.worker).
LEVEL_ENV = "FINEHARD_LOG_LEVEL"
BEAM_LEVEL_ENV = "FINEHARD_BEAM_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
# Beam messages that say nothing a user can act on here (they bury the real ones).
KNOWN_NOISE = ("apitools not found", "Resource module is not available", "No semi_persistent_directory",
               "semi_persistent_directory", "BatchElements statistics", "Logging handler created",
               "sdk harness", "SDK Harness")


_silenced = False
_silence_lock = threading.Lock()


def silence() -> None:
    """From now on print nothing more: no log record, no thread traceback, no "Exception ignored".

    Called when a run is interrupted (``pipeline.interrupt``): Beam logs the interrupt as an error
    with a traceback in every step it unwinds through, and its runner threads print theirs when
    worker processes end; the CLI says in one line what happened.
    """
    global _silenced
    with _silence_lock:
        if _silenced:
            return
        _silenced = True
    logging.disable(logging.CRITICAL)
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None
    # gRPC's C core writes to file descriptor 2 itself: that goes to /dev/null, while sys.stderr (the
    # CLI's last line) keeps writing to where stderr went.
    try:
        if sys.stderr is not None and sys.stderr.fileno() == 2:
            sys.stderr.flush()
            kept = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
            sys.stderr = os.fdopen(kept, "w", buffering=1, encoding=sys.stderr.encoding,
                                   errors=sys.stderr.errors)
    except (OSError, ValueError, AttributeError):  # no real stderr (captured by a test, say): leave it
        pass


def is_project_logger(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PROJECT_LOGGERS)


class NoiseFilter(logging.Filter):
    """Drops Beam's known chatter and, in the launcher, the worker-log echoes Beam forwards.

    Local multi-process workers print to the inherited stderr themselves; Beam also forwards
    every worker record to the launcher as ``Worker: severity: ...`` lines: those are kept only
    at ERROR and above (the failure itself is raised by the runner anyway).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _silenced:
            return False
        if is_project_logger(record.name):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed foreign record: let the handler show it
            return True
        if any(n in message for n in KNOWN_NOISE):
            return False
        if message.startswith("Worker: ") and record.levelno < logging.ERROR:
            return False
        return True


def level_for(verbosity: int) -> tuple[int, int]:
    """(project level, Beam level) for ``-q`` (-1), default (0), ``-v`` (1), ``-vv`` (2)."""
    if verbosity < 0:
        return logging.WARNING, logging.ERROR
    if verbosity == 0:
        return logging.INFO, logging.WARNING
    if verbosity == 1:
        return logging.DEBUG, logging.WARNING
    return logging.DEBUG, logging.INFO


class PrintableFormatter(logging.Formatter):
    """Log lines whose message has its control characters written out (``core.terminal.printable``): a
    key, URL or engine answer logged as it came cannot drive the terminal. Tracebacks are kept as they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message, keep_newlines=True)
        return super().formatMessage(record)


LIBRARY_LOGGERS = ("httpx", "httpcore")  # shown like Beam's own lines: -vv


def _install(project_level: int, beam_level: int, stream: Optional[IO[str]]) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(PrintableFormatter(FORMAT, DATE_FORMAT))
    handler.addFilter(NoiseFilter())
    root = logging.getLogger()
    for old in list(root.handlers):  # the handler an import-time logging.warning() installed
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(project_level, beam_level))
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(project_level)
    logging.getLogger("apache_beam").setLevel(beam_level)
    for name in LIBRARY_LOGGERS:  # httpx logs every request at INFO: a line per caption otherwise
        logging.getLogger(name).setLevel(beam_level)
    for name in REMOTE_JOB_LOGGERS:  # the job's id, console URL and state on Dataflow/Flink
        logging.getLogger(name).setLevel(min(beam_level, logging.INFO) if project_level <= logging.INFO else beam_level)
    return handler


def configure(verbosity: int = 0, stream: Optional[IO[str]] = None) -> logging.Handler:
    """Set up logging for a ``finehard`` command; local worker processes inherit the levels."""
    project_level, beam_level = level_for(verbosity)
    os.environ[LEVEL_ENV] = logging.getLevelName(project_level)
    os.environ[BEAM_LEVEL_ENV] = logging.getLevelName(beam_level)
    return _install(project_level, beam_level, stream)


def configure_worker() -> None:
    """In a local Beam worker process: the launcher's levels (from the environment), our format."""
    project_level = logging.getLevelName(os.environ.get(LEVEL_ENV, "INFO"))
    beam_level = logging.getLevelName(os.environ.get(BEAM_LEVEL_ENV, "WARNING"))
    if not isinstance(project_level, int):
        project_level = logging.INFO
    if not isinstance(beam_level, int):
        beam_level = logging.WARNING
    handler = _install(project_level, beam_level, sys.stderr)
    # Beam's own worker records reach the launcher anyway (it echoes errors and raises the
    # failure); printed here too they would only repeat it. Shown with -vv.
    beam_shown = beam_level if beam_level <= logging.INFO else logging.CRITICAL + 1

    class _BeamBelow(logging.Filter):
        # Beam's harness resets the root and its own loggers to INFO once it has read the options;
        # the handler keeps our choice whatever the logger levels say.
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= (project_level if is_project_logger(record.name) else beam_shown)

    handler.addFilter(_BeamBelow())
