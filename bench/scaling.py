"""Scaling: wall time and peak memory of whole pipeline runs as the input grows.

Each size runs the whole pipeline (stub engines, FnApiRunner) in a fresh process; peak RSS is
that process tree's, polled from /proc (the kernel's ru_maxrss of the child is shown beside it).
Goals: time grows linearly in N (every run within 10% of the least-squares line) and peak
memory stays flat (largest <= 1.2x smallest: the pipeline streams, it never holds the dataset).
Ends with ``scaling: ratio=X.XX`` = peak RSS of the largest run / peak RSS of the smallest.

``--portable`` runs every size on Beam's PortableRunner against a worker pool started beside it
(``bench.common.worker_pool``): the launcher's tree then holds the job server (the runner, with its
buffers), and the SDK worker the pool starts is what a Flink or Dataflow Runner v2 worker runs. Its
peak RSS gets its own column, and the ratio is then the SDK worker's.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (bench_args, fresh_dir, make_input, markdown_table, publish,  # noqa: E402
                          run_pipeline_child, worker_pool)

MEMORY_GOAL = 1.2
LINEAR_GOAL = 0.10  # largest distance of a run's time from the least-squares line, as a share of that time
SAMPLES_PER_SHARD = 1000


def sizes_for(n: int) -> list[int]:
    """``--n`` is the largest size; the others halve it (4000 -> 500, 1000, 2000, 4000)."""
    return sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2), n})


def _one_run(manifest: str, out: str, extra: Sequence[str], portable: bool) -> tuple[Any, dict[str, Any]]:
    if not portable:
        return run_pipeline_child(manifest, out, SAMPLES_PER_SHARD, extra)
    with worker_pool() as (address, pid):  # a fresh pool per size: each worker's peak is its own run's
        flags = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                 f"--environment_config={address}", *extra]
        return run_pipeline_child(manifest, out, SAMPLES_PER_SHARD, flags, watch=[pid])


def measure(sizes: Sequence[int], seed: int = 0, extra: Sequence[str] = (),
            portable: bool = False) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        manifest = make_input(n, seed)
        out = fresh_dir(f"scaling_{n}")
        try:
            run, result = _one_run(manifest, out, extra, portable)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append({"n": n, "run_s": result["run_s"], "wall_s": run.wall_s, "peak_mib": run.peak_tree_rss_mib,
                     "maxrss_mib": run.maxrss_mib, "worker_mib": run.peak_watched_rss_mib,
                     "written": result["written"], "reconciled": result["reconciled"]})
    return rows


def marginal_per_1000(rows: list[dict[str, Any]]) -> list[Optional[float]]:
    """Seconds per 1,000 extra samples between consecutive sizes (None for the first)."""
    out: list[Optional[float]] = [None]
    for a, b in zip(rows, rows[1:]):
        out.append((b["run_s"] - a["run_s"]) / (b["n"] - a["n"]) * 1000 if b["n"] > a["n"] else None)
    return out


def linear_fit(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    """``(seconds at N=0, seconds per 1,000 samples, worst relative residual)`` of run_s = a + b * N."""
    xs, ys = [r["n"] for r in rows], [r["run_s"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    a = my - b * mx
    worst = max(abs(a + b * x - y) / y for x, y in zip(xs, ys))
    return a, b * 1000, worst


def main(argv: Optional[Sequence[str]] = None) -> int:
    def options(p: Any) -> None:
        p.add_argument("--pipeline-args", default="",
                       help="extra pipeline flags, e.g. '--spill-dir none' (the run before spilling)")
        p.add_argument("--portable", action="store_true",
                       help="run on PortableRunner + a worker pool; the ratio is then the SDK worker's peak RSS")

    args = bench_args(__doc__.splitlines()[0], 4000, argv, extra=options)
    extra = shlex.split(args.pipeline_args)
    rows = measure(sizes_for(args.n), args.seed, extra, args.portable)
    marginal = marginal_per_1000(rows)
    mem = "worker_mib" if args.portable else "peak_mib"
    table = [[r["n"], r["run_s"], r["n"] / r["run_s"], "" if m is None else m, r["wall_s"], r["peak_mib"],
              r["maxrss_mib"], *([r["worker_mib"]] if args.portable else []), r[mem] / rows[0][mem], r["written"]]
             for r, m in zip(rows, marginal)]
    lines = markdown_table(["N", "run s", "samples/s", "marginal s / 1000", "process wall s",
                            "peak tree RSS MiB" + (" (launcher + job server)" if args.portable else ""),
                            "child ru_maxrss MiB", *(["SDK worker pool peak RSS MiB"] if args.portable else []),
                            "RSS / smallest", "written"], table)
    mem_ratio = rows[-1][mem] / rows[0][mem]
    fixed_s, per_1000_s, worst = linear_fit(rows)
    lines.append("")
    lines.append(f"peak RSS largest / smallest: {mem_ratio:.2f} (goal <= {MEMORY_GOAL}: "
                 f"{'met' if mem_ratio <= MEMORY_GOAL else 'MISSED'}); time = {fixed_s:.1f} s + {per_1000_s:.2f} s per 1,000 "
                 f"samples, worst run {worst:.0%} off that line (linear if <= {LINEAR_GOAL:.0%}: "
                 f"{'met' if worst <= LINEAR_GOAL else 'MISSED'}); "
                 f"RSS growth per 1,000 samples: "
                 f"{(rows[-1][mem] - rows[0][mem]) / max(1, rows[-1]['n'] - rows[0]['n']) * 1000:.0f} MiB")
    ratio_line = f"scaling: ratio={mem_ratio:.2f}"
    runner = ("PortableRunner (embedded job server) + a worker pool process, ratio = the SDK worker pool's peak RSS"
              if args.portable else "FnApiRunner, ratio = the process tree's peak RSS")
    setup = (f"sizes {[r['n'] for r in rows]} synthetic scenes (seed {args.seed}), stub engines, {runner}, "
             f"largest/smallest; samples_per_shard={SAMPLES_PER_SHARD}, flags {extra or 'default'}; each run a fresh process")
    return publish(args, "Pipeline scaling", "bench/scaling.py", setup, lines, ratio_line)


if __name__ == "__main__":
    sys.exit(main())
