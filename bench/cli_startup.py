"""CLI start-up: how long `finehard ... --help`, an argument error and a no-op re-run take.

Every case is a fresh `python -m pipeline ...` process, timed from start to exit (median of
``--repeat`` runs). Goals (issue #25): every ``--help`` and every argument error in <= 1 s (no
Beam, torch or transformers imported before the arguments are valid), and a re-run over a
finished output in <= 5 s (no engine loaded, no hashing pass). The baselines, measured in the
same run: a bare interpreter (``python -c pass``) and the imports the light paths avoid
(``import apache_beam``, ``import torch``).

Ends with ``cli_startup: ratio=X.XX`` = the slowest help/argument-error case / the bare
interpreter (1.00 would be free; the issue measured 4-7 s for `finehard --help` and 19-58 s for
`finehard train --help`).
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import bench_args, fresh_dir, make_input, markdown_table, publish, run_child  # noqa: E402

HELP_GOAL_S = 1.0
NOOP_GOAL_S = 5.0


def cases(manifest: str, out: str) -> list[tuple[str, list[str], int]]:
    """(name, finehard arguments, expected exit code) of the light paths."""
    shards = ["shards", "--input", manifest, "--output", out]
    return [
        ("finehard --help", ["--help"], 0),
        ("finehard --version", ["--version"], 0),
        ("finehard shards --help", ["shards", "--help"], 0),
        ("shards: misspelt flag", [*shards, "--samples-per-shrd", "3"], 2),
        ("shards: misspelt Beam flag", [*shards, "--direct_num_worker", "2"], 2),
        ("shards: --output missing", ["shards", "--input", manifest], 2),
        ("shards: --stages wrong", [*shards, "--stages", "recaptoin"], 2),
        ("shards: --batch-size 0", [*shards, "--batch-size", "0"], 2),
        ("finehard train --help", ["train", "--help"], 0),
        ("train: --model missing", ["train", "--stage", "1", "--shards", out, "--output", out], 2),
        ("train: --shards missing files", ["train", "--stage", "1", "--shards", os.path.join(out, "none-*.tar"),
                                           "--output", out, "--model-config", manifest], 2),
        ("finehard eval --help", ["eval", "--help"], 0),
        ("eval: neither --shards nor --fgovd", ["eval", "--model", out], 2),
        ("finehard convert --help", ["convert", "--help"], 0),
        ("finehard expressions --help", ["expressions", "--help"], 0),
        ("finehard negatives --help", ["negatives", "--help"], 0),
        ("negatives: --negatives unknown", ["negatives", "--negatives", "nope"], 2),
    ]


def timed(argv: Sequence[str], repeat: int, expect: Optional[int] = None) -> float:
    """Median wall seconds of ``repeat`` fresh processes running ``argv``."""
    times = []
    for _ in range(repeat):
        run = run_child(list(argv), interval=0.02)
        if expect is not None and run.returncode != expect:
            raise RuntimeError(f"{argv[3:]} exited {run.returncode}, expected {expect}: {run.stderr[-1500:]}")
        times.append(run.wall_s)
    return statistics.median(times)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bench_args("CLI start-up: --help, argument errors and a no-op re-run, each a fresh process.", 60, argv,
                      extra=lambda p: p.add_argument("--repeat", type=int, default=3, help="runs per case (median)"))
    py = sys.executable
    manifest = make_input(args.n, args.seed)
    work = fresh_dir("cli_startup")
    out = os.path.join(work, "out")
    os.makedirs(out)
    try:
        bare = timed([py, "-c", "pass"], args.repeat)
        beam = timed([py, "-c", "import apache_beam"], args.repeat)
        torch = timed([py, "-c", "import torch"], args.repeat)
        chain = timed([py, "-c", "import pipeline.run"], args.repeat)
        rows = [["python -c pass (baseline)", bare, "", ""], ["python -c 'import apache_beam'", beam, "", ""],
                ["python -c 'import torch'", torch, "", ""],
                ["python -c 'import pipeline.run' (what a no-op re-run imports)", chain, "", ""]]
        light = []
        for name, cli_args, code in cases(manifest, out):
            t = timed([py, "-m", "pipeline", *cli_args], args.repeat, expect=code)
            light.append(t)
            rows.append([name, t, code, "yes" if t <= HELP_GOAL_S else "NO"])
        run_out = os.path.join(work, "run")
        first = run_child([py, "-m", "pipeline", "shards", "--input", manifest, "--output", run_out,
                           "--samples-per-shard", "20", "--wave-samples", "30"])
        if first.returncode != 0:
            raise RuntimeError(f"first run failed: {first.stderr[-2000:]}")
        noop = timed([py, "-m", "pipeline", "shards", "--input", manifest, "--output", run_out,
                      "--samples-per-shard", "20", "--wave-samples", "30"], args.repeat, expect=0)
        rows.append([f"first run, {args.n} scenes in waves (stub engines)", first.wall_s, 0, ""])
        rows.append(["re-run over that finished output (no-op)", noop, 0, "yes" if noop <= NOOP_GOAL_S else "NO"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    worst = max(light)
    lines = markdown_table(["case (fresh process)", "median s", "exit", "within goal"], rows)
    lines += ["", f"Slowest help/argument error: {worst:.2f} s (goal <= {HELP_GOAL_S:.0f} s); no-op re-run "
                  f"{noop:.2f} s (goal <= {NOOP_GOAL_S:.0f} s), {first.wall_s / noop:.1f}x faster than the first run."]
    return publish(args, "CLI start-up and no-op re-run", "bench/cli_startup.py",
                   f"median of {args.repeat} fresh processes per case; input: {args.n} synthetic scenes",
                   lines, f"cli_startup: ratio={worst / bare:.2f}")


if __name__ == "__main__":
    sys.exit(main())
