"""Fresh-clone install time: what `make test` spends before the first test, now and the old way.

Each case clones this checkout (its committed HEAD, or ``--baseline-ref``) into a new folder with
no .venv and no .cache, as CI and a newcomer have it, and times ``make .venv/.installed-test``
there: the venv, the project with its test extras, llama.cpp, the tiny GGUF. The baseline is the
last commit whose Makefile compiled llama-cpp-python (found in git history unless given), measured
in the same run. pip's own download cache (``~/.cache/pip``) is left as it is: say whether it was
warm (the table's ``pip cache`` column: its size before each case).

Ends with ``install_time: ratio=X.XX`` = baseline seconds / current seconds (higher: the current
install is faster); ``--skip-baseline`` measures the current install alone (ratio n/a). Slow: the
current install takes minutes, the baseline's compile 10+ minutes more on 2 cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import bench_args, markdown_table, publish  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = ".venv/.installed-test"
PIP_CACHE = os.path.expanduser("~/.cache/pip")


def git(*args: str, cwd: str = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def baseline_ref() -> str:
    """The parent of the newest commit that removed the llama-cpp-python compile from the Makefile."""
    removed = git("log", "-1", "--format=%H", "-S", "LLAMA_CPP_VERSION", "--", "Makefile")
    if not removed or "LLAMA_CPP_VERSION" in git("show", f"{removed}:Makefile"):
        raise SystemExit("install_time: no commit removes the llama-cpp-python build from the Makefile; "
                         "pass --baseline-ref REF")
    return git("rev-parse", f"{removed}^")


def du_mib(path: str) -> float:
    if not os.path.exists(path):
        return 0.0
    out = subprocess.run(["du", "-sm", path], capture_output=True, text=True).stdout.split()
    return float(out[0]) if out else 0.0


def load() -> str:
    return "{:.1f}".format(os.getloadavg()[0])


def measure(name: str, ref: str, work: str, timeout: float) -> list[object]:
    """Clone ``ref``, time ``make .venv/.installed-test`` in the clone; one table row."""
    clone = os.path.join(work, name.replace(" ", "-"))
    git("clone", "-q", "--no-hardlinks", ROOT, clone)
    git("checkout", "-q", ref, cwd=clone)
    cache_before = du_mib(PIP_CACHE)
    load_before = load()
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "-s", TARGET], cwd=clone, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: make {TARGET} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    row = [name, git("rev-parse", "--short", "HEAD", cwd=clone), round(seconds / 60, 2), round(seconds),
           round(du_mib(os.path.join(clone, ".venv")) / 1024, 2), f"{cache_before:.0f} MiB",
           f"{load_before} -> {load()}"]
    shutil.rmtree(clone, ignore_errors=True)
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    def extra(p):
        p.add_argument("--baseline-ref", default="", help="the old way's commit (default: found in git history)")
        p.add_argument("--skip-baseline", action="store_true", help="measure the current install only")
        p.add_argument("--timeout", type=float, default=5400, help="seconds per install")
        p.add_argument("--work", default="", help="folder for the clones (default: a new temp folder)")
    args = bench_args(__doc__.splitlines()[0], 0, argv, extra)  # --n is accepted and unused
    work = args.work or tempfile.mkdtemp(prefix="finehard-install-")
    rows = [measure("current", git("rev-parse", "HEAD"), work, args.timeout)]
    if not args.skip_baseline:
        rows.append(measure("baseline (compiles llama-cpp-python)", args.baseline_ref or baseline_ref(), work,
                            args.timeout))
    lines = markdown_table(["install", "commit", "minutes", "seconds", ".venv GiB", "pip cache", "load avg"], rows)
    ratio = (f"{rows[1][3] / rows[0][3]:.2f}" if len(rows) > 1 and rows[0][3]
             else "n/a (baseline not measured: --skip-baseline)")
    setup = (f"fresh `git clone` of the checkout, `make {TARGET}` (venv + pip install, nothing else); "
             f"pip's download cache {PIP_CACHE} left as found")
    return publish(args, "Fresh-clone install", "bench/install_time.py", setup, lines, f"install_time: ratio={ratio}")


if __name__ == "__main__":
    sys.exit(main())
