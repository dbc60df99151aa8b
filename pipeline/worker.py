"""Entry point of local ``multi_processing`` Beam workers: our logging set-up, then Beam's harness.

:func:`pipeline.run.make_runner` starts workers with ``python -m pipeline.worker`` instead of
``python -m apache_beam.runners.worker.sdk_worker_main``; everything else is Beam's.
"""
import sys

from pipeline.logs import configure_worker

configure_worker()

from apache_beam.runners.worker import sdk_worker_main  # noqa: E402 - after the logging set-up on purpose

if __name__ == "__main__":
    sdk_worker_main.main(sys.argv)
