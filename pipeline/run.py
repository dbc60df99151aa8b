"""Assemble and run the curation pipeline: read -> recaption -> expressions -> boxes -> negatives -> shards."""
from __future__ import annotations

import argparse
import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Optional

import apache_beam as beam
import fsspec
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from core.engines import EngineSpecError, parse_spec
from pipeline.cloud import CloudPathError, beam_paths, check_cloud_paths
from pipeline.interrupt import Interrupted, on_stop
from pipeline.options import add_curation_args, check_beam_options, check_positive
from pipeline.stages import STAGE_PRESETS, STAGES, UsageError, selected_stages  # noqa: F401 - also imported from here
from pipeline.outdir import (RUN_FILE, InputFingerprint, OutputLock, prepare_output, read_run_file,
                             remove_run_outputs, remove_stale_temp_files, same_input, write_run_file)
from core.record import PROJECT_VERSION, Field, text_hash, valid_text
from pipeline.output import read_shard_stats, stage_metrics, write_summary
from pipeline.runner_names import LOCAL_RUNNERS, canonical_runner, normalise_runner_args
from pipeline.progress_view import SampleCount, progress_for_run
from pipeline.waves import (WriteHashRows, hash_line, merge_stage_metrics, plan_waves, read_hash_rows,
                            remove_waves_dir, waves_root)
from pipeline.submit import validate_runner_options
from core.outcomes import mark_dead
from transforms.common import split_outcomes
from transforms.dedup import DropDuplicates, Ref, duplicates_of
from transforms.detect import DETECTORS, DetectBoxes
from transforms.expressions import ExtractExpressions
from transforms.negatives import NEGATIVE_ENGINES, GenerateNegatives
from transforms.read import MAX_IMAGE_BYTES, ROWS_PER_UNIT, InputError, ReadImages, ReadUnit, iter_units
from transforms.recaption import CAPTIONERS, Recaption, clean_caption
from transforms.progress import STARTED_PREFIX, LogProgress
from core.spill import SpillDir, check_spill_dir, spill_image
from transforms.write import (READ_COUNTS_DIR, AssignShards, ShardRange, SkipCompleted, WriteShards,
                              completed_shards, num_shards_for)

LOG = logging.getLogger("finehard")


