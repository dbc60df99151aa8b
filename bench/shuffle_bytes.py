"""Shuffle bytes: what one record weighs at each stage boundary, with and without its image bytes (issue #15).

Makes N local 640x480 noisy JPEGs (``bench.peers.make_images``, cached) and packs the same images
into one uncompressed tar and one ``.tar.gz`` (img2dataset layout). Each input runs the whole
pipeline (stub engines, duplicate removal on) in this process on the FnApiRunner, built two ways
by ``transforms.graph.build_pipeline``:

* before: no ``SpillImages`` step, the image bytes ride in every record: what distributed runners
  were given until now (and what a local run with ``--spill-dir none`` still does);
* after: the chain built for a distributed runner (``local_runner=False``): records whose source
  can be read again exactly (the files, the tar members) drop their bytes; the ``.tar.gz`` keeps
  them without a spill folder, and is also run with one (``--spill-dir``: a local folder standing
  in for ``gs://bucket/tmp``; the record then carries the spilled file's name).

Where each boundary's transform emits a record, the record is encoded with the coder Beam gives
that PCollection (from its element type: ``FastPrimitivesCoder`` for the record dicts, which
encodes dicts, strings, bytes and numbers itself and pickles only other types; a ``TupleCoder``
of the shard id and the record at the group by shard) and the sizes are summed in a Beam
distribution metric; which runner runs the chain does not change them. Prints the mean bytes per
record per boundary and ends with ``shuffle_bytes: ratio=X.XX``: before / after at the largest
boundary, the smaller of the folder's and the tar's.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tarfile
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import INPUT_CACHE, bench_args, fresh_dir, markdown_table, pipeline_argv, publish  # noqa: E402
from bench.peers import make_images  # noqa: E402

NAMESPACE = "shuffle_bytes"
RECORDS_AT_SCALE = 12_000_000  # the input: 12M images
# (row, the transform whose output crosses that boundary)
BOUNDARIES = (
    ("after read (fused with the spill step, not shuffled)", "ReadImages/ReadUnit"),
    ("after spill", "SpillImages"),
    ("dedup (held until the duplicate map is known)", "Dedup/Hash"),
    ("after recaption", "StampRecaption"),
    ("after expressions", "StampExpressions"),
    ("after detect", "StampDetect"),
    ("after negatives", "StampNegatives"),
    ("group by shard", "WriteShards/ByShard"),
)
ROW_OF = {label: row for row, label in BOUNDARIES}
# (column, input, the chain for a distributed runner, with a spill folder)
RUNS = (
    ("folder, before", "folder", False, False), ("folder, after", "folder", True, False),
    ("tar, before", "tar", False, False), ("tar, after", "tar", True, False),
    ("tar.gz, before", "tar.gz", False, False), ("tar.gz, after", "tar.gz", True, False),
    ("tar.gz, after, --spill-dir", "tar.gz", True, True),
)


def make_inputs(n: int, cache: str = INPUT_CACHE) -> dict[str, str]:
    """The noisy JPEGs as a manifest of local paths, one uncompressed tar and one .tar.gz (cached)."""
    import pyarrow.parquet as pq

    manifest, _ = make_images(n, cache)
    folder = os.path.join(cache, f"shuffle_bytes_n{n}")
    inputs = {"folder": manifest, "tar": os.path.join(folder, "tar", "part-00000.tar"),
              "tar.gz": os.path.join(folder, "targz", "part-00000.tar.gz")}
    if os.path.exists(os.path.join(folder, ".complete")):
        return inputs
    shutil.rmtree(folder, ignore_errors=True)
    rows = pq.read_table(manifest).to_pylist()
    for kind, mode in (("tar", "w"), ("tar.gz", "w:gz")):
        os.makedirs(os.path.dirname(inputs[kind]))
        with tarfile.open(inputs[kind], mode) as tar:
            for i, row in enumerate(rows):
                with open(row["url"], "rb") as f:
                    image = f.read()
                for name, data in ((f"{i:06d}.jpg", image), (f"{i:06d}.txt", row["caption"].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    open(os.path.join(folder, ".complete"), "w").close()
    return inputs


class Measure(beam.DoFn):
    """Adds each element's encoded size to the distribution named after its boundary, and passes it on."""

    def __init__(self, boundary: str, coder: Any):
        self.boundary, self.coder = boundary, coder

    def setup(self) -> None:
        self.size = beam.metrics.Metrics.distribution(NAMESPACE, self.boundary)

    def process(self, element: Any) -> Iterator[Any]:
        self.size.update(len(self.coder.encode(element)))
        yield element


