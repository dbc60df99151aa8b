"""``finehard`` command line: ``finehard shards ...`` runs the curation job; more subcommands below."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional

from core.cli_help import RawDescriptionDefaultsHelpFormatter
from core.record import PROJECT_VERSION
from core.terminal import printable
from pipeline.logs import configure as configure_logging
from pipeline.options import add_curation_args

BEAM_FLAGS_HELP = """\
Beam flags (passed to Beam; any other Beam pipeline option works too, e.g. --project, --region,
--temp_location for Dataflow or --flink_master for Flink):
  --runner NAME            DirectRunner (default; runs on the FnApiRunner, offline), DataflowRunner,
                           FlinkRunner, PortableRunner, dask (experimental), ...; short names and
                           any case work (direct, dataflow, flink, dask)
  --dask_client_address H:P  --runner dask: a dask scheduler (default: a local 2-worker cluster)
  --direct_num_workers N   local worker count (0 = one per core)
  --direct_running_mode M  in_memory (default), multi_threading or multi_processing
"""


INTERRUPTED = ("finehard shards: interrupted ({signal}); completed shards are kept: run the same command again "
               "to resume")


class _OneLineErrors(argparse.ArgumentParser):
    """argparse that says what is wrong in one line, not after the whole usage (60 lines of flags)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def shards_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="finehard shards", formatter_class=RawDescriptionDefaultsHelpFormatter,
        description="Curate images into FineHARD WebDataset shards: recaption -> referring expressions -> "
                    "boxes -> hard negatives -> shards.", epilog=BEAM_FLAGS_HELP)
    add_curation_args(parser)
    return parser


