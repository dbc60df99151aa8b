"""Scale-out: one manifest is read in parts by several workers, and the model stages run on all of them.

Proven on the multi-process runners available here: the FnApiRunner with two worker processes,
and Beam's portable SDK-harness path (PortableRunner, embedded job server, EXTERNAL worker pool
in its own process, traffic on 127.0.0.1 only). Shards must be byte-identical to in-process runs.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, read_shards, run_pipeline, shard_hashes
from inputs.reader import read_unit
from inputs.units import ReadUnit, split_unit

CHILD = """
import json, sys
from core.engines import EngineEntry
from stages.caption import CAPTIONERS
CAPTIONERS.entries["pidlog"] = EngineEntry("pid_engine:build", False, False, "test: logs the worker pid")
from pipeline.config import parse_config
from pipeline.run import run
s = run(parse_config(json.loads(sys.argv[1])))
print(json.dumps({k: s[k] for k in ("read", "written", "reconciled")}))
"""


def run_child(argv: list[str], pid_log: pathlib.Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "FINEHARD_TEST_PID_LOG": str(pid_log)}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_manifest_is_split_into_parts_that_read_every_row_once(scenes_dir: pathlib.Path,
                                                                  tmp_path: pathlib.Path) -> None:
    manifest = scenes_dir / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    odd = tmp_path / "m.jsonl"  # a BOM, blank lines and a bad row, to check the parts' row numbering
    odd.write_bytes(b"\xef\xbb\xbf" + lines[0] + b"\n  \n" + b"".join(lines[1:5]) + b"not json\n"
                    + b"".join(lines[5:]))
    whole = ReadUnit("manifest", str(scenes_dir), (str(odd),))
    parts = list(split_unit(whole, rows_per_unit=4))
    assert len(parts) == 4 and [p.first_row for p in parts] == [0, 4, 8, 12]
    split_keys = [r["key"] for p in parts for r in read_unit(p)]
    assert split_keys == [r["key"] for r in read_unit(whole)] and len(split_keys) == 13

    table = pa.Table.from_pylist([json.loads(line) for line in lines])
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=3)
    rows = [json.loads(line) for line in lines]
    pq.write_table(pa.Table.from_pylist([{**r, "url": str(scenes_dir / r["url"])} for r in rows]),
                   tmp_path / "m.parquet", row_group_size=3)
    whole = ReadUnit("manifest", str(tmp_path), (str(tmp_path / "m.parquet"),))
    parts = list(split_unit(whole, rows_per_unit=5))
    assert [p.span for p in parts] == [(0, 2), (2, 4)] and [p.first_row for p in parts] == [0, 6]
    assert [r["key"] for p in parts for r in read_unit(p)] == [r["key"] for r in read_unit(whole)]
    assert list(split_unit(whole, rows_per_unit=100)) == [whole]  # small manifests stay whole


def test_one_manifest_spreads_over_both_worker_processes(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    common = ["--input", str(scenes_dir / "manifest.jsonl"), "--captioner", "pidlog", "--samples-per-shard", "4",
              "--rows-per-read-unit", "2", "--no-dedup"]
    single = run_child([*common, "--output", str(tmp_path / "one")], tmp_path / "one.log")
    multi = run_child([*common, "--output", str(tmp_path / "two"), "--direct_running_mode=multi_processing",
                       "--direct_num_workers=2"], tmp_path / "two.log")
    assert single == multi == {"read": 12, "written": 12, "reconciled": True}
    calls = [line.split() for line in (tmp_path / "two.log").read_text().splitlines()]
    pids = {pid for pid, _ in calls}
    assert len(pids) == 2, calls  # the captioner ran in both worker processes
    assert sum(int(n) for _, n in calls) == 12
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")


def test_one_big_tar_spreads_over_both_worker_processes(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # A tar is one read unit (one worker reads it); the model stages after it must still run on both.
    run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "made", "--samples-per-shard", "100", "--no-dedup")
    (tar,) = sorted((tmp_path / "made").glob("shard-*.tar"))
    common = ["--input", str(tar), "--captioner", "pidlog", "--samples-per-shard", "4", "--no-dedup",
              "--stages", "recaption", "--batch-size", "2"]
    single = run_child([*common, "--output", str(tmp_path / "one")], tmp_path / "one.log")
    multi = run_child([*common, "--output", str(tmp_path / "two"), "--direct_running_mode=multi_processing",
                       "--direct_num_workers=2"], tmp_path / "two.log")
    assert single == multi == {"read": 12, "written": 12, "reconciled": True}
    calls = [line.split() for line in (tmp_path / "two.log").read_text().splitlines()]
    assert len({pid for pid, _ in calls}) == 2, calls
    assert sum(int(n) for _, n in calls) == 12
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")


@pytest.fixture
def worker_pool() -> Iterator[str]:
    from bench.common import worker_pool as start_worker_pool

    with start_worker_pool() as (address, _):
        yield address


def test_the_portable_sdk_harness_path_writes_the_same_shards(scenes_dir: pathlib.Path, tmp_path: pathlib.Path,
                                                              worker_pool: str) -> None:
    manifest = scenes_dir / "manifest.jsonl"
    reference = run_pipeline(manifest, tmp_path / "ref", "--samples-per-shard", "4")
    done = subprocess.run([sys.executable, "-m", "pipeline", "shards", "--input", str(manifest), "--output",
                           str(tmp_path / "portable"), "--samples-per-shard", "4", "--runner=PortableRunner",
                           "--job_endpoint=embed", "--environment_type=EXTERNAL",
                           f"--environment_config={worker_pool}"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)  # a worker that never comes fails the test instead of hanging it
    assert done.returncode == 0, done.stderr[-3000:]
    portable = json.loads(done.stdout.strip().splitlines()[-1])
    assert portable["reconciled"] is True and portable["written"] == reference["written"] == 12
    assert len(read_shards(tmp_path / "portable")) == 12
    assert shard_hashes(tmp_path / "portable") == shard_hashes(tmp_path / "ref")


def _transform_names(argv: list[str]) -> set[str]:
    import apache_beam as beam

    from core.run_config import LaunchPlan
    from pipeline.config import parse_config
    from transforms.graph import build_pipeline

    config = parse_config(argv)
    p = beam.Pipeline()
    build_pipeline(p, config, LaunchPlan(config.num_shards, frozenset(), None))
    return {t.unique_name for t in p.to_runner_api().components.transforms.values()}


def test_with_the_shard_count_known_up_front_nothing_waits_for_the_whole_read(scenes_dir: pathlib.Path,
                                                                               tmp_path: pathlib.Path) -> None:
    from pipeline.progress_view import expected_samples
    from pipeline.config import parse_config
    from pipeline.resume import decide_num_shards
    from inputs.units import list_units

    common = ["--input", str(scenes_dir / "manifest.jsonl"), "--output", str(tmp_path / "o"), "--no-dedup",
              "--samples-per-shard", "4"]
    config = parse_config(common)
    assert decide_num_shards(config, expected_samples(list_units(config.input))) == 3  # 12 listed rows / 4, before reading anything
    known = _transform_names([*common, "--num-shards", "3"])
    assert not any("Count" in n or "Combine" in n for n in known)  # no global count: a plain Map assigns shards
    # fusion breaks: after listing, after splitting manifests, and between the read and the model stages where
    # there are several workers to spread them over (on one local worker it would only hold the records back)
    assert {"ReadImages/SpreadUnits", "ReadImages/SpreadParts"} <= known and "SpreadRecords" not in known
    spread = _transform_names([*common, "--num-shards", "3", "--direct_running_mode=multi_processing",
                               "--direct_num_workers=2"])
    assert {"ReadImages/SpreadUnits", "ReadImages/SpreadParts", "SpreadRecords"} <= spread
    unknown = _transform_names(common)  # left to the read count (e.g. tars without sizes.json)
    assert any(n.startswith("AssignShards/Count") for n in unknown)
    summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "run", "--no-dedup", "--samples-per-shard", "4")
    assert summary["shards"] == 3 and json.loads((tmp_path / "run" / "run.json").read_text())["num_shards"] == 3


def test_a_resume_keeps_its_shard_count_and_refuses_another(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from pipeline.stages import UsageError

    out = tmp_path / "o"
    run_pipeline(scenes_dir / "manifest.jsonl", out, "--num-shards", "5")
    (out / "shard-00001_stats.json").unlink()
    again = run_pipeline(scenes_dir / "manifest.jsonl", out)  # no flag: the resumed run's 5 is kept
    assert again["shards"] == 5 and again["reconciled"] is True
    (out / "shard-00001_stats.json").unlink()
    with pytest.raises(UsageError, match="--num-shards 2, but the run being resumed wrote 5"):
        run_pipeline(scenes_dir / "manifest.jsonl", out, "--num-shards", "2")