class MeasuredPipeline(beam.Pipeline):
    """A pipeline in which the output of each transform of ``BOUNDARIES`` goes through :class:`Measure` first.

    Inline, not a side branch: the stages change records in place, and a branch could see a record
    after the next stage already had.
    """

    def apply(self, transform: Any, pvalueish: Any = None, label: Optional[str] = None) -> Any:
        out = super().apply(transform, pvalueish, label)
        producer = getattr(getattr(out, "producer", None), "full_label", None)
        if isinstance(out, beam.PCollection) and producer in ROW_OF:
            coder = beam.coders.registry.get_coder(out.element_type)  # what Beam encodes this PCollection with
            measure = beam.ParDo(Measure(ROW_OF[producer], coder)).with_output_types(out.element_type)
            return out | f"Measure {ROW_OF[producer]}" >> measure
        return out


def measure(input_uri: str, distributed: bool, spill: bool) -> dict[str, float]:
    """Mean encoded bytes per record at each boundary of one run of the whole pipeline."""
    from apache_beam.metrics.metric import MetricsFilter

    from pipeline.local_runner import LocalRunner
    from pipeline.progress_view import expected_samples
    import dataclasses

    from core.run_config import LaunchPlan
    from pipeline.cache_policy import model_cache_root
    from pipeline.config import parse_config
    from pipeline.resume import decide_num_shards
    from transforms.graph import build_pipeline
    from inputs.units import list_units
    from core.spill import SpillDir

    output = fresh_dir("shuffle")
    spill_base = fresh_dir("shuffle_spill")
    try:
        # measured on the local runner, shaped as a distributed runner's graph when ``distributed``
        config = dataclasses.replace(parse_config(pipeline_argv(input_uri, output, extra=("--progress-every-s", "0"))),
                                     local_runner=not distributed)
        launch = LaunchPlan(decide_num_shards(config, expected_samples(list_units(config.input))), frozenset(),
                            model_cache_root(config))
        with SpillDir(spill_base if spill else "none", local_runner=not distributed, output=output) as spill_dir:
            p = MeasuredPipeline(runner=LocalRunner())
            build_pipeline(p, config, launch, spill_dir.root)
            result = p.run()
            result.wait_until_finish()
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["distributions"]
        return {r.key.metric.name: r.committed.sum / r.committed.count for r in found if r.committed.count}
    finally:
        shutil.rmtree(output, ignore_errors=True)
        shutil.rmtree(spill_base, ignore_errors=True)


def _bytes(v: Optional[float]) -> str:
    return "-" if v is None else f"{round(v):,}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bench_args("Serialized bytes per record at each stage boundary, image bytes riding vs re-read", 200, argv)
    logging.disable(logging.WARNING)
    inputs = make_inputs(args.n)
    sizes = {column: measure(inputs[kind], distributed, spill) for column, kind, distributed, spill in RUNS}
    rows = [[row, *(_bytes(sizes[column].get(row)) for column, *_ in RUNS)] for row, _ in BOUNDARIES]
    lines = markdown_table(["boundary (mean bytes per record)", *(c for c, *_ in RUNS)], rows)
    ratios = {}  # input -> (its largest shuffled boundary before, before / after there)
    for kind in ("folder", "tar"):
        before, after = sizes[f"{kind}, before"], sizes[f"{kind}, after"]
        largest = max((row for row, _ in BOUNDARIES[1:] if row in before), key=lambda row: before[row])
        ratios[kind] = (largest, before[largest] / after[largest])
    group = BOUNDARIES[-1][0]
    lines += ["", f"At {RECORDS_AT_SCALE:,} records the group by shard moves "
                  + "; ".join(f"{c}: {sizes[c][group] * RECORDS_AT_SCALE / 1e9:,.1f} GB" for c, *_ in RUNS) + "."]
    lines += ["before / after at the largest boundary: "
              + "; ".join(f"{kind} {r:.2f} ({row})" for kind, (row, r) in ratios.items())]
    ratio_line = f"shuffle_bytes: ratio={min(r for _, r in ratios.values()):.2f}"
    setup = (f"n={args.n} local 640x480 noisy JPEGs as a parquet manifest of paths (folder), one uncompressed tar and "
             "one .tar.gz; whole pipeline, stub engines, dedup on, in-process FnApiRunner; sizes from Beam's coder "
             "of each PCollection (FastPrimitivesCoder; a TupleCoder of it and the shard id at the group by shard). "
             "before = image bytes in every record (no SpillImages: the old distributed chain); after = the chain "
             "for distributed runners (re-readable records drop their bytes; .tar.gz without and with --spill-dir). "
             "ratio = before / after at the largest boundary, the smaller of folder and tar")
    return publish(args, "Bytes per record at stage boundaries", "bench/shuffle_bytes.py", setup, lines, ratio_line)


if __name__ == "__main__":
    sys.exit(main())
