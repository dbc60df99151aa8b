"""Workers: the same whole pipeline run with 1 and 2 DirectRunner worker processes.

``--direct_running_mode=multi_processing --direct_num_workers=1|2`` on the local FnApiRunner
(stub engines, same synthetic input); the default in-process run is shown beside them. Ends with
``workers: ratio=X.XX`` = run time with 1 worker / run time with 2 workers (the speed-up; the
ceiling is the number of cores).

The default size is 8,000 samples: each run pays ~4 s that a second worker cannot share (worker
start, spaCy load, the runner's first stages), which at 2,000 samples is a third of the run and
caps the whole-run speed-up near 1.4x while the per-sample rate scales ~1.8x. Every mode runs in
one pass (``--wave-samples 0``): local runs in waves are measured by bench/scaling.py.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (bench_args, fresh_dir, make_input, markdown_table, publish,  # noqa: E402
                          run_pipeline_child)

SAMPLES_PER_SHARD = 250  # several shards, so the final write stage has work to split too
MODES: dict[str, list[str]] = {
    "multi_processing, 1 worker": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
    "multi_processing, 2 workers": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "in-process (default)": [],
}


def measure(n: int, seed: int = 0, repeats: int = 3, rows_per_unit: int = 200) -> list[dict[str, Any]]:
    """Each mode ``repeats`` times, interleaved (1, 2, in-process, 1, 2, ...); the median run of each."""
    manifest = make_input(n, seed)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in MODES}
    for _ in range(repeats):
        for name, flags in MODES.items():
            out = fresh_dir("workers")
            try:
                # one pass in every mode: this measures workers, not waves (pipeline/waves.py, bench/scaling.py)
                run, result = run_pipeline_child(manifest, out, SAMPLES_PER_SHARD,
                                                 [*flags, "--rows-per-read-unit", str(rows_per_unit),
                                                  "--wave-samples", "0"])
            finally:
                shutil.rmtree(out, ignore_errors=True)
            runs[name].append({"mode": name, "run_s": result["run_s"], "wall_s": run.wall_s,
                               "peak_mib": run.peak_tree_rss_mib, "written": result["written"]})
    rows = []
    for name, rs in runs.items():
        median = sorted(rs, key=lambda r: r["run_s"])[(len(rs) - 1) // 2]
        rows.append({**median, "all_s": [round(r["run_s"], 1) for r in rs],
                     "spread": statistics.pstdev([r["run_s"] for r in rs]) if len(rs) > 1 else 0.0})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bench_args(__doc__.splitlines()[0], 8000, argv,
                      lambda p: (p.add_argument("--repeats", type=int, default=3, help="runs per mode (median shown)"),
                                 p.add_argument("--rows-per-read-unit", type=int, default=200,
                                                help="the one manifest is read in parts of this many rows")))
    rows = measure(args.n, args.seed, args.repeats, args.rows_per_read_unit)
    by = {r["mode"]: r for r in rows}
    one, two = by["multi_processing, 1 worker"], by["multi_processing, 2 workers"]
    speedup = one["run_s"] / two["run_s"]
    lines = markdown_table(["mode", "run s (median)", "all runs s", "samples/s", "process wall s",
                            "peak tree RSS MiB", "written"],
                           [[r["mode"], r["run_s"], " ".join(map(str, r["all_s"])), args.n / r["run_s"], r["wall_s"],
                             r["peak_mib"], r["written"]] for r in rows])
    lines.append("")
    lines.append(f"speed-up 2 workers vs 1: {speedup:.2f}x on {os.cpu_count()} cores")
    ratio_line = f"workers: ratio={speedup:.2f}"
    setup = (f"n={args.n} synthetic scenes (seed {args.seed}) in one jsonl manifest read in parts of "
             f"{args.rows_per_read_unit} rows, stub engines, FnApiRunner, "
             f"samples_per_shard={SAMPLES_PER_SHARD}; {args.repeats} fresh-process runs per mode, median shown; ratio = 1-worker / 2-worker time")
    return publish(args, "Pipeline workers", "bench/workers.py", setup, lines, ratio_line)


if __name__ == "__main__":
    sys.exit(main())
