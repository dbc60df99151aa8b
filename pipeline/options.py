"""Pipeline options: one definition used by the CLI (and its --help) and by Beam (``pipeline.runners.FineHardOptions``).

Imports nothing heavy: ``finehard shards --help`` and flag errors answer before Beam is imported.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

from core.record import MAX_IMAGE_BYTES, ROWS_PER_UNIT

WAVE_SAMPLES = 5_000  # pipeline.waves: a local run's memory grows with a wave, not with the input


def add_curation_args(parser: Any, required: bool = True) -> None:
    """The flags of ``finehard shards`` (also registered as Beam pipeline options).

    Long because it is the flag table: one ``add_argument`` per flag, in ``--help``'s order; splitting it
    would only scatter the table."""
    parser.add_argument("--input", required=required,
                        help="what to curate: a folder or glob of images, a .jsonl/.parquet manifest "
                             "(columns url|image|f_path, optional caption, key), or WebDataset .tar shards "
                             "in img2dataset layout; any fsspec URI (local, memory://, gs://, s3://)")
    parser.add_argument("--output", required=required,
                        help="folder for shard-NNNNN.tar, their _stats.json markers, deadletter/, filtered/ "
                             "and summary.json; a re-run over the same folder skips completed shards")
    parser.add_argument("--samples-per-shard", "--samples_per_shard", dest="samples_per_shard", type=int,
                        default=1000,
                        help="target samples per shard, not a cap: a sample's shard is sha1(key) mod N, N = "
                             "ceil(listed samples / this), so shards hold about this many, some a few more or fewer "
                             "(the bundled sample's 29 at 8: 6, 7, 7 and 9); deterministic, and no shard waits for the whole input")
    parser.add_argument("--captioner", default="stub",
                        help="recaptioning engine spec: stub (marked stub in provenance), "
                             "openai:http://host:23333/v1#MODEL, vllm:/models/vlm, transformers:/models/vlm "
                             "(see docs/engines.md)")
    parser.add_argument("--detector", default="stub",
                        help="box engine spec: stub (marked stub), "
                             "yolo-world:/w/yolov8x-worldv2.pt#text=/w/clip-text (see docs/engines.md)")
    parser.add_argument("--negatives", default="stub",
                        help="hard-negative engine spec: stub (marked stub), rules, llama-cpp:/m.gguf, "
                             "openai:http://host:8000/v1#MODEL, vllm:/models/m (see docs/text_stages.md)")
    parser.add_argument("--caption-max-side", "--caption_max_side", dest="caption_max_side", type=int, default=1024,
                        help="longer image side sent to the captioner (a resized copy; the stored image is unchanged)")
    parser.add_argument("--caption-max-tokens", "--caption_max_tokens", dest="caption_max_tokens", type=int,
                        default=512, help="most tokens per generated caption")
    parser.add_argument("--caption-prompt", "--caption_prompt", dest="caption_prompt", default="recaption.txt",
                        help="prompt file under prompts/; its hash goes into provenance")
    parser.add_argument("--caption-concurrency", "--caption_concurrency", dest="caption_concurrency", type=int,
                        default=None, help="requests in flight per worker for openai: captioners (default: adapted "
                                           "to the server's answer latency, up to 320; see docs/engines.md)")
    parser.add_argument("--caption-timeout", "--caption_timeout", dest="caption_timeout", type=float, default=120.0,
                        help="seconds per captioning request before a retry (then caption_timeout)")
    parser.add_argument("--captioner-trust-remote-code", "--captioner_trust_remote_code",
                        dest="captioner_trust_remote_code", action="store_true",
                        help="let transformers:/vllm: captioners run the model folder's own code (CogVLM2); off by default")
    parser.add_argument("--detector-text-encoder", "--detector_text_encoder", dest="detector_text_encoder",
                        default=None, help="local HF CLIP text model folder for yolo-world: (same as #text=PATH)")
    parser.add_argument("--detector-imgsz", "--detector_imgsz", dest="detector_imgsz", type=int, default=640,
                        help="YOLO-World letterbox size")
    parser.add_argument("--gpu-accelerator", "--gpu_accelerator", dest="gpu_accelerator", default=None,
                        help="Beam accelerator resource hint for GPU engine stages, "
                             "e.g. 'type:nvidia-l4;count:1;install-nvidia-driver'")
    parser.add_argument("--max-short-caption-chars", "--max_short_caption_chars", dest="max_short_caption_chars",
                        type=int, default=2000, help="longer alt-texts are cut at a word boundary (and counted)")
    parser.add_argument("--box-conf", "--box_conf", dest="box_conf", type=float, default=0.4,
                        help="keep detections with confidence >= this (paper: 0.4)")
    parser.add_argument("--nms-iou", "--nms_iou", dest="nms_iou", type=float, default=0.5,
                        help="IoU above which a lower-scored box is suppressed (NMS across the image's expressions)")
    parser.add_argument("--max-regions", "--max_regions", dest="max_regions", type=int, default=8,
                        help="at most this many regions per image (training uses 4)")
    parser.add_argument("--max-pixels", "--max_pixels", dest="max_pixels", type=int, default=64_000_000,
                        help="images with more pixels are dead-lettered as too_large (decompression bombs)")
    parser.add_argument("--num-shards", "--num_shards", dest="num_shards", type=int, default=0,
                        help="shards to write (membership: sha1(key) mod this). 0: from the size of "
                             "the listed input and --samples-per-shard, decided before reading, so model stages "
                             "start at once; only when the size cannot be had cheaply (tars without sizes.json, "
                             "manifests over 512 MiB) does the shard count wait for the whole read")
    parser.add_argument("--rows-per-read-unit", "--rows_per_read_unit", dest="rows_per_read_unit", type=int,
                        default=ROWS_PER_UNIT,
                        help="a .jsonl/.parquet manifest is read in parts of about this many rows, so many "
                             "workers read one large manifest (parquet splits at row groups); 0: read each whole")
    parser.add_argument("--max-image-bytes", "--max_image_bytes", dest="max_image_bytes", type=int,
                        default=MAX_IMAGE_BYTES,
                        help="an image file (or tar member, or download) larger than this is dead-lettered as "
                             "file_too_large; at most this many bytes + 1 are ever read (default: %(default)s = 64 MiB)")
    parser.add_argument("--min-side", "--min_side", dest="min_side", type=int, default=8,
                        help="images with a side shorter than this are filtered as too_small")
    parser.add_argument("--max-caption-chars", "--max_caption_chars", dest="max_caption_chars", type=int,
                        default=4000, help="longer captions are truncated at a word boundary")
    parser.add_argument("--negatives-retries", "--negatives_retries", dest="negatives_retries", type=int, default=2,
                        help="re-ask the negatives engine this many times (new seed) for an invalid answer")
    parser.add_argument("--stages", default="all",
                        help="which stages run: all; ingest (no model: read, check, dedup, shard, "
                             "the first step before paying for GPUs; run the models later over those shards); "
                             "recaption (stage-1 data: captions, no regions); "
                             "negatives (only new negatives, e.g. over existing shards); or a comma list of "
                             "recaption,expressions,detect,negatives. Fields of stages not run are kept from the input")
    parser.add_argument("--reuse-captions", "--reuse_captions", dest="reuse_captions", action="store_true",
                        help="take the long caption from the input (a manifest long_caption column, or our own "
                             "shards) instead of recaptioning; samples without one are still recaptioned")
    parser.add_argument("--no-dedup", "--no_dedup", dest="dedup", action="store_false",
                        help="keep duplicate images (by default exact and near duplicates are filtered)")
    parser.add_argument("--dedup-keep", "--dedup_keep", dest="dedup_keep", default="first",
                        choices=("first", "largest"),
                        help="which of a group of duplicates is kept: first = the first in input order (a "
                             "manifest's rows, a tar's members, a folder's or glob's files sorted by name with the "
                             "extension set aside, so photo.jpg comes before 'photo (copy).jpg'); largest = the one "
                             "with the most pixels (equal sizes: the first). The others are filtered naming the key "
                             "kept")
    parser.add_argument("--near-dup-threshold", "--near_dup_threshold", dest="near_dup_threshold", type=int, default=6,
                        help="near duplicates: at most this many differing bits of a 256-bit dHash, -1..128 (-1: exact only)")
    parser.add_argument("--model-cache", "--model_cache", dest="model_cache", default="auto",
                        help="keep model answers (captions, raw boxes, valid negatives) under this folder or fsspec "
                             "URI, keyed by stage, engine, model, prompt hash, engine options and input hash; a re-run "
                             "with the same engines reads them instead of calling the model (hits are counted as "
                             "cache_hits:<stage> in summary.json). auto: OUTPUT/.model-cache on local runs "
                             "with a real model engine, so retrying failed samples never re-asks the ones that "
                             "succeeded; none: off")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: remove what earlier runs wrote into --output (shards, markers, lists, "
                             "summary; nothing else) instead of resuming")
    parser.add_argument("--no-retry-failed", "--no_retry_failed", dest="retry_failed", action="store_false",
                        help="on a re-run, keep shards whose samples failed because an engine was down (retryable "
                             "dead letters); by default such shards are redone")
    parser.add_argument("--spill-dir", "--spill_dir", dest="spill_dir", default="auto",
                        help="where image bytes that cannot be read again from their source (http(s) downloads, "
                             ".tar.gz members, inline bytes, converted images) wait between reading and writing, so "
                             "records stay small at stage boundaries (files and uncompressed tar members are read "
                             "again from the input instead): auto = on local runners, whose boundaries are "
                             "held in memory, OUTPUT/.spill-* (or a temp folder when OUTPUT is remote), and none on "
                             "distributed runners (their bytes then ride in the records through every shuffle: give "
                             "e.g. gs://BUCKET/tmp); none; or a folder / fsspec URI (the run uses a subfolder and "
                             "removes it at the end). Needs free space about the size of those images")
    parser.add_argument("--wave-samples", "--wave_samples", dest="wave_samples", type=int, default=WAVE_SAMPLES,
                        help="local runners: when the input lists more samples than this, run it in waves of about "
                             "this many (a pipeline per range of shards), so memory stays flat however big the "
                             "input; with dedup on, a first pass hashes every image to take the duplicate decisions "
                             "over the whole input. 0 = one pass. Distributed runners ignore it (they bound their "
                             "bundles themselves)")
    parser.add_argument("--progress-every-s", "--progress_every_s", dest="progress_every_s", type=float, default=10.0,
                        help="local runs: a progress line (samples done, rate, ETA, samples in flight) every this "
                             "many seconds, whether or not a sample finished; remote workers log at most this "
                             "often (0 = off)")
    parser.add_argument("--shared-mount", "--shared_mount", dest="shared_mount", action="append", default=None,
                        help="a folder every Flink task manager mounts at the same path (e.g. /nfs): local "
                             "--input/--output/--spill-dir/--model-cache paths under it are accepted on Flink")
    parser.add_argument("--max-failure-rate", "--max_failure_rate", dest="max_failure_rate", type=float, default=0.5,
                        help="exit 1 with the reason when more than this share of the samples is dead-lettered, or "
                             "of the regions got no valid negatives (an engine that is down, a broken prompt); "
                             "1 = never")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                        help="largest batch handed to a model engine (RunInference batching)")


NEAR_DUP_MAX_BITS = 128  # of a 256-bit dHash: two unrelated images differ in about this many bits


def check_positive(args: argparse.Namespace) -> None:
    """Every value a curation flag may take, checked before anything is written (``ValueError``: the CLI
    prints its one line and exits 2)."""
    for name in ("samples_per_shard", "max_regions", "max_pixels", "batch_size", "max_caption_chars",
                 "caption_max_side", "caption_max_tokens", "caption_concurrency", "detector_imgsz",
                 "max_short_caption_chars", "max_image_bytes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.box_conf <= 1 or not 0 <= args.nms_iou <= 1:
        raise ValueError("--box-conf and --nms-iou must lie in [0, 1]")
    if args.caption_timeout <= 0:
        raise ValueError("--caption-timeout must be positive")
    if not 0 <= args.max_failure_rate <= 1:
        raise ValueError("--max-failure-rate must lie in [0, 1]")
    if args.wave_samples < 0:
        raise ValueError("--wave-samples must be >= 0 (0: one pass)")
    if args.negatives_retries < 0:
        raise ValueError("--negatives-retries must be >= 0")
    for name, what in (("num_shards", "0: from the input's size"), ("rows_per_read_unit", "0: each manifest whole"),
                       ("min_side", "0: no image is too small")):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0 ({what}), got {getattr(args, name)}")
    if not -1 <= args.near_dup_threshold <= NEAR_DUP_MAX_BITS:
        raise ValueError(f"--near-dup-threshold must lie in -1..{NEAR_DUP_MAX_BITS} (differing bits of a 256-bit "
                         f"hash; -1: exact duplicates only), got {args.near_dup_threshold}")
    if args.progress_every_s < 0:
        raise ValueError("--progress-every-s must be >= 0 (0: off)")


def check_beam_options(beam_args: list[str]) -> tuple[Optional[str], int]:
    """The Beam flags this project reads itself: ``--runner`` names a runner, ``--direct_num_workers`` >= 0.

    Returns the canonical runner name (``pipeline.runner_names``; None: none given) and the local worker count
    (``--direct_num_workers``; 0: one per core)."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    from pipeline.runner_names import RUNNERS, canonical_runner

    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner
    if runner is not None and not _known_runner(runner, canonical_runner(runner) in RUNNERS):
        known = ", ".join(r for r in RUNNERS if r != "FnApiRunner")
        raise ValueError(f"--runner {runner} is not a runner here; give one of {known} (any case, 'Runner' may be "
                         "left out), or the module.Class path of a PipelineRunner")
    workers = options.view_as(DirectOptions).direct_num_workers
    if workers is not None and workers < 0:
        raise ValueError(f"--direct_num_workers must be >= 0 (0: one per core), got {workers}")
    return canonical_runner(runner), 1 if workers is None else workers


def _known_runner(name: str, ours: bool) -> bool:
    if ours:
        return True
    from apache_beam.runners.runner import _RUNNER_MAP

    low = name.strip().lower()
    if low in _RUNNER_MAP or low + "runner" in _RUNNER_MAP:
        return True
    if "." in name:
        import importlib.util

        try:
            return importlib.util.find_spec(name.rsplit(".", 1)[0]) is not None
        except (ImportError, ValueError):
            return False
    return False
