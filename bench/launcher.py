"""Launcher memory: peak RSS and time of what ``finehard shards`` does before the pipeline runs, as the input grows.

Each case is a fresh process that does the launcher's input-dependent work with the real code:
parse the flags, ``pipeline.input_plan.plan_input`` (list the input once, as a stream: parquet footers
checked, input fingerprint, expected size counted), the shard count, and the Beam graph built (not
run). A baseline process imports the same modules and does nothing else. Inputs, N each:

* ``folder``: N empty ``.jpg`` files in subfolders of 1000 (img2dataset's ``00000/`` layout);
* ``flat folder``: the same N files in one folder;
* ``jsonl``: a manifest of N rows; ``parquet``: a manifest of N rows in 10 row groups.

The figure is the child's own peak RSS (``VmHWM`` of /proc/self/status, read as it ends): the
``ru_maxrss`` that ``wait4`` reports for an exec'd child also holds the peak RSS of the parent it
was started from (vfork/exec keeps the larger of the two), and this parent writes the manifests.
Ends with ``launcher: ratio=X.XX`` = peak RSS at the largest N / at the smallest N, the worse of
the two manifests (goal <= 1.2: the launcher never holds a manifest); the folders' growth is
reported as MiB per million files.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import bench_args, markdown_table, publish, python_child, run_child  # noqa: E402

MEMORY_GOAL = 1.2
FILES_PER_FOLDER = 1000
ROW_GROUPS = 10
CASES = ("folder", "flat", "jsonl", "parquet")
CASE_NAMES = {"folder": "folder (subfolders of 1000)", "flat": "flat folder", "jsonl": "jsonl manifest",
              "parquet": "parquet manifest"}

# What run() does with the input before p.run(), in its order; ``[]`` as argv: imports only.
CHILD = """
import json, re, sys, time
t0 = time.perf_counter()
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from core.run_config import LaunchPlan
from pipeline.cache_policy import model_cache_root
from pipeline.config import parse_config
from pipeline.input_plan import plan_input
from pipeline.resume import decide_num_shards
from pipeline.runners import make_runner
from transforms.graph import build_pipeline
from bench.common import child_report
t1 = time.perf_counter()


def peak_rss_mib():  # this process's own high-water mark since exec
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) / 1024


result = {"import_s": t1 - t0, "import_peak_mib": peak_rss_mib()}
argv = json.loads(sys.argv[1])
if argv:
    config = parse_config(argv)
    plan = plan_input(config.input)
    t2 = time.perf_counter()
    launch = LaunchPlan(decide_num_shards(config, plan.size), frozenset(), model_cache_root(config))
    options = PipelineOptions(list(config.beam_args))
    build_pipeline(beam.Pipeline(runner=make_runner(config), options=options), config, launch)
    t3 = time.perf_counter()
    result.update(plan_s=t2 - t1, graph_s=t3 - t2, listed=plan.fingerprint["listed_uris"], size=plan.size,
                  num_shards=launch.num_shards)
