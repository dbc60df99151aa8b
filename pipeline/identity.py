"""What identifies a run's configuration: the config and its hash, stored in every shard's stats and in
the run file, so that a re-run resumes only an output of the same configuration (``pipeline.resume``)."""
from __future__ import annotations

import json
from typing import Any

from core.record import MAX_IMAGE_BYTES, PROJECT_VERSION, ROWS_PER_UNIT, text_hash, valid_text
from core.run_config import caption_options, detector_options


def run_info(args: Any) -> dict[str, Any]:
    """What identifies a run's configuration; stored in every shard's stats (no timestamps)."""
    config = {"input": valid_text(args.input, escape=True), "samples_per_shard": args.samples_per_shard,
              "captioner": args.captioner, "detector": args.detector, "negatives": args.negatives,
              "box_conf": args.box_conf, "nms_iou": args.nms_iou, "max_regions": args.max_regions,
              "max_pixels": args.max_pixels, "min_side": args.min_side,
              "max_caption_chars": args.max_caption_chars, "negatives_retries": args.negatives_retries,
              "max_short_caption_chars": args.max_short_caption_chars,
              "caption": hashed_caption_options(args), "detector_options": detector_options(args),
              "stages": args.stages, "reuse_captions": args.reuse_captions, "dedup": args.dedup,
              "near_dup_threshold": args.near_dup_threshold}
    if args.dedup_keep != "first":
        config["dedup_keep"] = args.dedup_keep
    # Options added since 0.1.0 enter the hash only when set away from their default, so outputs of
    # earlier runs keep their config hash (and resume) when the new option is not used.
    if args.max_image_bytes != MAX_IMAGE_BYTES:
        config["max_image_bytes"] = args.max_image_bytes
    # How manifests are split into read units decides which key clashes are renamed and which are
    # write:duplicate_key, and names the read counts: a resume must read with the same split.
    if args.rows_per_read_unit != ROWS_PER_UNIT:
        config["rows_per_read_unit"] = args.rows_per_read_unit
    return {"version": PROJECT_VERSION, "config": config,
            "config_hash": text_hash(json.dumps(config, sort_keys=True))}


def hashed_caption_options(args: Any) -> dict[str, Any]:
    """The caption options as the config hash has them: an unset ``--caption-concurrency`` (adaptive)
    hashes as 8, the fixed default it replaced, so that default runs keep their hash (and resume);
    how many requests are in flight never changes what is written."""
    options = caption_options(args)
    if options["concurrency"] is None:
        options["concurrency"] = 8
    return options


def config_changes(then: Any, now: dict[str, Any]) -> str:
    """`` (--flag A then, B now; ...)``: the settings that differ from the run being resumed ("" when unknown)."""
    if not isinstance(then, dict):
        return ""
    diffs = [f"--{k.replace('_', '-')} {then.get(k, 'default')} then, {now.get(k, 'default')} now"
             for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    return f" ({'; '.join(diffs)})" if diffs else ""
