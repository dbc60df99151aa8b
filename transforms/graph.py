"""Graph assembly: the Beam pipeline of a run, built from its frozen config.

read -> carry input fields -> dedup -> recaption -> expressions -> boxes -> negatives -> shards, with each
stage's dead and filtered samples split off where they fail and written beside the shards.
"""
from __future__ import annotations

import posixpath
from typing import Optional

import apache_beam as beam

from core.run_config import LaunchPlan, RunConfig, caption_options, detector_options
from stages.run_stamp import STAGE_FIELDS, carry_input_fields, stamp_run, strip_bytes
from core.spill import spill_image
from transforms.common import split_outcomes
from stages.dedup import Ref
from transforms.dedup import DropDuplicates
from stages.detect import DETECTORS
from transforms.detect import DetectBoxes
from transforms.expressions import ExtractExpressions
from stages.negatives import NEGATIVE_ENGINES
from transforms.negatives import GenerateNegatives
from shards.progress import STARTED_PREFIX
from transforms.progress import LogProgress
from transforms.read import ReadImages
from stages.caption import CAPTIONERS
from transforms.recaption import Recaption
from shards.markers import READ_COUNTS_DIR
from shards.write import ShardRange
from transforms.write import AssignShards, SkipCompleted, WriteShards


def read_input(p: beam.Pipeline, config: RunConfig, counts_root: Optional[str],
               want: Optional[ShardRange] = None, near_hashes: bool = False) -> beam.PCollection:
    """The records of ``--input`` (all, or those of the shards ``want`` keeps), as every pass reads them."""
    return p | "ReadImages" >> ReadImages(config.input, max_pixels=config.max_pixels, min_side=config.min_side,
                                          max_short_caption_chars=config.max_short_caption_chars,
                                          max_image_bytes=config.max_image_bytes, counts_root=counts_root,
                                          rows_per_unit=config.rows_per_read_unit, near_hashes=near_hashes,
                                          want=want)


class _Counting:
    """The progress counts of one pipeline: with a ``progress_dir`` (local runners) every stage counts its
    samples there for ``pipeline.progress_view``; without one nothing is added here."""

    def __init__(self, every_s: float, progress_dir: Optional[str], done: frozenset[int]):
        self.on = every_s > 0 and progress_dir is not None
        self.every_s, self.progress_dir, self.done = every_s, progress_dir, done

    def count(self, pcoll: beam.PCollection, stage: Optional[str], label: str) -> beam.PCollection:
        if not self.on:
            return pcoll
        return pcoll | label >> beam.ParDo(LogProgress(every_s=self.every_s, stage=stage,
                                                       progress_dir=self.progress_dir))

    def count_todo(self, pcoll: beam.PCollection, stage: Optional[str], label: str) -> beam.PCollection:
        """Count only the records of shards this run writes: read and dedup also see completed shards'."""
        if self.on:
            self.count(pcoll | f"NotCompleted{label}" >> SkipCompleted(self.done), stage, label)
        return pcoll

    def failures(self, dead: beam.PCollection, filtered: beam.PCollection, label: str,
                 todo_only: bool = False) -> list[beam.PCollection]:
        """A stage's dead/filtered outputs, counted where they leave the chain (stage totals shrink at once)."""
        counter = self.count_todo if todo_only else self.count
        return [counter(dead, None, f"CountDead{label}"), counter(filtered, None, f"CountFiltered{label}")]


def stage_transform(name: str, config: RunConfig, cache_root: Optional[str]) -> beam.PTransform:
    """The PTransform of model stage ``name`` (``recaption``, ``expressions``, ``detect``, ``negatives``)."""
    if name == "recaption":
        return Recaption(CAPTIONERS.resolve(config.captioner), batch_size=config.batch_size,
                         max_chars=config.max_caption_chars, engine_options=caption_options(config),
                         accelerator=config.gpu_accelerator, cache_root=cache_root)
    if name == "expressions":
        return ExtractExpressions()
    if name == "detect":
        return DetectBoxes(DETECTORS.resolve(config.detector), batch_size=config.batch_size, conf=config.box_conf,
                           iou=config.nms_iou, max_regions=config.max_regions,
                           engine_options=detector_options(config), accelerator=config.gpu_accelerator,
                           cache_root=cache_root)
    return GenerateNegatives(NEGATIVE_ENGINES.resolve(config.negatives), batch_size=config.batch_size * 2,
                             retries=config.negatives_retries, cache_root=cache_root,
                             accelerator=config.gpu_accelerator)


