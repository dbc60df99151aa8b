"""Shared fixtures: small synthetic inputs and a helper that runs the real pipeline."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys

import pytest

# No test may reach a hub: everything offline, ultralytics config in a writable place.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", "/tmp/finehard-yolo-config")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes a minute or more on 2 cores (pip's resolver, whole runs in subprocesses, real "
                   "models); `make test` and CI run it, `make test-quick` (pytest -m 'not slow') leaves it out")


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """12 synthetic scenes plus a jsonl manifest, shared read-only by tests."""
    from core.synthetic import write_scenes

    d = tmp_path_factory.mktemp("scenes")
    write_scenes(str(d), 12, seed=3)
    return d


def run_pipeline(input_uri: str, output: pathlib.Path | str, *extra: str) -> dict:
    from pipeline.config import parse_config
    from pipeline.run import run

    return run(parse_config(["--input", str(input_uri), "--output", str(output), *extra]))


def shard_hashes(output: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(output.glob("*.tar"))}


def read_shards(output: pathlib.Path) -> list[dict]:
    """Every sample of every shard, through the real webdataset reader."""
    import webdataset as wds

    urls = [str(p) for p in sorted(output.glob("*.tar"))]
    samples = []
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        s = dict(s)
        s["record"] = json.loads(s["json"])
        samples.append(s)
    return samples


def dead_letters(output: pathlib.Path) -> list[dict]:
    out = []
    for p in sorted((output / "deadletter").glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return out
