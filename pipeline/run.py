"""Assemble and run the curation pipeline: read -> recaption -> expressions -> boxes -> negatives -> shards."""
from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from core.engines import EngineSpecError
from pipeline.options import add_curation_args, check_positive
from core.record import Field, PROJECT_VERSION, text_hash
from pipeline.output import read_shard_stats, stage_metrics, write_summary
from pipeline.progress_view import progress_for_run
from pipeline.submit import validate_runner_options
from transforms.common import mark_dead, split_outcomes
from transforms.dedup import DropDuplicates
from transforms.detect import DETECTORS, DetectBoxes
from transforms.expressions import ExtractExpressions
from transforms.negatives import NEGATIVE_ENGINES, GenerateNegatives
from transforms.read import InputError, ReadImages, list_units
from transforms.recaption import CAPTIONERS, Recaption
from transforms.progress import LogProgress
from transforms.spill import SpillDir, spill_image
from transforms.write import AssignShards, SkipCompleted, WriteShards, completed_shards

LOG = logging.getLogger("finehard")
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "direct")


class UsageError(ValueError):
    """Bad flags or paths: the CLI prints the message on one line and exits 2."""


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies a run's configuration; stored in every shard's stats (no timestamps)."""
    config = {"input": args.input, "samples_per_shard": args.samples_per_shard,
              "captioner": args.captioner, "detector": args.detector, "negatives": args.negatives,
              "box_conf": args.box_conf, "nms_iou": args.nms_iou, "max_regions": args.max_regions,
              "max_pixels": args.max_pixels, "min_side": args.min_side,
              "max_caption_chars": args.max_caption_chars, "negatives_retries": args.negatives_retries,
              "max_short_caption_chars": args.max_short_caption_chars,
              "caption": caption_options(args), "detector_options": detector_options(args),
              "stages": args.stages, "reuse_captions": args.reuse_captions, "dedup": args.dedup,
              "near_dup_threshold": args.near_dup_threshold}
    return {"version": PROJECT_VERSION, "config": config,
            "config_hash": text_hash(json.dumps(config, sort_keys=True))}


def caption_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_side": args.caption_max_side, "max_tokens": args.caption_max_tokens, "prompt": args.caption_prompt,
            "concurrency": args.caption_concurrency, "timeout": args.caption_timeout,
            "trust_remote_code": args.captioner_trust_remote_code}


def detector_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"text_encoder": args.detector_text_encoder, "imgsz": args.detector_imgsz}


STAGES = ("recaption", "expressions", "detect", "negatives")
STAGE_FIELDS = {"recaption": "caption", "expressions": "expressions", "detect": "bbox_info", "negatives": "negatives"}
STAGE_PRESETS = {"all": STAGES}  # every other value is a stage name or a comma list of them


def selected_stages(raw: str) -> tuple[str, ...]:
    """``all`` or a comma list of stage names (``recaption``, ``negatives`` ...); detect implies expressions."""
    names: list[str] = []
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        if part in STAGE_PRESETS:
            names += STAGE_PRESETS[part]
        elif part in STAGES:
            names.append(part)
        else:
            raise UsageError(f"--stages: unknown stage {part!r}; give all or a comma list of {', '.join(STAGES)}")
    if "detect" in names:
        names.append("expressions")
    if not names:
        raise UsageError("--stages is empty; give e.g. all, recaption or negatives")
    return tuple(n for n in STAGES if n in names)


def carry_input_fields(rec: dict[str, Any], stages: tuple[str, ...], config_hash: str,
                       reuse_captions: bool) -> dict[str, Any]:
    """Keep what the input already has (our own shards, a long-caption column) for the stages not rerun."""
    old = rec.pop(Field.INPUT_RECORD, {})
    caption = rec.pop(Field.INPUT_CAPTION, None)
    provenance = dict(old.get("provenance", {}))
    provenance.pop("version", None)
    if caption and ("recaption" not in stages or reuse_captions):
        rec["caption"] = caption
        provenance.setdefault("caption", {"engine": "input", "stub": False, "run": config_hash})
    else:
        provenance.pop("caption", None)
    if "detect" not in stages and "bbox_info" in old:
        rec["bbox_info"] = old["bbox_info"]
    else:
        provenance.pop("bbox_info", None)
        provenance.pop("expressions", None)
    if "negatives" in stages:
        provenance.pop("negatives", None)
        for region in rec.get("bbox_info", []):
            region["flag_short_neg"], region["short_expr_negs"] = 0, {}
    if provenance:
        rec["provenance"] = provenance
    if "caption" not in rec and "recaption" not in stages:
        return mark_dead(rec, "recaption", "no_caption", "the input has no long caption and --stages skips recaption")
    return rec


def stamp_run(rec: dict[str, Any], field: str, config_hash: str) -> dict[str, Any]:
    """Say which run produced ``field`` (kept as is when the field came from an earlier run)."""
    block = rec.get("provenance", {}).get(field)
    if isinstance(block, dict) and Field.DEAD not in rec:
        block.setdefault("run", config_hash)
    return rec


def _strip_bytes(rec: dict[str, Any]) -> dict[str, Any]:
    rec.pop(Field.IMAGE_BYTES, None)
    return rec


def progress_stages(args: argparse.Namespace) -> list[str]:
    """The points of the chain whose samples are counted for the progress display, in order."""
    return ["read", *(["dedup"] if args.dedup else []), *selected_stages(args.stages), "done"]


def build_pipeline(p: beam.Pipeline, args: argparse.Namespace, done: set[int],
                   spill_root: Optional[str] = None, progress_dir: Optional[str] = None) -> beam.PCollection:
    """Add the whole chain to ``p``; returns the PCollection of per-shard stats.

    With ``spill_root`` the image bytes go there right after reading (``transforms.spill``).
    With ``progress_dir`` (local runners) every stage counts its samples there for
    ``pipeline.progress_view``; without it the workers log ``progress:`` lines themselves.
    """
    counting = args.progress_every_s > 0 and progress_dir is not None

    def count(pcoll: beam.PCollection, stage: Optional[str], label: str) -> beam.PCollection:
        if not counting:
            return pcoll
        return pcoll | label >> beam.ParDo(LogProgress(every_s=args.progress_every_s, stage=stage,
                                                       progress_dir=progress_dir))

    def failures(dead: beam.PCollection, filtered: beam.PCollection, label: str) -> list[beam.PCollection]:
        """A stage's dead/filtered outputs, counted where they leave the chain (stage totals shrink at once)."""
        return [count(dead, None, f"CountDead{label}"), count(filtered, None, f"CountFiltered{label}")]

    specs = {"captioner": CAPTIONERS.resolve(args.captioner), "detector": DETECTORS.resolve(args.detector),
             "negatives": NEGATIVE_ENGINES.resolve(args.negatives)}
    records = (p
               | "ReadImages" >> ReadImages(args.input, max_pixels=args.max_pixels, min_side=args.min_side,
                                           max_short_caption_chars=args.max_short_caption_chars))
    if spill_root:
        records = records | "SpillImages" >> beam.Map(spill_image, root=spill_root)
    records = (records
               | "AssignShards" >> AssignShards(args.samples_per_shard)
               | "SkipCompletedShards" >> SkipCompleted(done))
    records = count(records, "read", "CountRead")
    finished = []
    live, dead, filtered = split_outcomes(records, "read")
    finished += failures(dead, filtered, "Read")
    stages_run = selected_stages(args.stages)
    config_hash = run_info(args)["config_hash"]
    live = live | "CarryInputFields" >> beam.Map(carry_input_fields, stages=stages_run, config_hash=config_hash,
                                                 reuse_captions=args.reuse_captions)
    if args.dedup:
        deduped = count(live | "Dedup" >> DropDuplicates(args.near_dup_threshold), "dedup", "CountDedup")
        live, dead, filtered = split_outcomes(deduped, "dedup")
        finished += failures(dead, filtered, "Dedup")
    stages = {
        "recaption": lambda: Recaption(specs["captioner"], batch_size=args.batch_size,
                                       max_chars=args.max_caption_chars, engine_options=caption_options(args),
                                       accelerator=args.gpu_accelerator, cache_root=args.model_cache),
        "expressions": lambda: ExtractExpressions(),
        "detect": lambda: DetectBoxes(specs["detector"], batch_size=args.batch_size, conf=args.box_conf,
                                      iou=args.nms_iou, max_regions=args.max_regions,
                                      engine_options=detector_options(args), accelerator=args.gpu_accelerator,
                                      cache_root=args.model_cache),
        "negatives": lambda: GenerateNegatives(specs["negatives"], batch_size=args.batch_size * 2,
                                               retries=args.negatives_retries, cache_root=args.model_cache),
    }
    for name in STAGES:
        if name not in stages_run:
            continue
        stage_input = live
        if name == "recaption":  # captions carried from the input (reuse) skip the captioner
            needs, has = (live | "NeedsCaption" >> beam.Partition(lambda r, _: int("caption" in r), 2))
            stage_input = needs
        out = (stage_input | name.title() >> stages[name]()
               | f"Stamp{name.title()}" >> beam.Map(stamp_run, field=STAGE_FIELDS[name], config_hash=config_hash))
        out = count(out, name, f"Count{name.title()}")  # before the Flatten: it holds its input back
        if name == "recaption":
            out = (out, count(has, name, "CountReusedCaptions")) | "WithReusedCaptions" >> beam.Flatten()
        live, dead, filtered = split_outcomes(out, name)
        finished += failures(dead, filtered, name.title())
    failed = finished | "AllFailed" >> beam.Flatten() | "DropBytes" >> beam.Map(_strip_bytes)
    outcomes = (live, failed) | "AllOutcomes" >> beam.Flatten()
    if counting:
        outcomes = count(outcomes, "done", "Progress")
    elif args.progress_every_s > 0:  # remote workers: each logs its own share
        outcomes = outcomes | "Progress" >> beam.ParDo(LogProgress(every_s=args.progress_every_s))
    return outcomes | "WriteShards" >> WriteShards(args.output, run_info(args))


