"""The optional extras resolve together with the pins (pip's resolver, against the package index).

Slow (about 2 minutes) and needs the package index, which these machines and CI reach; bounded by a
timeout, so it never hangs.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cloud_extras_resolve_with_the_pins(tmp_path: pathlib.Path) -> None:
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                          "--report", str(report), f"{ROOT}[gcp,aws,hf]"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert chosen["fsspec"] == "2026.9.0" and chosen["apache-beam"] == "2.77.0"
    assert "gcsfs" in chosen and "s3fs" in chosen and "datasets" in chosen


def test_the_extras_are_declared() -> None:
    text = (ROOT / "setup.py").read_text()
    for pin in ('"gcsfs==', '"s3fs==', '"aiohttp==', '"rich=='):
        assert pin in text, pin
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    assert ".[gcp,aws]" in docker  # the container reads gs:// and s3:// too
