"""Launch a curation run: check what it will need, take the output, plan, and run the chain in one pass or
in waves (``pipeline.waves``). Argv becomes a frozen config once (``pipeline.config``); the chain itself is
``transforms.graph``."""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import apache_beam as beam

from core.engines import EngineSpecError
from core.run_config import LaunchPlan, RunConfig
from core.spill import SpillDir, check_spill_dir
from pipeline.cache_policy import model_cache_root
from pipeline.input_plan import InputPlan, plan_input
from pipeline.interrupt import Interrupted, on_stop
from shards.outdir import (OutputLock, prepare_output, read_run_file, remove_run_outputs, remove_stale_temp_files,
    write_run_file)
from shards.metrics import stage_metrics
from shards.output import write_summary
from pipeline.progress_view import progress_for_run
from pipeline.resume import check_resume, decide_num_shards, previous_run_figures
from pipeline.runners import make_runner
from pipeline.servers import probe_servers, validate_engines
from pipeline.stages import UsageError
from pipeline.submit import validate_runner_options
from pipeline.waves import find_duplicates, merge_stage_metrics, plan_waves
from stages.window import limits_kept
from transforms.graph import build_pipeline
from shards.write import ShardRange

LOG = logging.getLogger("finehard")
SUMMARY_LINE = "read %(read)s, written %(written)d, dead-lettered %(dead_lettered)d, filtered %(filtered)d"


def check_launch(config: RunConfig) -> Any:
    """What the run needs that the flags alone do not say, checked before anything is written: the
    input lists (fail fast on a missing or empty one), the engines and the runner's options fit, the
    spill and output folders can be used. Returns the input's plan and the Beam pipeline options."""
    plan = plan_input(config.input)
    try:
        validate_engines(config)
        options = validate_runner_options(
            list(config.beam_args), {"captioner": config.captioner, "detector": config.detector,
                                     "negatives": config.negatives},
            paths={"--input": config.input, "--output": config.output, "--spill-dir": config.spill_dir,
                   "--model-cache": config.model_cache},
            shared_mounts=config.shared_mount or (), gpu_accelerator=config.gpu_accelerator)
        check_spill_dir(config.spill_dir)
        prepare_output(config.output)
    except (EngineSpecError, ValueError, OSError) as e:
        raise UsageError(str(e)) from e
    return plan, options


def run_passes(config: RunConfig, options: Any, launch: LaunchPlan, waves: list[Optional[ShardRange]],
               size: Optional[int], test_pipeline: Optional[beam.Pipeline] = None) -> dict[str, Any]:
    """Run the chain: ``[None]`` is one pass over the whole input, else one pipeline per wave of shards
    (``pipeline.waves``; a wave whose shards are all complete is not run). Returns the stage metrics."""
    done = launch.done
    todo = [w for w in waves if w is None or not set(w.shards()) <= done]
    in_waves = waves != [None]
    duplicates = find_duplicates(config, options, size) if in_waves and config.dedup and todo else None
    metrics = []
    with SpillDir(config.spill_dir, local_runner=config.local_runner, output=config.output) as spill, \
            on_stop(lambda: spill.__exit__(Interrupted, None, None)), \
            progress_for_run(config, size, done, config.local_runner, config.progress_stages) as view, \
            limits_kept():  # each wave's server windows start where the last wave's adaptive limits ended
        for i, wave in enumerate(waves, 1):
            if wave is not None and wave not in todo:
                LOG.info("wave %d/%d (shards %d-%d): complete, skipped", i, len(waves), wave.lo, wave.hi - 1)
                continue
            if wave is not None:
                LOG.info("wave %d/%d: shards %d-%d of %d", i, len(waves), wave.lo, wave.hi - 1, wave.num_shards)
            p = test_pipeline or beam.Pipeline(runner=make_runner(config), options=options)
            build_pipeline(p, config, launch, spill.root, progress_dir=view.dir if view else None, wave=wave,
                           duplicates=duplicates)
            result = p.run()
            result.wait_until_finish()
            metrics.append(stage_metrics(result))
    return merge_stage_metrics(metrics)


def resume_or_start(config: RunConfig, plan: InputPlan) -> tuple[frozenset[int], int]:
    """With the output held: clear it (``--overwrite``) or find what an earlier run completed there.
    Returns the complete shards and the shard count."""
    if config.overwrite:
        LOG.info("--overwrite: removed %d earlier output path(s) from %s", remove_run_outputs(config.output),
                 config.output)
    remove_stale_temp_files(config.output)
    done = check_resume(config.output, config.info, plan.fingerprint, config.retry_failed)
    if done:
        LOG.info("resuming: %d shard(s) already complete in %s are skipped", len(done), config.output)
    return frozenset(done), decide_num_shards(config, plan.size, read_run_file(config.output) if done else None)


def run(config: RunConfig, test_pipeline: Optional[beam.Pipeline] = None) -> dict[str, Any]:
    """Run the curation job of ``config`` (``pipeline.config.parse_config``); returns the summary (also
    written to OUTPUT/summary.json).

    Bad flags and paths raise :class:`UsageError` before anything is written; a run that another
    live run holds the output of raises :class:`~shards.outdir.OutputInUse`.
    """
    plan, options = check_launch(config)
    with OutputLock(config.output) as lock, on_stop(lock.release):
        done, num_shards = resume_or_start(config, plan)
        if num_shards and done >= set(range(num_shards)):
            # nothing to do: no engine loaded, no hashing pass; the summary keeps the figures of the run that worked
            LOG.info("nothing to do: all %d shard(s) in %s are complete (--overwrite starts over)", num_shards,
                     config.output)
            summary = write_summary(config.output, **previous_run_figures(config.output))
            LOG.info(SUMMARY_LINE, summary)
            return summary
        if config.local_runner:
            probe_servers(config)
        write_run_file(config.output, {**config.info, "input_fingerprint": plan.fingerprint, "num_shards": num_shards})
        launch = LaunchPlan(num_shards, done, model_cache_root(config))
        in_waves = config.local_runner and not test_pipeline
        waves = plan_waves(num_shards, plan.size, config.wave_samples) if in_waves else []
        started = time.monotonic()
        metrics = run_passes(config, options, launch, waves or [None], plan.size, test_pipeline)
        summary = write_summary(config.output, wall_seconds=round(time.monotonic() - started, 3),
                                stage_metrics=metrics)
    LOG.info(SUMMARY_LINE, summary)
    return summary