def check_output_compatible(output: str, info: dict[str, Any]) -> set[int]:
    """Completed shard ids in ``output``; fails when they came from another configuration."""
    done = completed_shards(output)
    if done:
        previous = {s["run"]["config_hash"] for s in read_shard_stats(output)}
        if previous != {info["config_hash"]}:
            raise UsageError(f"--output {output} holds shards from a different configuration; "
                             "use a new --output (or delete the old one) to start over")
    return done


def is_local_runner(options: PipelineOptions) -> bool:
    name = options.view_as(StandardOptions).runner
    return name is None or name in LOCAL_RUNNERS


def make_runner(options: PipelineOptions) -> Any:
    """Local runs use the FnApiRunner directly: the DirectRunner would first try Prism (a download)."""
    if is_local_runner(options):
        from pipeline.local_runner import LocalRunner

        return LocalRunner()
    return None  # Beam resolves the runner by name (DataflowRunner, FlinkRunner, PortableRunner ...)


def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    add_curation_args(parser)
    args, beam_args = parser.parse_known_args(argv)
    check_positive(args)
    return args, beam_args


def run(argv: Optional[list[str]] = None, test_pipeline: Optional[beam.Pipeline] = None) -> dict[str, Any]:
    """Run the curation job; returns the summary (also written to OUTPUT/summary.json)."""
    args, beam_args = parse_args(argv)
    try:
        units = list_units(args.input)  # fail fast on a missing or empty input, before any worker starts
    except InputError as e:
        raise UsageError(str(e)) from e
    try:
        for reg, raw in ((CAPTIONERS, args.captioner), (DETECTORS, args.detector), (NEGATIVE_ENGINES, args.negatives)):
            spec = reg.resolve(raw)
            if spec.kind == "yolo-world":
                from transforms.engines.yolo_world import validate

                validate(spec, text_encoder=args.detector_text_encoder)
        validate_runner_options(beam_args, {"captioner": args.captioner, "detector": args.detector,
                                            "negatives": args.negatives},
                                paths={"--input": args.input, "--output": args.output,
                                       "--spill-dir": args.spill_dir, "--model-cache": args.model_cache},
                                shared_mounts=args.shared_mount or ())
    except (EngineSpecError, ValueError) as e:
        raise UsageError(str(e)) from e
    selected_stages(args.stages)
    info = run_info(args)
    done = check_output_compatible(args.output, info)
    if done:
        LOG.info("resuming: %d shard(s) already complete in %s are skipped", len(done), args.output)
    options = PipelineOptions(beam_args)
    p = test_pipeline or beam.Pipeline(runner=make_runner(options), options=options)
    started = time.monotonic()
    local = is_local_runner(options)
    with SpillDir(args.spill_dir, local_runner=local, output=args.output) as spill, \
            progress_for_run(args, units, done, local, progress_stages(args)) as view:
        build_pipeline(p, args, done, spill.root, progress_dir=view.dir if view else None)
        result = p.run()
        result.wait_until_finish()
    summary = write_summary(args.output, wall_seconds=round(time.monotonic() - started, 3),
                            stage_metrics=stage_metrics(result))
    LOG.info("read %(read)d, written %(written)d, dead-lettered %(dead_lettered)d, filtered %(filtered)d", summary)
    return summary
