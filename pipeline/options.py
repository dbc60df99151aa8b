"""Pipeline options: one definition used by Beam (``FineHardOptions``) and by the CLI's --help."""
from __future__ import annotations

import argparse
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions


def add_curation_args(parser: Any, required: bool = True) -> None:
    """The flags of ``finehard shards`` (also registered as Beam pipeline options)."""
    parser.add_argument("--input", required=required,
                        help="what to curate: a folder or glob of images, a .jsonl/.parquet manifest "
                             "(columns url|image|f_path, optional caption, key), or WebDataset .tar shards "
                             "in img2dataset layout; any fsspec URI (local, memory://, gs://, s3://)")
    parser.add_argument("--output", required=required,
                        help="folder for shard-NNNNN.tar, their _stats.json markers, deadletter/, filtered/ "
                             "and summary.json; a re-run over the same folder skips completed shards")
    parser.add_argument("--samples-per-shard", "--samples_per_shard", dest="samples_per_shard", type=int,
                        default=1000, help="target samples per shard (membership is sha1(key) mod the shard count)")
    parser.add_argument("--captioner", default="stub",
                        help="recaptioning engine spec, e.g. stub (default, marked stub in provenance)")
    parser.add_argument("--detector", default="stub",
                        help="box engine spec, e.g. stub (default, marked stub in provenance)")
    parser.add_argument("--negatives", default="stub",
                        help="hard-negative engine spec, e.g. stub (default, marked stub in provenance)")
    parser.add_argument("--box-conf", "--box_conf", dest="box_conf", type=float, default=0.4,
                        help="keep detections with confidence >= this (paper: 0.4)")
    parser.add_argument("--nms-iou", "--nms_iou", dest="nms_iou", type=float, default=0.5,
                        help="IoU above which a lower-scored box is suppressed (NMS across the image's expressions)")
    parser.add_argument("--max-regions", "--max_regions", dest="max_regions", type=int, default=8,
                        help="at most this many regions per image (training uses 4)")
    parser.add_argument("--max-pixels", "--max_pixels", dest="max_pixels", type=int, default=64_000_000,
                        help="images with more pixels are dead-lettered as too_large (decompression bombs)")
    parser.add_argument("--min-side", "--min_side", dest="min_side", type=int, default=8,
                        help="images with a side shorter than this are filtered as too_small")
    parser.add_argument("--max-caption-chars", "--max_caption_chars", dest="max_caption_chars", type=int,
                        default=4000, help="longer captions are truncated at a word boundary")
    parser.add_argument("--negatives-retries", "--negatives_retries", dest="negatives_retries", type=int, default=2,
                        help="re-ask the negatives engine this many times (new seed) for an invalid answer")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                        help="largest batch handed to a model engine (RunInference batching)")


class FineHardOptions(PipelineOptions):
    """FineHARD curation options, visible to Beam runners and templates."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        add_curation_args(parser, required=False)


def check_positive(args: argparse.Namespace) -> None:
    for name in ("samples_per_shard", "max_regions", "max_pixels", "batch_size", "max_caption_chars"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.box_conf <= 1 or not 0 <= args.nms_iou <= 1:
        raise ValueError("--box-conf and --nms-iou must lie in [0, 1]")
    if args.negatives_retries < 0:
        raise ValueError("--negatives-retries must be >= 0")