child_report({**result, "peak_mib": peak_rss_mib()})
"""


def sizes_for(n: int) -> list[int]:
    """``--n`` is the largest size; the others are a tenth and a hundredth of it (1M -> 10k, 100k, 1M)."""
    return sorted({max(1, n // 100), max(1, n // 10), n})


def _done(path: str) -> bool:
    return os.path.exists(path + ".complete")


def _mark(path: str) -> str:
    open(path + ".complete", "w").close()
    return path


def make_folder(root: str, n: int, nested: bool) -> str:
    """N empty image files, in subfolders of 1000 (``00000/000000000.jpg``) or all in one folder."""
    path = os.path.join(root, f"{'folder' if nested else 'flat'}_{n}")
    if _done(path):
        return path
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    folder = path
    for i in range(n):
        if nested and i % FILES_PER_FOLDER == 0:
            folder = os.path.join(path, f"{i // FILES_PER_FOLDER:05d}")
            os.mkdir(folder)
        os.close(os.open(os.path.join(folder, f"{i:09d}.jpg"), flags, 0o644))
    return _mark(path)


def _row(i: int) -> dict[str, str]:
    return {"url": f"images/{i:09d}.jpg", "caption": f"a photo of thing number {i}"}


def make_jsonl(root: str, n: int) -> str:
    path = os.path.join(root, f"manifest_{n}.jsonl")
    if not _done(path):
        with open(path, "w", encoding="utf-8") as f:
            for start in range(0, n, 10_000):
                f.write("".join(json.dumps(_row(i)) + "\n" for i in range(start, min(n, start + 10_000))))
        _mark(path)
    return path


def make_parquet(root: str, n: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(root, f"manifest_{n}.parquet")
    if not _done(path):
        group = -(-n // ROW_GROUPS)
        with pq.ParquetWriter(path, pa.schema([("url", pa.string()), ("caption", pa.string())])) as writer:
            for start in range(0, n, group):
                rows = [_row(i) for i in range(start, min(n, start + group))]
                writer.write_table(pa.Table.from_pylist(rows), row_group_size=group)
        _mark(path)
    return path


def make_case(case: str, root: str, n: int) -> str:
    if case in ("folder", "flat"):
        return make_folder(root, n, nested=case == "folder")
    return make_jsonl(root, n) if case == "jsonl" else make_parquet(root, n)


def measure(input_path: Optional[str], output: str) -> dict[str, Any]:
    """One fresh launcher process (``input_path`` None: the baseline, imports only)."""
    argv = [] if input_path is None else ["--input", input_path, "--output", output, "--captioner", "stub",
                                          "--detector", "stub", "--negatives", "stub"]
    run = run_child(python_child(CHILD, json.dumps(argv)))
    if run.returncode != 0:
        raise RuntimeError(f"launcher child failed (rc={run.returncode}):\n{run.stderr[-3000:]}")
    return {**run.result(), "wall_s": run.wall_s}


def per_million(rows: list[dict[str, Any]]) -> Optional[float]:
    """MiB of peak RSS per million more inputs, smallest to largest size (None with one size)."""
    if len(rows) < 2 or rows[-1]["n"] == rows[0]["n"]:
        return None
    return (rows[-1]["peak_mib"] - rows[0]["peak_mib"]) / (rows[-1]["n"] - rows[0]["n"]) * 1e6


def main(argv: Optional[Sequence[str]] = None) -> int:
    def extra(p: Any) -> None:
        p.add_argument("--sizes", default="", help="comma list of input sizes (default: --n/100, --n/10, --n)")
        p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
        p.add_argument("--inputs", default="", help="folder to make the inputs in and keep (reused when there: "
                                                    "a million files take a while); default a temporary one")

    args = bench_args(__doc__.splitlines()[0], 1_000_000, argv, extra=extra)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()}) if args.sizes else sizes_for(args.n)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    inputs = args.inputs or tempfile.mkdtemp(prefix="finehard_bench_launcher_")
    os.makedirs(inputs, exist_ok=True)
    output = tempfile.mkdtemp(prefix="finehard_bench_launcher_out_")
    try:
        baseline = measure(None, output)
        results: dict[str, list[dict[str, Any]]] = {}
        for case in cases:
            for n in sizes:
                path = make_case(case, inputs, n)
                row = {"n": n, **measure(path, output)}
                assert row["listed"] == (1 if case in ("jsonl", "parquet") else n) and row["size"] == n, row
                results.setdefault(case, []).append(row)
                print(f"launcher: {case} n={n}: {row['peak_mib']:.0f} MiB, {row['plan_s']:.2f} s", file=sys.stderr)
    finally:
        shutil.rmtree(output, ignore_errors=True)
        if not args.inputs:
            shutil.rmtree(inputs, ignore_errors=True)
    base = baseline["peak_mib"]
    table = [["baseline (same imports, no input)", "", base, 0.0, "", "", "", ""]]
    for case, rows in results.items():
        for r in rows:
            table.append([CASE_NAMES[case], r["n"], r["peak_mib"], r["peak_mib"] - base,
                          r["peak_mib"] / rows[0]["peak_mib"], r["plan_s"], r["graph_s"], r["num_shards"]])
    lines = markdown_table(["input", "N", "peak RSS MiB", "over baseline MiB", "RSS / smallest N",
                            "plan_input s", "graph s", "shards"], table)
    manifest_ratios = {c: rows[-1]["peak_mib"] / rows[0]["peak_mib"]
                       for c, rows in results.items() if c in ("jsonl", "parquet")}
    ratio = max(manifest_ratios.values()) if manifest_ratios else float("nan")
    lines.append("")
    if manifest_ratios:
        lines.append("manifests, peak RSS largest / smallest N: " + ", ".join(
            f"{c} {v:.2f}" for c, v in manifest_ratios.items())
            + f" (goal <= {MEMORY_GOAL}: {'met' if ratio <= MEMORY_GOAL else 'MISSED'})")
    for case in ("folder", "flat"):
        growth = per_million(results.get(case, []))
        if growth is not None:
            lines.append(f"{CASE_NAMES[case]}: {growth:.0f} MiB of peak RSS per million files "
                         f"({growth * 2**20 / 1e6:.0f} bytes per file)")
    ratio_line = f"launcher: ratio={ratio:.2f}"
    setup = (f"sizes {sizes}, cases {cases}; each a fresh process running plan_input + shard count + graph "
             f"build (stub engines, FnApiRunner); peak RSS = the child's VmHWM; ratio = the worse manifest's "
             f"peak RSS at the largest / smallest N")
    return publish(args, "Launcher memory", "bench/launcher.py", setup, lines, ratio_line)


if __name__ == "__main__":
    sys.exit(main())
