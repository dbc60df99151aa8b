"""A re-run over a finished output has nothing to do: it loads no engine, runs no hashing pass, and
keeps the stage metrics of the run that did the work (`finehard stats` still says what it cost)."""
from __future__ import annotations

import logging
import pathlib

import pytest

from conftest import run_pipeline


@pytest.mark.parametrize("wave_samples", ["0", "6"], ids=["one pass", "in waves with a hashing pass"])
def test_a_rerun_over_a_finished_output_does_no_work_and_keeps_the_first_runs_metrics(
        wave_samples: str, scenes_dir: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "o"
    argv = ("--samples-per-shard", "4", "--wave-samples", wave_samples)
    first = run_pipeline(scenes_dir / "manifest.jsonl", out, *argv)
    assert first["stage_metrics"]["recaption"]["samples"] > 0
    caplog.set_level(logging.INFO)
    caplog.clear()
    again = run_pipeline(scenes_dir / "manifest.jsonl", out, *argv)
    assert again["stage_metrics"] == first["stage_metrics"]
    assert again["wall_seconds"] == first["wall_seconds"]
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if m.startswith("loading ") and " engine " in m], said
    assert not [m for m in said if m.startswith("waves:")], said
    assert any(m.startswith("nothing to do: all 3 shard(s)") for m in said), said
    assert {k: again[k] for k in ("read", "written", "dead_lettered", "filtered", "reconciled")} == \
        {k: first[k] for k in ("read", "written", "dead_lettered", "filtered", "reconciled")}


def test_a_rerun_with_a_shard_left_to_do_still_runs(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    first = run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    (out / "shard-00001_stats.json").unlink()  # as if the run had been killed before that marker
    again = run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    assert again["written"] == first["written"] and again["reconciled"] is True
    assert again["stage_metrics"]["recaption"]["samples"] < first["stage_metrics"]["recaption"]["samples"]