def check_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse the flags (the only parse of this run's argv) and check them alone, before anything heavy is
    imported (``pipeline.config.parse_flags``; ValueError: one line, exit 2). Returns our flags and Beam's.

    argparse itself exits 2 with one line on a missing flag or a bad value.
    """
    from pipeline.config import parse_flags

    return parse_flags(argv, shards_parser())


def shards_main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        shards_parser().print_help()
        return 0
    from pipeline.interrupt import StopOnSignals

    with StopOnSignals(INTERRUPTED) as stop:
        try:
            try:
                args, beam_args = check_flags(argv)
            except ValueError as e:
                print(f"finehard shards: error: {printable(e)}", file=sys.stderr)
                return 2
            from pipeline.config import build_config
            from shards.outdir import OutputInUse
            from pipeline.run import run
            from pipeline.stages import UsageError

            try:
                config = build_config(args, beam_args)
                summary = run(config)
            except (UsageError, ValueError, OutputInUse) as e:
                if stop.signum is not None:
                    raise
                print(f"finehard shards: error: {printable(e)}", file=sys.stderr)
                return 2
            except ImportError as e:  # fsspec without the filesystem of a gs://, s3://, http(s):// path
                if "install" not in str(e).lower() or stop.signum is not None:
                    raise
                print(f"finehard shards: error: {printable(e)} (from the checkout: pip install -e '.[gcp]' for gs://, "
                      "-e '.[aws]' for s3://, aiohttp for http(s)://)", file=sys.stderr)
                return 2
        except KeyboardInterrupt:
            return stop.report()
        except Exception as e:  # noqa: BLE001 - one line, not a traceback; the log above has the details
            if stop.signum is not None:  # Beam re-raises the interrupt as RuntimeError("KeyboardInterrupt [...]")
                return stop.report()
            print(f"finehard shards: error: the run failed: {_first_line(e)}; completed shards are kept: fix the "
                  "cause and run the same command again to resume", file=sys.stderr)
            return 1
    print(json.dumps({k: summary[k] for k in ("read", "written", "dead_lettered", "filtered", "shards",
                                               "reconciled", "retryable", "negatives_valid_rate")}))
    from shards.output import failure_reason, reconcile_problem

    if summary["reconciled"] is not True:
        problem = reconcile_problem(summary["read"], summary["accounted"]) or "no read counts were left"
        print(f"finehard shards: error: NOT RECONCILED: {problem}", file=sys.stderr)
        return 1

    reason = failure_reason(summary, config.max_failure_rate, config.output)
    if reason:
        print(f"finehard shards: failed: {printable(reason)}", file=sys.stderr)
        return 1
    return 0


def _first_line(e: BaseException) -> str:
    """The innermost cause's message, on one line (Beam wraps worker errors several times)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = f"{type(e).__name__}: {e}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return printable(lines[-1][:300] if lines else type(e).__name__)


def _lazy(module: str, func: str, parser: Optional[str] = None) -> Callable[[list[str]], int]:
    """A command whose module is imported only when it runs. With ``parser`` (the name of a parser builder in
    :mod:`shards.read_back_cli`) the arguments are parsed first: ``--help`` and flag errors answer
    before the module (and Beam) is imported."""
    def call(argv: list[str]) -> int:
        import importlib

        if parser is not None:
            getattr(importlib.import_module("shards.read_back_cli"), parser)().parse_args(argv)
        return getattr(importlib.import_module(module), func)(argv)
    return call


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "shards": (shards_main, "run the curation pipeline into WebDataset shards"),
    "expressions": (_lazy("pipeline.stage_cli", "expressions_main"),
                    "captions on stdin -> referring expressions (JSON lines)"),
    "negatives": (_lazy("pipeline.stage_cli", "negatives_main"),
                  "expressions on stdin -> 10 hard negatives each (JSON lines)"),
    "stats": (_lazy("shards.stats", "stats_main", "stats_parser"),
              "counts per stage/reason, regions, negatives valid rate (--write: stats_report.json)"),
    "preview": (_lazy("shards.preview", "preview_main", "preview_parser"), "self-contained HTML page of samples with boxes"),
    "export-fgclip": (_lazy("shards.export", "export_fgclip_main", "export_fgclip_parser"), "FG-CLIP training json list + images"),
    "export-fgovd": (_lazy("shards.export", "export_fgovd_main", "export_fgovd_parser"), "FG-OVD eval jsonl from held-out shards"),
    "train": (_lazy("training.cli", "train_main"), "train FG-CLIP stage 1 or 2 on shards (see training/README.md)"),
    "eval": (_lazy("training.cli", "eval_main"), "FG-OVD accuracy and retrieval R@1 of a trained model"),
    "convert": (_lazy("training.cli", "convert_main"), "FG-CLIP checkpoints: upstream layout <-> this project's"),
}


VERBOSITY_FLAGS = {"-v": 1, "--verbose": 1, "-vv": 2, "-q": -1, "--quiet": -1}


def take_verbosity(argv: list[str]) -> tuple[int, list[str]]:
    """``-v``/``-vv``/``-q`` anywhere before a ``--``: the verbosity and the other arguments."""
    level, rest = 0, []
    for i, a in enumerate(argv):
        if a == "--":
            rest += argv[i:]
            break
        if a in VERBOSITY_FLAGS:
            level = max(-1, min(2, level + VERBOSITY_FLAGS[a]))
        else:
            rest.append(a)
    return level, rest


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbosity, argv = take_verbosity(argv)
    configure_logging(verbosity)
    usage = "usage: finehard [-v|-vv|-q] [--version] {" + ",".join(COMMANDS) + "} ...\n\n" + "\n".join(
        f"  {name:<16}{help_}" for name, (_, help_) in COMMANDS.items()) + (
        "\n\n  -v / -vv / -q   more (debug; -vv adds Beam's own INFO lines) or less (warnings only) logging")
    if argv and argv[0] == "--version":
        print(f"finehard {PROJECT_VERSION}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"finehard: unknown command {argv[0]!r}\n{usage}", file=sys.stderr)
        return 2
    return command[0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
