"""Shared bits of the training benchmarks (bench/*.py): machine line and the docs/benchmarks.md appender."""
from __future__ import annotations

import datetime
import os
import platform

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DOC = os.path.join(ROOT, "docs", "benchmarks.md")


def machine() -> str:
    """One line describing this machine."""
    return (f"{platform.node() or 'host'} {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def append_benchmark(title: str, lines: list[str]) -> None:
    """Append a dated section to docs/benchmarks.md (created when absent; never rewritten)."""
    os.makedirs(os.path.dirname(BENCH_DOC), exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(BENCH_DOC, "a", encoding="utf-8") as f:
        f.write(f"\n## {title} — {now}\n\nMachine: {machine()}\n\n" + "\n".join(lines) + "\n")