class FineHardOptions(PipelineOptions):
    """FineHARD curation options, visible to Beam runners and templates (defined here: pipeline.options
    stays free of Beam so that the CLI checks flags before importing it)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        add_curation_args(parser, required=False)


def run_info(args: argparse.Namespace) -> dict[str, Any]:
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


def caption_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_side": args.caption_max_side, "max_tokens": args.caption_max_tokens, "prompt": args.caption_prompt,
            "concurrency": args.caption_concurrency, "timeout": args.caption_timeout,
            "trust_remote_code": args.captioner_trust_remote_code}


def hashed_caption_options(args: argparse.Namespace) -> dict[str, Any]:
    """The caption options as the config hash has them: an unset ``--caption-concurrency`` (adaptive)
    hashes as 8, the fixed default it replaced, so that default runs keep their hash (and resume);
    how many requests are in flight never changes what is written."""
    options = caption_options(args)
    if options["concurrency"] is None:
        options["concurrency"] = 8
    return options


def detector_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"text_encoder": args.detector_text_encoder, "imgsz": args.detector_imgsz}


STAGE_FIELDS = {"recaption": "caption", "expressions": "expressions", "detect": "bbox_info", "negatives": "negatives"}


def carry_input_fields(rec: dict[str, Any], stages: tuple[str, ...], config_hash: str,
                       reuse_captions: bool, max_caption_chars: int = 4000) -> dict[str, Any]:
    """Keep what the input already has (our own shards, a long-caption column) for the stages not rerun.

    A kept caption is cleaned and limited as the captioner's are (``clean_caption``); one left empty
    by that is no caption."""
    old = rec.pop(Field.INPUT_RECORD, {})
    caption = rec.pop(Field.INPUT_CAPTION, None)
    keep_caption = bool(caption) and ("recaption" not in stages or reuse_captions)
    caption = clean_caption(rec, str(caption), max_caption_chars) if keep_caption else None
    provenance = dict(old.get("provenance", {}))
    provenance.pop("version", None)
    if caption:
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
    if "caption" not in rec and stages and "recaption" not in stages:  # a model stage needs a caption
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


def read_input(p: beam.Pipeline, args: argparse.Namespace, counts_root: Optional[str],
               want: Optional[ShardRange] = None, near_hashes: bool = False) -> beam.PCollection:
    """The records of ``--input`` (all, or those of the shards ``want`` keeps), as every pass reads them."""
    return p | "ReadImages" >> ReadImages(args.input, max_pixels=args.max_pixels, min_side=args.min_side,
                                          max_short_caption_chars=args.max_short_caption_chars,
                                          max_image_bytes=args.max_image_bytes, counts_root=counts_root,
                                          rows_per_unit=args.rows_per_read_unit, near_hashes=near_hashes, want=want)


def build_hash_pipeline(p: beam.Pipeline, args: argparse.Namespace) -> None:
    """The duplicate pass of a run in waves (``pipeline.waves``): key and hashes of every record that
    reaches ``DropDuplicates`` in :func:`build_pipeline` (those read without failure) to OUTPUT/.waves/."""
    near = args.near_dup_threshold >= 0
    live, _, _ = split_outcomes(read_input(p, args, counts_root=None, near_hashes=near), "read")
    _ = (live | "HashRow" >> beam.Map(hash_line, near=near, keep=args.dedup_keep)
         | "WriteHashRows" >> beam.ParDo(WriteHashRows(waves_root(args.output))))


def build_pipeline(p: beam.Pipeline, args: argparse.Namespace, done: set[int],
                   spill_root: Optional[str] = None, progress_dir: Optional[str] = None,
                   local_runner: bool = True, wave: Optional[ShardRange] = None,
                   duplicates: Optional[dict[str, Ref]] = None) -> beam.PCollection:
    """Add the whole chain to ``p``; returns the PCollection of per-shard stats.

    Right after reading, records whose source can be read again drop their image bytes and the
    others spill them to ``spill_root`` (``core.spill``): always on distributed runners
    (``local_runner=False``: every stage boundary is a network shuffle there), on local runners
    only with a ``spill_root``. Without one, bytes that cannot be read again ride in the records.
    With ``progress_dir`` (local runners) every stage counts its samples there for
    ``pipeline.progress_view``; without it the workers log ``progress:`` lines themselves.
    A ``wave`` (``pipeline.waves``) keeps only its shards' records, and marks the ``duplicates``
    taken over the whole input before it.
    """
    counting = args.progress_every_s > 0 and progress_dir is not None

    def count(pcoll: beam.PCollection, stage: Optional[str], label: str) -> beam.PCollection:
        if not counting:
            return pcoll
        return pcoll | label >> beam.ParDo(LogProgress(every_s=args.progress_every_s, stage=stage,
                                                       progress_dir=progress_dir))

    def count_todo(pcoll: beam.PCollection, stage: Optional[str], label: str) -> beam.PCollection:
        """Count only the records of shards this run writes: read and dedup also see completed shards'."""
        if counting:
            count(pcoll | f"NotCompleted{label}" >> SkipCompleted(done), stage, label)
        return pcoll

    def failures(dead: beam.PCollection, filtered: beam.PCollection, label: str,
                 counter: Any = None) -> list[beam.PCollection]:
        """A stage's dead/filtered outputs, counted where they leave the chain (stage totals shrink at once)."""
        counter = counter or count
        return [counter(dead, None, f"CountDead{label}"), counter(filtered, None, f"CountFiltered{label}")]

    specs = {"captioner": CAPTIONERS.resolve(args.captioner), "detector": DETECTORS.resolve(args.detector),
             "negatives": NEGATIVE_ENGINES.resolve(args.negatives)}
    records = read_input(p, args, counts_root=posixpath.join(args.output, READ_COUNTS_DIR), want=wave,
                         near_hashes=args.dedup and args.near_dup_threshold >= 0 and duplicates is None)
    if spill_root or not local_runner:
        records = records | "SpillImages" >> beam.Map(spill_image, root=spill_root)
    records = records | "AssignShards" >> AssignShards(args.samples_per_shard, args.num_shards or None)
    count_todo(records, "read", "CountRead")  # the progress display counts what this run writes
    finished = []
    live, dead, filtered = split_outcomes(records, "read")
    finished += failures(dead, filtered, "Read", count_todo)
    stages_run = selected_stages(args.stages)
    config_hash = run_info(args)["config_hash"]
    live = live | "CarryInputFields" >> beam.Map(carry_input_fields, stages=stages_run, config_hash=config_hash,
                                                 reuse_captions=args.reuse_captions,
                                                 max_caption_chars=args.max_caption_chars)
    if args.dedup:
        # over the whole input, completed shards included: a resumed run makes the same duplicate decisions
        deduped = count_todo(live | "Dedup" >> DropDuplicates(args.near_dup_threshold, known=duplicates,
                                                                  keep=args.dedup_keep),
                             "dedup", "CountDedup")
        live, dead, filtered = split_outcomes(deduped, "dedup")
        finished += failures(dead, filtered, "Dedup", count_todo)
    live = live | "SkipCompletedShards" >> SkipCompleted(done)
    if stages_run:
        # Break fusion with the read: the records of one big tar (or manifest part) reach the model stages of
        # every worker, not only the reader's. They are small here: their image bytes are spilled or re-read.
        live = live | "SpreadRecords" >> beam.Reshuffle()
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
                                               retries=args.negatives_retries, cache_root=args.model_cache,
                                               accelerator=args.gpu_accelerator),
    }
    for name in STAGES:
        if name not in stages_run:
            continue
        live = count(live, STARTED_PREFIX + name, f"CountStarted{name.title()}")  # less those done: in flight
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
    failed = (finished | "AllFailed" >> beam.Flatten() | "DropBytes" >> beam.Map(_strip_bytes)
              | "SkipCompletedFailed" >> SkipCompleted(done))
    outcomes = (live, failed) | "AllOutcomes" >> beam.Flatten()
    if counting:
        outcomes = count(outcomes, "done", "Progress")
    elif args.progress_every_s > 0:  # remote workers: each logs its own share
        outcomes = outcomes | "Progress" >> beam.ParDo(LogProgress(every_s=args.progress_every_s))
    return outcomes | "WriteShards" >> WriteShards(args.output, run_info(args))


