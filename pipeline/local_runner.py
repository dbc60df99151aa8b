"""The local runner: Beam's FnApiRunner, whose multi-process workers start through ``pipeline.worker``.

Beam starts ``multi_processing`` workers as ``python -m apache_beam.runners.worker.sdk_worker_main``;
they configure logging at INFO on their own and print Beam's harness chatter (and every
``BatchElements`` statistic) to the shared terminal. Here the command is swapped for
``python -m pipeline.worker``, which sets up logging as the launcher did (``pipeline.logs``) and then
runs the same harness.
"""
from __future__ import annotations

import shlex
import sys
from typing import Any

from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import environments

BEAM_WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"
# Beam starts the command with a shell: ``exec`` makes the worker that shell's process, so a signal to the
# process group (Ctrl-C, Slurm) reaches the worker, not a shell whose death Beam would take for the worker's.
WORKER_COMMAND = f"exec {shlex.quote(sys.executable)} -m pipeline.worker"


class LocalRunner(FnApiRunner):
    """FnApiRunner that starts multi-process workers with our logging set-up."""

    @property  # type: ignore[override]
    def _default_environment(self) -> Any:
        return self.__dict__["_finehard_env"]

    @_default_environment.setter
    def _default_environment(self, env: Any) -> None:
        if isinstance(env, environments.SubprocessSDKEnvironment) and BEAM_WORKER_MAIN in env.command_string:
            env = environments.SubprocessSDKEnvironment.from_command_string(command_string=WORKER_COMMAND)
        self.__dict__["_finehard_env"] = env
