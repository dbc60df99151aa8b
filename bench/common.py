"""Helpers the pipeline benchmarks share: machine line, synthetic input, child runs with peak RSS, docs.

Run alone (``python bench/common.py``) it only prints the machine description: ``make bench``
runs every ``bench/*.py``, this one included.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BENCH_DOC = os.path.join(ROOT, "docs", "benchmarks.md")
INPUT_CACHE = os.path.join(tempfile.gettempdir(), "finehard_bench_inputs")
# Environment of every child run: offline, one BLAS/torch thread, no hub.
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def machine(*extras: str) -> str:
    """One line naming the machine and the versions that matter for these figures (``extras`` appended)."""
    import apache_beam

    return ", ".join([f"{platform.node() or 'host'} {platform.machine()}", f"{os.cpu_count()} cpus ({_cpu_model()})",
                      f"{_mem_total_gib():.0f} GiB RAM", f"python {platform.python_version()}",
                      f"apache-beam {apache_beam.__version__}", *extras])


def make_input(n: int, seed: int = 0, cache: str = INPUT_CACHE) -> str:
    """Manifest of ``n`` synthetic scenes (``core.synthetic.write_scenes``), cached per (n, seed)."""
    from core.synthetic import write_scenes

    folder = os.path.join(cache, f"scenes_n{n}_s{seed}")
    manifest = os.path.join(folder, "manifest.jsonl")
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return manifest
    shutil.rmtree(folder, ignore_errors=True)
    write_scenes(folder, n, seed)
    open(done, "w").close()
    return manifest


def fresh_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=f"finehard_bench_{prefix}_")


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, from /proc (0 when it is gone)."""
    total, stack, seen = 0, [pid], set()
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm", encoding="ascii") as f:
                total += int(f.read().split()[1]) * page
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


@dataclass
class ChildRun:
    """What one child process cost: wall seconds, peak RSS of its process tree, its own max RSS."""

    returncode: int
    wall_s: float
    peak_tree_rss_mib: float  # sampled every ``interval`` s over the whole process tree
    maxrss_mib: float  # kernel's ru_maxrss of the child (largest single process it waited for)
    stdout: str
    stderr: str
    peak_watched_rss_mib: float = 0.0  # the same, over the trees of ``run_child(watch=...)`` (a worker pool)

    def result(self) -> dict[str, Any]:
        """The JSON object the child printed as its last stdout line (see :func:`child_report`)."""
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"child printed no result (rc={self.returncode}): {self.stderr[-2000:]}")


def run_child(argv: Sequence[str], interval: float = 0.05, env: Optional[dict[str, str]] = None,
              timeout: float = 1800, watch: Sequence[int] = ()) -> ChildRun:
    """Run ``argv`` as a fresh process; time it and poll the peak RSS of its process tree.

    ``watch``: pids of other processes (a worker pool the child's job runs on) whose trees' peak
    RSS, summed, is polled beside it (``peak_watched_rss_mib``).
    """
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    child_env = {**os.environ, **CHILD_ENV, "PYTHONPATH": path, **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(argv), cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, s=s: out.__setitem__(k, s.read()), daemon=True)
               for k, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    peak, watched, maxrss, status = 0, 0, 0.0, None
    while status is None:
        pid, raw, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:  # reaped here (not by Popen) so the kernel's rusage of the child is ours to read
            status, maxrss = os.waitstatus_to_exitcode(raw), usage.ru_maxrss / 1024
            break
        peak = max(peak, _tree_rss_bytes(proc.pid))
        watched = max(watched, sum(_tree_rss_bytes(w) for w in watch))
        if time.perf_counter() - t0 > timeout:
            proc.kill()
        time.sleep(interval)
    wall = time.perf_counter() - t0
    proc.returncode = status
    for r in readers:
        r.join()
    return ChildRun(status, wall, peak / 2**20, maxrss, out.get("stdout", ""), out.get("stderr", ""),
                    watched / 2**20)


@contextmanager
def worker_pool(timeout: float = 60) -> Iterator[tuple[str, int]]:
    """Beam's SDK worker pool as a separate process on 127.0.0.1: ``(address, pid)``.

    Jobs submitted with ``--runner=PortableRunner --job_endpoint=embed --environment_type=EXTERNAL
    --environment_config=ADDRESS`` run their DoFns in a worker the pool starts: the SDK-harness
    process Flink and Dataflow Runner v2 workers run, fed bundles over gRPC by the job server.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": path,  # the pool starts workers as `python -c ...`
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             f"--service_port={port}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Beam worker pool did not start (rc={proc.poll()})")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def python_child(code: str, *args: str) -> list[str]:
    """argv running ``code`` in this interpreter (``code`` ends with :func:`child_report`)."""
    return [sys.executable, "-c", code, *args]


def child_report(result: dict[str, Any]) -> None:
    """Print ``result`` plus this process's ru_maxrss as the last stdout line (read by ChildRun.result)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({**result, "self_maxrss_mib": round(own, 1), "children_maxrss_mib": round(kids, 1)}), flush=True)


def pipeline_argv(manifest: str, output: str, samples_per_shard: int = 1000, extra: Sequence[str] = ()) -> list[str]:
    """Flags of ``pipeline.run.run`` (through ``pipeline.config.parse_config``) for a stub-engine local run."""
    return ["--input", manifest, "--output", output, "--samples-per-shard", str(samples_per_shard),
            "--captioner", "stub", "--detector", "stub", "--negatives", "stub", *extra]


