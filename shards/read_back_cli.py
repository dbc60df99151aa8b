"""The parsers of the commands that read a finished run (``stats``, ``preview``, ``export-fgclip``,
``export-fgovd``): argparse only, so ``--help`` and a flag error answer before the modules that
read shards (and import Beam) are loaded (``pipeline.cli`` parses with these first)."""
from __future__ import annotations

import argparse

from core.cli_help import DefaultsHelpFormatter

REPORT_NAME = "stats_report.json"  # finehard stats --write
EXPORT_IMAGES_DIR = "images"  # finehard export-fgovd: the images beside the jsonl (shards.export.IMAGES_DIR)

OUTPUT_HELP = "a `finehard shards` --output folder (any fsspec URI)"


def stats_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finehard stats", formatter_class=DefaultsHelpFormatter,
                                     description="Counts per stage and reason, regions per image, negatives "
                                                 "valid rate. Reads OUTPUT only; --write also saves the report.")
    parser.add_argument("output", help=OUTPUT_HELP)
    parser.add_argument("--json", action="store_true", help="print the report as json instead of text")
    parser.add_argument("--write", action="store_true", help=f"also write OUTPUT/{REPORT_NAME}")
    return parser


def preview_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finehard preview", formatter_class=DefaultsHelpFormatter,
                                     description="Write a self-contained HTML page of samples with their boxes, "
                                                 "captions, expressions and hard negatives.")
    parser.add_argument("output", help=OUTPUT_HELP)
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--n", type=int, default=24, help="how many samples (the first ones, in shard order)")
    parser.add_argument("--shards", nargs="*", default=None, help="only these shards (e.g. shard-00003)")
    parser.add_argument("--n-failed", type=int, default=24,
                        help="how many dead-lettered and filtered samples to show (each list, 0 = none)")
    return parser


def _export_parser(prog: str, description: str, to_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("output", help=OUTPUT_HELP)
    parser.add_argument("--to", required=True, help=to_help)
    parser.add_argument("--shards", nargs="+", default=None,
                        help="only these shards (shard-00007 or shard-00007.tar); default: all")
    parser.add_argument("--json", action="store_true", help="print the counts as one json line instead of a sentence")
    return parser


def export_fgclip_parser() -> argparse.ArgumentParser:
    parser = _export_parser("finehard export-fgclip", "Write upstream FG-CLIP's stage-2 training layout: one JSON "
                                                      "array per shard in DIR/jsonfiles/ (--data_path), "
                                                      "DIR/finehard_files.txt, DIR/images/.", "destination folder")
    parser.add_argument("--relative-paths", action="store_true",
                        help="write f_path relative to DIR (then upstream's --image_folder must be DIR) instead of "
                             "absolute paths (the default for a local DIR)")
    return parser


def export_fgovd_parser() -> argparse.ArgumentParser:
    parser = _export_parser("finehard export-fgovd", "Write FG-OVD-style eval lines (one per region with 10 "
                                                     "negatives) from held-out shards.", "the .jsonl file to write")
    parser.add_argument("--images-dir", default=None,
                        help=f"folder for the images, relative to the jsonl's folder (default {EXPORT_IMAGES_DIR})")
    return parser
