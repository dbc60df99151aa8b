"""The optional extras resolve together with the pins (pip's resolver, against the package index).

Asking pip's resolver takes about 3 minutes here, so its answer is kept in
``tests/extras_resolution.json`` together with the sha256 of the ``setup.py`` it was asked for.
While setup.py is unchanged the test checks that recorded answer; once setup.py changes (a pin,
an extra) the record no longer matches, the test asks pip again (bounded by a timeout, so it never
hangs), checks the new answer and rewrites the record: commit it with the setup.py change.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import platform
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "extras_resolution.json"
EXTRAS = "gcp,aws,hf"
RESOLVE_TIMEOUT_S = 1800  # about 3 minutes on an idle 2-core machine; 15+ when 7 jobs share it


def setup_sha256() -> str:
    return hashlib.sha256((ROOT / "setup.py").read_bytes()).hexdigest()


def recorded_resolution() -> dict | None:
    """The recorded answer when it is for this setup.py and these extras, else None."""
    try:
        record = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None
    if record.get("setup_py_sha256") != setup_sha256() or record.get("extras") != EXTRAS:
        return None
    return record


def resolve_with_pip(tmp_path: pathlib.Path) -> dict:
    """pip's resolver on ``.[gcp,aws,hf]`` (a dry run: nothing installed); the record it gives."""
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                          "--report", str(report), f"{ROOT}[{EXTRAS}]"],
                         capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    return {"_doc": "pip's resolver's answer for setup.py with these extras (tests/test_extras.py); "
                    "rewritten by that test when setup.py changes",
            "setup_py_sha256": setup_sha256(), "extras": EXTRAS,
            "python": platform.python_version(), "chosen": dict(sorted(chosen.items()))}


@pytest.mark.slow
def test_cloud_extras_resolve_with_the_pins(tmp_path: pathlib.Path) -> None:
    record = recorded_resolution()
    if record is None:  # setup.py changed since pip was last asked: ask it now, keep its answer
        record = resolve_with_pip(tmp_path)
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
    chosen = record["chosen"]
    assert chosen["fsspec"] == "2026.9.0" and chosen["apache-beam"] == "2.77.0"
    assert "gcsfs" in chosen and "s3fs" in chosen and "datasets" in chosen


def test_a_changed_setup_py_makes_the_record_stale(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "setup.py"
    fake.write_text((ROOT / "setup.py").read_text().replace('"pyarrow==25.0.1"', '"pyarrow==25.0.0"'))
    record = tmp_path / "extras_resolution.json"
    record.write_text(json.dumps({"setup_py_sha256": setup_sha256(), "extras": EXTRAS, "chosen": {}}))
    monkeypatch.setattr(sys.modules[__name__], "RECORD", record)
    assert recorded_resolution() is not None  # same setup.py: the recorded answer stands
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert recorded_resolution() is None  # one pin changed: pip is asked again


def test_the_extras_are_declared() -> None:
    text = (ROOT / "setup.py").read_text()
    for pin in ('"gcsfs==', '"s3fs==', '"aiohttp==', '"rich=='):
        assert pin in text, pin
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    assert ".[gcp,aws]" in docker  # the container reads gs:// and s3:// too