def config_changes(then: Any, now: dict[str, Any]) -> str:
    """`` (--flag A then, B now; ...)``: the settings that differ from the run being resumed ("" when unknown)."""
    if not isinstance(then, dict):
        return ""
    diffs = [f"--{k.replace('_', '-')} {then.get(k, 'default')} then, {now.get(k, 'default')} now"
             for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    return f" ({'; '.join(diffs)})" if diffs else ""


def check_resume(output: str, info: dict[str, Any], fingerprint: dict[str, Any], retry_failed: bool) -> set[int]:
    """The shard ids a re-run into ``output`` skips; refuses when the output came from another config or input."""
    done = completed_shards(output, retry_failed=retry_failed)
    if not done and not read_shard_stats(output):
        return set()
    previous = read_run_file(output)
    if previous is None:
        raise UsageError(f"--output {output} holds shards but no {RUN_FILE} (an older version, or not ours); "
                         "use a new --output, or --overwrite to start over")
    if previous.get("config_hash") != info["config_hash"]:
        raise UsageError(f"--output {output} holds shards from a different configuration"
                         f"{config_changes(previous.get('config'), info['config'])}; "
                         "use a new --output, or --overwrite to start over")
    if not same_input(previous.get("input_fingerprint"), fingerprint):
        then, now = (previous.get("input_fingerprint") or {}).get("listed_uris"), fingerprint["listed_uris"]
        what = (f"{then} listed then, {now} now" if then != now else
                f"the same {now} listed, but some file's contents or times differ: rewritten in place")
        raise UsageError(f"--input changed since the run that wrote --output {output} (files or manifests "
                         f"added, removed or rewritten: {what}); resuming would mix the "
                         "two. Use a new --output, or --overwrite to start over")
    return done


def check_manifest(unit: ReadUnit) -> Optional[int]:
    """A parquet manifest that cannot be opened stops the run at once, with its name.

    Returns the rows its footer counts (None for every other unit), so the footer is read once.
    """
    rows = None
    for uri in unit.uris:
        local_or_store = not uri.lower().startswith(("http://", "https://"))  # http: read per row, later
        if unit.kind == "manifest" and local_or_store and uri.lower().split("?")[0].endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                with fsspec.open(uri, "rb") as f:
                    rows = (rows or 0) + pq.ParquetFile(f).metadata.num_rows
            except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
                raise UsageError(f"manifest {uri} is not a readable parquet file ({type(e).__name__}: {e}); "
                                 "fix or remove it") from e
    return rows


@dataclass(frozen=True)
class InputPlan:
    """What the launcher learns from listing ``--input`` before any worker starts."""

    fingerprint: dict[str, Any]  # pipeline.outdir.InputFingerprint: a resumed run must see the same
    size: Optional[int]  # samples expected (pipeline.progress_view.SampleCount); None when not known cheaply


def plan_input(input_uri: str) -> InputPlan:
    """List ``--input`` once, as a stream: a missing or empty input and an unreadable parquet manifest
    stop the run here; the fingerprint and the expected size are taken unit by unit, so the
    launcher never holds the listing (the workers list it again)."""
    fingerprint, size = InputFingerprint(), SampleCount()
    try:
        for unit in iter_units(input_uri):
            rows = check_manifest(unit)
            fingerprint.add(unit)
            size.add(unit, rows)
    except InputError as e:
        raise UsageError(str(e)) from e
    return InputPlan(fingerprint.value(), size.total)


def decide_num_shards(args: argparse.Namespace, size: Optional[int],
                      previous: Optional[dict[str, Any]] = None) -> int:
    """The shard count, before anything is read: ``--num-shards``, the resumed run's, or from the
    listing's ``size`` (:func:`plan_input`).

    0 when the size of the input is not known cheaply (the count of what is read decides then).
    """
    before = (previous or {}).get("num_shards") or 0
    if args.num_shards:
        if before and before != args.num_shards:
            raise UsageError(f"--num-shards {args.num_shards}, but the run being resumed wrote {before} shards; "
                             "use a new --output, or --overwrite to start over")
        return args.num_shards
    if before:
        return before
    return num_shards_for(size, args.samples_per_shard) if size is not None else 0


def probe_servers(args: argparse.Namespace) -> None:
    """On local runs, an OpenAI-compatible engine that does not answer stops the run before it starts."""
    from transforms.engines import split_target
    from transforms.engines.openai_client import OpenAIClient, OpenAIError

    for flag, raw in (("--captioner", args.captioner), ("--negatives", args.negatives)):
        spec = parse_spec(raw)
        if spec.kind != "openai":
            continue
        base_url, _ = split_target(spec.target)
        try:
            OpenAIClient(base_url, timeout=10.0, retries=0).request_json("GET", "models")
        except OpenAIError as e:
            if e.status is None:  # no answer at all (an HTTP error still means it is up)
                raise UsageError(f"{flag} server {base_url} does not answer ({e}); start it (or fix the URL) "
                                 "and run again") from e


def model_cache_root(args: argparse.Namespace, local_runner: bool) -> Optional[str]:
    """``--model-cache auto``: OUTPUT/.model-cache for local outputs when a real model engine runs, so a
    re-run that retries failed samples does not ask again for the answers that succeeded."""
    if args.model_cache != "auto":
        return None if args.model_cache in ("none", "") else args.model_cache
    real = any(parse_spec(raw).kind not in ("stub", "rules") for raw in (args.captioner, args.detector, args.negatives))
    local = fsspec.core.split_protocol(args.output)[0] in (None, "file", "local")
    return posixpath.join(args.output, ".model-cache") if real and local and local_runner else None


def is_local_runner(options: PipelineOptions) -> bool:
    name = canonical_runner(options.view_as(StandardOptions).runner)
    return name is None or name in LOCAL_RUNNERS


def make_runner(options: PipelineOptions) -> Any:
    """Local runs use the FnApiRunner directly: the DirectRunner would first try Prism (a download);
    ``dask`` is this project's fixed DaskRunner (pipeline/dask_runner.py, experimental)."""
    if is_local_runner(options):
        from pipeline.local_runner import LocalRunner

        return LocalRunner()
    if canonical_runner(options.view_as(StandardOptions).runner) == "DaskRunner":
        try:
            from pipeline.dask_runner import FineHardDaskRunner
        except ImportError as e:
            raise UsageError(f"--runner dask needs dask.distributed ({e}); pip install -e '.[dask]'") from e
        return FineHardDaskRunner()
    return None  # Beam resolves the runner by name (DataflowRunner, FlinkRunner, PortableRunner ...)


def find_duplicates(args: argparse.Namespace, options: PipelineOptions,
                    size: Optional[int]) -> dict[str, Ref]:
    """The duplicate decisions over the whole input, for a run in waves: one pass that reads and
    hashes every image (:func:`build_hash_pipeline`), then ``transforms.dedup.duplicates_of``."""
    remove_waves_dir(args.output)
    LOG.info("waves: hashing all %s images first (no progress shown meanwhile), so each wave drops the "
             "duplicates one pass would; --no-dedup skips this", f"{size:,}" if size is not None else "the")
    with on_stop(lambda: remove_waves_dir(args.output)):
        try:
            p = beam.Pipeline(runner=make_runner(options), options=options)
            build_hash_pipeline(p, args)
            p.run().wait_until_finish()
            return duplicates_of(lambda: read_hash_rows(waves_root(args.output)), args.near_dup_threshold)
        finally:
            remove_waves_dir(args.output)


def run_passes(args: argparse.Namespace, options: PipelineOptions, waves: list[Optional[ShardRange]],
               done: set[int], size: Optional[int], local: bool,
               test_pipeline: Optional[beam.Pipeline] = None) -> dict[str, Any]:
    """Run the chain: ``[None]`` is one pass over the whole input, else one pipeline per wave of shards
    (``pipeline.waves``; a wave whose shards are all complete is not run). Returns the stage metrics."""
    todo = [w for w in waves if w is None or not set(w.shards()) <= done]
    in_waves = waves != [None]
    duplicates = find_duplicates(args, options, size) if in_waves and args.dedup and todo else None
    metrics = []
    with SpillDir(args.spill_dir, local_runner=local, output=args.output) as spill, \
            on_stop(lambda: spill.__exit__(Interrupted, None, None)), \
            progress_for_run(args, size, done, local, progress_stages(args)) as view:
        for i, wave in enumerate(waves, 1):
            if wave is not None and wave not in todo:
                LOG.info("wave %d/%d (shards %d-%d): complete, skipped", i, len(waves), wave.lo, wave.hi - 1)
                continue
            if wave is not None:
                LOG.info("wave %d/%d: shards %d-%d of %d", i, len(waves), wave.lo, wave.hi - 1, wave.num_shards)
            p = test_pipeline or beam.Pipeline(runner=make_runner(options), options=options)
            build_pipeline(p, args, done, spill.root, progress_dir=view.dir if view else None, local_runner=local,
                           wave=wave, duplicates=duplicates)
            result = p.run()
            result.wait_until_finish()
            metrics.append(stage_metrics(result))
    return merge_stage_metrics(metrics)


def previous_run_figures(output: str) -> dict[str, Any]:
    """``wall_seconds`` and ``stage_metrics`` of the summary.json a run left in ``output`` ({} if none)."""
    fs, root = fsspec.core.url_to_fs(output)
    try:
        with fs.open(posixpath.join(root, "summary.json"), "rt", encoding="utf-8") as f:
            found = json.load(f)
    except (FileNotFoundError, ValueError):
        return {}
    return {k: found[k] for k in ("wall_seconds", "stage_metrics") if isinstance(found, dict) and k in found}


def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    add_curation_args(parser)
    args, beam_args = parser.parse_known_args(argv)
    check_positive(args)
    beam_args = normalise_runner_args(beam_args)
    check_beam_options(beam_args)
    return args, beam_args


def run(argv: Optional[list[str]] = None, test_pipeline: Optional[beam.Pipeline] = None) -> dict[str, Any]:
    """Run the curation job; returns the summary (also written to OUTPUT/summary.json).

    Bad flags and paths raise :class:`UsageError` before anything is written; a run that another
    live run holds the output of raises :class:`~pipeline.outdir.OutputInUse`.
    """
    args, beam_args = parse_args(argv)
    if not args.output.strip():
        raise UsageError("--output is empty; give the folder the shards go to")
    try:  # a cloud path without network, credentials or its filesystem package: one line, in seconds
        check_cloud_paths({"--input": args.input, "--output": args.output, "--spill-dir": args.spill_dir,
                           "--model-cache": args.model_cache, **beam_paths(beam_args)})
    except CloudPathError as e:
        raise UsageError(str(e)) from e
    plan = plan_input(args.input)  # fail fast on a missing or empty input, before any worker starts
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
                                shared_mounts=args.shared_mount or (), gpu_accelerator=args.gpu_accelerator)
        check_spill_dir(args.spill_dir)
        prepare_output(args.output)
    except (EngineSpecError, ValueError, OSError) as e:
        raise UsageError(str(e)) from e
    selected_stages(args.stages)
    options = PipelineOptions(beam_args)
    local = is_local_runner(options)
    info = run_info(args)
    with OutputLock(args.output) as lock, on_stop(lock.release):
        if args.overwrite:
            LOG.info("--overwrite: removed %d earlier output path(s) from %s", remove_run_outputs(args.output),
                     args.output)
        remove_stale_temp_files(args.output)
        done = check_resume(args.output, info, plan.fingerprint, args.retry_failed)
        if done:
            LOG.info("resuming: %d shard(s) already complete in %s are skipped", len(done), args.output)
        args.num_shards = decide_num_shards(args, plan.size, read_run_file(args.output) if done else None)
        if args.num_shards and done >= set(range(args.num_shards)):
            # nothing to do: no engine loaded, no hashing pass; the summary keeps the figures of the run that worked
            LOG.info("nothing to do: all %d shard(s) in %s are complete (--overwrite starts over)", args.num_shards,
                     args.output)
            summary = write_summary(args.output, **previous_run_figures(args.output))
            LOG.info("read %(read)s, written %(written)d, dead-lettered %(dead_lettered)d, filtered %(filtered)d",
                     summary)
            return summary
        if local:
            probe_servers(args)
        write_run_file(args.output, {**info, "input_fingerprint": plan.fingerprint, "num_shards": args.num_shards})
        args.model_cache = model_cache_root(args, local)
        waves = plan_waves(args.num_shards, plan.size, args.wave_samples) if local and not test_pipeline else []
        started = time.monotonic()
        metrics = run_passes(args, options, waves or [None], done, plan.size, local, test_pipeline)
        summary = write_summary(args.output, wall_seconds=round(time.monotonic() - started, 3),
                                stage_metrics=metrics)
    LOG.info("read %(read)s, written %(written)d, dead-lettered %(dead_lettered)d, filtered %(filtered)d", summary)
    return summary
