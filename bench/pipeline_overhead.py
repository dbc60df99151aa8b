"""Pipeline overhead: the whole Beam pipeline vs a plain Python loop doing the same per-sample work.

Both run in a fresh process on the same synthetic scenes with the stub engines: read + decode
check, stub caption, spaCy expressions (the loop: one ``nlp.pipe`` over all captions), stub boxes
+ ``select_regions``, stub negatives + cleanup/validation, JSON and WebDataset tar writing (both
through ``shards.write.write_shard``). Prints samples/s of each and ends with
``pipeline_overhead: ratio=X.XX`` (pipeline samples/s / loop samples/s; goal >= 0.7).
"""
from __future__ import annotations

import itertools
import os
import shutil
import sys
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (bench_args, fresh_dir, make_input, markdown_table, publish,  # noqa: E402
                          python_child, run_child, run_pipeline_child)

GOAL = 0.7
SAMPLES_PER_SHARD = 1000
BATCH_SIZE = 8  # the pipeline's default --batch-size: model stages get batches of this size
# Duplicate removal is a pipeline-only stage (a group-by over image hashes) with no loop twin; both
# sides run without it so they do the same work and write byte-identical shards.
SAME_WORK = ("--no-dedup",)

# The plain loop, run in its own process. It streams the records through the stages with
# generators (nothing but the per-shard lists is held) and calls the very functions the
# pipeline's DoFns call.
LOOP_CHILD = """
import sys, time, logging
logging.disable(logging.WARNING)
manifest, output, samples_per_shard, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
from bench.pipeline_overhead import plain_loop
import pipeline.run, transforms.detect, transforms.expressions, transforms.negatives  # the pipeline child's imports
t1 = time.perf_counter()
stats = plain_loop(manifest, output, samples_per_shard, batch_size)
t2 = time.perf_counter()
from bench.common import child_report

from core.record import Field
child_report({"import_s": t1 - t0, "run_s": t2 - t1, **stats})
"""


