"""argv -> the frozen :class:`core.run_config.RunConfig`, parsed once and checked once.

Imports nothing heavy: the CLI parses and checks the flags (:func:`parse_flags`) before Beam is
imported, then builds the config (:func:`build_config`, which asks Beam about the runner) from that
same parse. Library callers (tests, benches) use :func:`parse_config`.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

from core.run_config import RunConfig
from pipeline.beam_flags import check_beam_args
from pipeline.cloud import CloudPathError, beam_paths, check_cloud_paths
from pipeline.options import add_curation_args, check_beam_options, check_positive
from pipeline.runner_names import LOCAL_RUNNERS, normalise_runner_args
from pipeline.stages import UsageError, selected_stages


def parse_flags(argv: list[str], parser: Optional[argparse.ArgumentParser] = None
                ) -> tuple[argparse.Namespace, list[str]]:
    """Every check of the flags alone, before anything heavy is imported (ValueError: one line, exit 2):
    values, stages, Beam flags, and cloud paths without their filesystem, network or credentials.

    ``parser``: the CLI's (its errors exit 2 with one line); by default a plain one with the same flags.
    Returns our flags and the Beam flags (every argument that is not ours).
    """
    if parser is None:
        parser = argparse.ArgumentParser(add_help=False)
        add_curation_args(parser)
    args, beam_args = parser.parse_known_args(argv)
    check_positive(args)
    selected_stages(args.stages)
    check_beam_args(beam_args)
    try:  # a cloud path without network, credentials or its filesystem package: one line, in seconds
        check_cloud_paths({"--input": args.input, "--output": args.output, "--spill-dir": args.spill_dir,
                           "--model-cache": args.model_cache, **beam_paths(beam_args)})
    except CloudPathError as e:
        raise UsageError(str(e)) from e
    return args, beam_args


def build_config(args: argparse.Namespace, beam_args: list[str]) -> RunConfig:
    """The run config from flags :func:`parse_flags` checked: the runner named (imports Beam), the derived
    values computed. Raises ``ValueError`` (one line) on a runner that is not one or an empty ``--output``."""
    from pipeline.identity import run_info

    beam_args = normalise_runner_args(beam_args)
    runner, workers = check_beam_options(beam_args)
    if not args.output.strip():
        raise UsageError("--output is empty; give the folder the shards go to")
    local = runner is None or runner in LOCAL_RUNNERS
    derived: dict[str, Any] = {"beam_args": tuple(beam_args), "runner": runner, "local_runner": local,
                               "one_local_worker": local and workers == 1,
                               "stages_run": selected_stages(args.stages), "info": run_info(args)}
    flags = {**vars(args), "shared_mount": tuple(args.shared_mount) if args.shared_mount else None}  # no lists
    return RunConfig(**flags, **derived)


def parse_config(argv: list[str]) -> RunConfig:
    """argv (the flags of ``finehard shards``, without the command) -> the run config, checked."""
    return build_config(*parse_flags(argv))