# A child that runs the whole pipeline once and reports its in-process time and summary.
PIPELINE_CHILD = """
import json, sys, time, logging
logging.disable(logging.WARNING)
t0 = time.perf_counter()
from pipeline.config import parse_config
from pipeline.run import run
t1 = time.perf_counter()
summary = run(parse_config(json.loads(sys.argv[1])))
t2 = time.perf_counter()
from bench.common import child_report
child_report({"import_s": t1 - t0, "run_s": t2 - t1, "read": summary["read"], "written": summary["written"],
              "dead_lettered": summary["dead_lettered"], "filtered": summary["filtered"],
              "reconciled": summary["reconciled"]})
"""


def run_pipeline_child(manifest: str, output: str, samples_per_shard: int = 1000,
                       extra: Sequence[str] = (), watch: Sequence[int] = ()) -> tuple[ChildRun, dict[str, Any]]:
    """The whole pipeline in a fresh process: its cost and its result line."""
    run = run_child(python_child(PIPELINE_CHILD, json.dumps(pipeline_argv(manifest, output, samples_per_shard,
                                                                             extra))), watch=watch)
    if run.returncode != 0:
        raise RuntimeError(f"pipeline child failed (rc={run.returncode}):\n{run.stderr[-3000:]}")
    return run, run.result()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def spacy_version() -> str:
    import spacy

    return f"spacy {spacy.__version__}"


def torch_version() -> str:
    import torch

    return f"torch {torch.__version__}, {torch.get_num_threads()} torch threads"


HISTORY = "### History (older measurements of this bench, oldest first, as first written)"


def file_section(doc_text: str, title: str, section: str) -> str:
    """``doc_text`` with ``section`` (a dated measurement of the bench named in ``title``) filed as that
    bench's current figure: docs/benchmarks.md keeps one ``## `` section per bench (found by the
    ``(bench/NAME.py)`` in ``title``), its current figure first (``### ``) and older ones in its History
    (``#### ``, oldest first). The figure it replaces moves to the end of the History; a bench without a
    section gets a new one at the end of the file. Nothing is deleted."""
    script = re.search(r"\((bench/[\w.]+?\.py)", title)
    key = f"({script.group(1)})" if script else title
    lines = doc_text.rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("## ") and key in line), None)
    if start is None:
        return "\n".join(lines) + f"\n\n## {title}\n\n###{section}\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = lines[start + 1:end]
    hist = next((i for i, line in enumerate(body) if line == HISTORY), len(body))
    old_current = ["#" + line if line.startswith("### ") else line for line in body[:hist]]
    history = body[hist + 1:] if hist < len(body) else []
    while history and not history[-1].strip():
        history.pop()
    while old_current and not old_current[0].strip():
        old_current.pop(0)
    new_body = ["", "###" + section.rstrip("\n"), "", HISTORY, *history]
    if old_current:
        new_body += ["", *old_current]
    if end < len(lines) and new_body[-1].strip():
        new_body.append("")
    return "\n".join(lines[:start + 1] + new_body + lines[end:]) + "\n"


def append_section(title: str, lines: Sequence[str], extras: Sequence[str] = (), doc: str = BENCH_DOC) -> None:
    """File one dated section (title, machine line, ``lines``) in docs/benchmarks.md as the bench's current
    figure (:func:`file_section`: the one it replaces moves to the bench's History, nothing is deleted)."""
    os.makedirs(os.path.dirname(doc), exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f" {title} — {now}\n\nMachine: {machine(*extras)}\n\n" + "\n".join(lines) + "\n"
    with open(doc, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # other benchmarks write the same file
        f.seek(0)
        text = file_section(f.read(), title, section)
        f.seek(0)
        f.truncate()
        f.write(text)
        fcntl.flock(f, fcntl.LOCK_UN)


def append_benchmark(title: str, script: str, setup: str, lines: Sequence[str], ratio_line: str,
                     doc: str = BENCH_DOC) -> None:
    """A pipeline benchmark's section: setup, table, ratio line (see :func:`append_section`)."""
    append_section(f"{title} ({script})", [f"Setup: {setup}", "", *lines, "", ratio_line], doc=doc)


def publish(args: argparse.Namespace, title: str, script: str, setup: str, lines: Sequence[str],
            ratio_line: str) -> int:
    """Print the table, append it to docs/benchmarks.md unless ``--no-doc``, end with the ratio line; exit 0."""
    print("\n".join(lines))
    if not args.no_doc:
        append_benchmark(title, script, setup, lines, ratio_line)
    print(ratio_line)
    return 0


def bench_args(description: str, default_n: int, argv: Optional[Sequence[str]] = None,
               extra: Optional[Callable[[argparse.ArgumentParser], Any]] = None) -> argparse.Namespace:
    """The flags every pipeline benchmark takes: --n, --seed, --no-doc."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--n", type=int, default=default_n, help="synthetic images in the input")
    p.add_argument("--seed", type=int, default=0, help="synthetic scene family")
    p.add_argument("--no-doc", action="store_true", help="do not append the figures to docs/benchmarks.md")
    if extra:
        extra(p)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    bench_args("Shared benchmark helpers; alone, prints the machine description.", 0, argv)
    print(f"machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