def model_stages(live: beam.PCollection, config: RunConfig, cache_root: Optional[str],
                 counting: _Counting) -> tuple[beam.PCollection, list[beam.PCollection]]:
    """The selected model stages in chain order: their live records, and their dead/filtered outputs."""
    finished = []
    for name in config.stages_run:
        live = counting.count(live, STARTED_PREFIX + name, f"CountStarted{name.title()}")  # less those done: in flight
        stage_input = live
        reuse = name == "recaption" and config.reuse_captions
        if reuse:  # captions carried from the input skip the captioner
            # (only then: a Flatten is a barrier on the local runner, whose FnApiRunner materialises it, so every
            # caption would be written before the first record reached the stages after it)
            needs, has = (live | "NeedsCaption" >> beam.Partition(lambda r, _: int("caption" in r), 2))
            stage_input = needs
        out = (stage_input | name.title() >> stage_transform(name, config, cache_root)
               | f"Stamp{name.title()}" >> beam.Map(stamp_run, field=STAGE_FIELDS[name],
                                                    config_hash=config.config_hash))
        out = counting.count(out, name, f"Count{name.title()}")  # before the Flatten: it holds its input back
        if reuse:
            out = (out, counting.count(has, name, "CountReusedCaptions")) | "WithReusedCaptions" >> beam.Flatten()
        live, dead, filtered = split_outcomes(out, name)
        finished += counting.failures(dead, filtered, name.title())
    return live, finished


def build_pipeline(p: beam.Pipeline, config: RunConfig, launch: LaunchPlan,
                   spill_root: Optional[str] = None, progress_dir: Optional[str] = None,
                   wave: Optional[ShardRange] = None, duplicates: Optional[dict[str, Ref]] = None) -> beam.PCollection:
    """Add the whole chain to ``p``; returns the PCollection of per-shard stats.

    Right after reading, records whose source can be read again drop their image bytes and the
    others spill them to ``spill_root`` (``core.spill``): always on distributed runners
    (every stage boundary is a network shuffle there), on local runners only with a ``spill_root``.
    Without one, bytes that cannot be read again ride in the records.
    With ``progress_dir`` (local runners) every stage counts its samples there for
    ``pipeline.progress_view``; without it the workers log ``progress:`` lines themselves.
    A ``wave`` (``pipeline.waves``) keeps only its shards' records, and marks the ``duplicates``
    taken over the whole input before it.
    """
    done = launch.done
    counting = _Counting(config.progress_every_s, progress_dir, done)
    records = read_input(p, config, counts_root=posixpath.join(config.output, READ_COUNTS_DIR), want=wave,
                         near_hashes=config.dedup and config.near_dup_threshold >= 0 and duplicates is None)
    if spill_root or not config.local_runner:
        records = records | "SpillImages" >> beam.Map(spill_image, root=spill_root)
    records = records | "AssignShards" >> AssignShards(config.samples_per_shard, launch.num_shards or None)
    counting.count_todo(records, "read", "CountRead")  # the progress display counts what this run writes
    live, dead, filtered = split_outcomes(records, "read")
    finished = counting.failures(dead, filtered, "Read", todo_only=True)
    live = live | "CarryInputFields" >> beam.Map(carry_input_fields, stages=config.stages_run,
                                                 config_hash=config.config_hash,
                                                 reuse_captions=config.reuse_captions,
                                                 max_caption_chars=config.max_caption_chars)
    if config.dedup:
        # over the whole input, completed shards included: a resumed run makes the same duplicate decisions
        deduped = counting.count_todo(live | "Dedup" >> DropDuplicates(config.near_dup_threshold, known=duplicates,
                                                                       keep=config.dedup_keep),
                                      "dedup", "CountDedup")
        live, dead, filtered = split_outcomes(deduped, "dedup")
        finished += counting.failures(dead, filtered, "Dedup", todo_only=True)
    live = live | "SkipCompletedShards" >> SkipCompleted(done)
    if config.stages_run and not config.one_local_worker:
        # Break fusion with the read: the records of one big tar (or manifest part) reach the model stages of
        # every worker, not only the reader's. They are small here: their image bytes are spilled or re-read.
        # Not on a local run with one worker: there it spreads nothing, and the FnApiRunner would read (and
        # check) every record of the run or wave before the first one reached a model server.
        live = live | "SpreadRecords" >> beam.Reshuffle()
    live, stage_failures = model_stages(live, config, launch.model_cache, counting)
    failed = (finished + stage_failures | "AllFailed" >> beam.Flatten() | "DropBytes" >> beam.Map(strip_bytes)
              | "SkipCompletedFailed" >> SkipCompleted(done))
    outcomes = (live, failed) | "AllOutcomes" >> beam.Flatten()
    if counting.on:
        outcomes = counting.count(outcomes, "done", "Progress")
    elif config.progress_every_s > 0:  # remote workers: each logs its own share
        outcomes = outcomes | "Progress" >> beam.ParDo(LogProgress(every_s=config.progress_every_s))
    return outcomes | "WriteShards" >> WriteShards(config.output, config.info)
