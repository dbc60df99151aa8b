"""``finehard`` command line: ``finehard shards ...`` runs the curation job; more subcommands below."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Optional

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import add_curation_args

BEAM_FLAGS_HELP = """\
Beam flags (passed to Beam; any other Beam pipeline option works too, e.g. --project, --region,
--temp_location for Dataflow or --flink_master for Flink):
  --runner NAME            DirectRunner (default; runs on the FnApiRunner, offline), DataflowRunner,
                           FlinkRunner, PortableRunner, ...
  --direct_num_workers N   local worker count (0 = one per core)
  --direct_running_mode M  in_memory (default), multi_threading or multi_processing
"""


def _all_beam_flags() -> argparse.ArgumentParser:
    """A parser that knows every Beam pipeline option, to reject misspelt flags at once."""
    parser = argparse.ArgumentParser(add_help=False)
    seen, todo = set(), [PipelineOptions]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                if sub.__module__.startswith("pipeline."):
                    continue  # our own flags were parsed already
                try:
                    sub._add_argparse_args(parser)
                except argparse.ArgumentError:
                    pass  # an option two classes both declare
    return parser


def check_beam_args(beam_args: list[str]) -> None:
    _, unknown = _all_beam_flags().parse_known_args(beam_args)
    flags = [a for a in unknown if a.startswith("-")]
    if flags or unknown:
        raise ValueError(f"unknown flag {(flags or unknown)[0]!r}; see `finehard shards --help`")


def shards_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="finehard shards", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Curate images into FineHARD WebDataset shards: recaption -> referring expressions -> "
                    "boxes -> hard negatives -> shards.", epilog=BEAM_FLAGS_HELP)
    add_curation_args(parser)
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    _, beam_args = parser.parse_known_args(argv)  # argparse exits 2 with one line on a missing/bad value
    from pipeline.run import UsageError, run

    try:
        check_beam_args(beam_args)
        summary = run(argv)
    except (UsageError, ValueError) as e:
        print(f"finehard shards: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("read", "written", "dead_lettered", "filtered", "shards",
                                               "reconciled", "negatives_valid_rate")}))
    return 0


def _lazy(module: str, func: str) -> Callable[[list[str]], int]:
    def call(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(argv)
    return call


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "shards": (shards_main, "run the curation pipeline into WebDataset shards"),
    "expressions": (_lazy("pipeline.stage_cli", "expressions_main"),
                    "captions on stdin -> referring expressions (JSON lines)"),
    "negatives": (_lazy("pipeline.stage_cli", "negatives_main"),
                  "expressions on stdin -> 10 hard negatives each (JSON lines)"),
    "stats": (_lazy("pipeline.report", "stats_main"),
              "counts per stage/reason, regions, negatives valid rate (+ stats_report.json)"),
    "preview": (_lazy("pipeline.report", "preview_main"), "self-contained HTML page of samples with boxes"),
    "export-fgclip": (_lazy("pipeline.export", "export_fgclip_main"), "FG-CLIP training json list + images"),
    "export-fgovd": (_lazy("pipeline.export", "export_fgovd_main"), "FG-OVD eval jsonl from held-out shards"),
    "train": (_lazy("training.cli", "train_main"), "train FG-CLIP stage 1 or 2 on shards (see training/README.md)"),
    "eval": (_lazy("training.cli", "eval_main"), "FG-OVD accuracy and retrieval R@1 of a trained model"),
    "convert": (_lazy("training.cli", "convert_main"), "FG-CLIP checkpoints: upstream layout <-> this project's"),
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    usage = "usage: finehard {" + ",".join(COMMANDS) + "} ...\n\n" + "\n".join(
        f"  {name:<16}{help_}" for name, (_, help_) in COMMANDS.items())
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