def _batches(items: Any, size: int) -> Any:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def plain_loop(manifest: str, output: str, samples_per_shard: int = SAMPLES_PER_SHARD,
               batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """The pipeline's per-sample work as plain Python; returns counts like the pipeline's summary."""
    from core.engines import parse_spec
    from core.record import Field
    from core.outcomes import bump
    from pipeline.config import parse_config
    from stages.run_stamp import STAGE_FIELDS, carry_input_fields, stamp_run
    from stages.detect import DETECTORS, apply_detector
    from stages.expressions import expressions_from_doc, expressions_provenance, load_nlp
    from stages.negatives import NEGATIVE_ENGINES, apply_negatives
    from inputs.check import check_image
    from inputs.reader import read_unit
    from inputs.units import list_units
    from stages.caption import CAPTIONERS, apply_captioner
    from shards.write import num_shards_for, shard_of, write_shard

    config = parse_config(["--input", manifest, "--output", output, "--samples-per-shard", str(samples_per_shard),
                            "--batch-size", str(batch_size), *SAME_WORK])
    captioner = CAPTIONERS.build(parse_spec("stub"))
    detector = DETECTORS.build(parse_spec("stub"))
    negatives = NEGATIVE_ENGINES.build(parse_spec("stub"))
    nlp = load_nlp()
    provenance = expressions_provenance(nlp)

    def live(rec: dict[str, Any]) -> bool:
        return Field.DEAD not in rec and Field.FILTERED not in rec

    info = config.info
    config_hash, stages = config.config_hash, config.stages_run
    units = list_units(config.input)
    # The loop knows the count up front (the pipeline counts in a side input); shards as in the pipeline.
    records = [r for u in units for r in read_unit(u)]
    num_shards = num_shards_for(len(records), samples_per_shard)
    by_shard: dict[int, list[dict[str, Any]]] = {}

    def checked() -> Any:
        for rec in records:
            rec[Field.SHARD] = (shard_of(rec["key"], num_shards), num_shards)
            rec = check_image(rec, config.max_pixels, config.min_side)
            yield (carry_input_fields(rec, stages, config_hash, config.reuse_captions)
                   if live(rec) else rec)

    def captioned() -> Any:
        for batch in _batches(checked(), batch_size):
            apply_captioner(captioner, [r for r in batch if live(r)], max_chars=config.max_caption_chars)
            yield from batch

    def with_expressions() -> Any:
        pairs = ((r.get("caption", ""), r) for r in captioned())
        for doc, rec in nlp.pipe(pairs, as_tuples=True, batch_size=64):
            if live(rec):
                rec[Field.EXPRESSIONS] = expressions_from_doc(doc)
                rec.setdefault("provenance", {})["expressions"] = provenance
                bump(rec, "expressions", len(rec[Field.EXPRESSIONS]))
            yield rec

    def detected() -> Any:
        for batch in _batches(with_expressions(), batch_size):
            apply_detector(detector, [r for r in batch if live(r)], config.box_conf, config.nms_iou, config.max_regions)
            yield from batch

    for batch in _batches(detected(), batch_size * 2):
        apply_negatives(negatives, batch, retries=config.negatives_retries)
        for rec in batch:
            for name in stages:  # the pipeline stamps each stage's field with the run that made it
                stamp_run(rec, STAGE_FIELDS[name], config_hash)
            by_shard.setdefault(rec[Field.SHARD][0], []).append(rec)
    totals = {"read": 0, "written": 0, "dead_lettered": 0, "filtered": 0}
    for shard_id in sorted(by_shard):
        stats = write_shard(output, shard_id, num_shards, by_shard.pop(shard_id), info)
        for k in totals:
            totals[k] += stats[k]
    return totals


def measure(n: int, seed: int = 0) -> dict[str, Any]:
    """Both runs on ``n`` scenes; the figures of the table."""
    manifest = make_input(n, seed)
    out_pipe, out_loop = fresh_dir("overhead_pipe"), fresh_dir("overhead_loop")
    try:
        pipe_run, pipe = run_pipeline_child(manifest, out_pipe, SAMPLES_PER_SHARD,
                                            ["--batch-size", str(BATCH_SIZE), *SAME_WORK])
        loop_run = run_child(python_child(LOOP_CHILD, manifest, out_loop, str(SAMPLES_PER_SHARD), str(BATCH_SIZE)))
        if loop_run.returncode != 0:
            raise RuntimeError(f"plain loop failed:\n{loop_run.stderr[-3000:]}")
        loop = loop_run.result()
        same = _same_shards(out_pipe, out_loop)
    finally:
        shutil.rmtree(out_pipe, ignore_errors=True)
        shutil.rmtree(out_loop, ignore_errors=True)
    if pipe["written"] != loop["written"]:
        raise RuntimeError(f"the two runs disagree: pipeline wrote {pipe['written']}, loop {loop['written']}")
    return {"n": n, "pipe": pipe, "loop": loop, "pipe_run": pipe_run, "loop_run": loop_run, "same_shards": same}


def _same_shards(a: str, b: str) -> bool:
    """Whether both runs wrote byte-identical shard tars (proof they did the same work)."""
    names = sorted(f for f in os.listdir(a) if f.endswith(".tar"))
    if names != sorted(f for f in os.listdir(b) if f.endswith(".tar")):
        return False
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            if fa.read() != fb.read():
                return False
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bench_args(__doc__.splitlines()[0], 2000, argv)
    m = measure(args.n, args.seed)
    n, pipe, loop = m["n"], m["pipe"], m["loop"]
    pipe_rate, loop_rate = n / pipe["run_s"], n / loop["run_s"]
    ratio = pipe_rate / loop_rate
    rows = [
        ["Beam pipeline (FnApiRunner, stub engines)", pipe["run_s"], pipe_rate, m["pipe_run"].wall_s,
         m["pipe_run"].peak_tree_rss_mib, pipe["written"]],
        ["plain Python loop (same functions)", loop["run_s"], loop_rate, m["loop_run"].wall_s,
         m["loop_run"].peak_tree_rss_mib, loop["written"]],
    ]
    lines = markdown_table(["run", "run s", "samples/s", "process wall s", "peak RSS MiB", "written"], rows)
    lines.append("")
    lines.append(f"pipeline / loop samples/s: {ratio:.2f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'MISSED'}); "
                 f"byte-identical shards from both: {m['same_shards']}")
    ratio_line = f"pipeline_overhead: ratio={ratio:.2f}"
    setup = (f"n={n} synthetic scenes (seed {args.seed}), samples_per_shard={SAMPLES_PER_SHARD}, "
             f"batch_size={BATCH_SIZE}; 'run s' excludes interpreter start and imports, includes model loads")
    return publish(args, "Pipeline overhead", "bench/pipeline_overhead.py", setup, lines, ratio_line)


if __name__ == "__main__":
    sys.exit(main())
