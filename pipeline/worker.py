"""Entry point of local ``multi_processing`` Beam workers: our logging set-up, then Beam's harness.

:func:`pipeline.runners.make_runner` starts workers with ``python -m pipeline.worker`` instead of
``python -m apache_beam.runners.worker.sdk_worker_main``; everything else is Beam's.

A SIGINT or SIGTERM (Ctrl-C reaches the whole process group; Slurm signals every process of a job)
ends a worker silently, a second later: the launcher, signalled too, reports the interrupt in one
line (``pipeline.interrupt``) and stops the workers it started. A worker that died at once would
race it, and the launcher's threads would print that the worker died; a worker's own
KeyboardInterrupt traceback would only bury the line too.
"""
import os
import signal
import sys
import threading

from pipeline.logs import configure_worker

WORKER_EXIT_AFTER_S = 1.0


def _stop_soon(signum: int) -> None:
    # Nothing this worker prints from now on helps (gRPC and Beam's log client complain as the launcher
    # closes the channels): its stderr, shared with the launcher, goes to /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    timer = threading.Timer(WORKER_EXIT_AFTER_S, os._exit, args=(128 + signum,))
    timer.daemon = True
    timer.start()


def _watch_signals() -> None:
    """The Python handler runs only when the main thread returns to Python (it waits in gRPC's C code):
    a thread woken by the signal's wakeup fd (written by the C-level handler at once) acts instead."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)

    def watch() -> None:
        while True:
            for signum in os.read(r, 16):
                if signum in (signal.SIGINT, signal.SIGTERM):
                    _stop_soon(signum)
                    return

    threading.Thread(target=watch, name="finehard-worker-stop", daemon=True).start()


_watch_signals()
configure_worker()

from apache_beam.runners.worker import sdk_worker_main  # noqa: E402 - after the logging set-up on purpose

if __name__ == "__main__":
    sdk_worker_main.main(sys.argv)
