"""Fast start: every --help and every argument error answers before Beam, torch or transformers is
imported (bench/cli_startup.py measures the seconds; tests look at what was imported)."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("apache_beam", "torch", "torchvision", "transformers", "spacy", "webdataset", "ultralytics")
PROBE = """
import json, sys
from pipeline.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def finehard_imports(*argv: str, heavy: tuple[str, ...] = HEAVY) -> tuple[int, list[str], str]:
    """Exit code of `finehard ARGV` run in a fresh process, the ``heavy`` modules it imported, its stderr."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(heavy)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], result["heavy"], done.stderr


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["shards", "--help"], ["train", "--help"],
                                  ["eval", "--help"], ["convert", "--help"], ["stats", "--help"], ["preview", "--help"],
                                  ["export-fgclip", "--help"], ["export-fgovd", "--help"],
                                  ["expressions", "--help"], ["negatives", "--help"]], ids=" ".join)
def test_help_imports_neither_beam_nor_torch(argv: list[str]) -> None:
    code, heavy, _ = finehard_imports(*argv)
    assert code == 0 and heavy == []


@pytest.mark.parametrize("argv", [["negatives", "--negatives", "nope"], ["negatives", "--retries"],
                                  ["expressions", "--nope"]], ids=" ".join)
def test_a_wrong_flag_of_a_stage_command_is_refused_before_the_heavy_imports(argv: list[str]) -> None:
    code, heavy, stderr = finehard_imports(*argv)
    assert code == 2 and heavy == [], stderr
    assert "error:" in stderr.strip().splitlines()[-1]


def test_the_negatives_help_lists_the_engines_without_importing_fsspec() -> None:
    """The engine list in its help comes from the stage's registry; fsspec (half a second) waits for a cache."""
    code, heavy, _ = finehard_imports("negatives", "--help", heavy=(*HEAVY, "fsspec", "PIL"))
    assert code == 0 and heavy == []


@pytest.mark.parametrize("argv", [["stats"], ["preview", "out"], ["export-fgclip", "out"], ["export-fgovd", "out"],
                                  ["stats", "out", "--nope"]], ids=" ".join)
def test_a_wrong_flag_of_a_read_back_command_is_refused_before_the_heavy_imports(argv: list[str]) -> None:
    code, heavy, stderr = finehard_imports(*argv)
    assert code == 2 and heavy == [], stderr
    assert "error:" in stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("case", ["misspelt flag", "misspelt Beam flag", "Beam flag without its value",
                                  "missing --output", "unknown stage", "zero batch size"])
def test_a_wrong_shards_flag_is_refused_in_one_line_before_the_heavy_imports(case: str,
                                                                              tmp_path: pathlib.Path) -> None:
    base = ["shards", "--input", str(ROOT / "sample"), "--output", str(tmp_path / "o")]
    argv, says = {
        "misspelt flag": ([*base, "--samples-per-shrd", "3"], "'--samples-per-shrd'"),
        "misspelt Beam flag": ([*base, "--direct_num_worker", "2"], "'--direct_num_worker'"),
        "Beam flag without its value": ([*base, "--direct_num_workers"], "--direct_num_workers: expected one argument"),
        "missing --output": (base[:3], "--output"),
        "unknown stage": ([*base, "--stages", "recaptoin"], "unknown stage 'recaptoin'"),
        "zero batch size": ([*base, "--batch-size", "0"], "--batch-size must be positive"),
    }[case]
    code, heavy, stderr = finehard_imports(*argv)
    assert code == 2 and heavy == [], stderr
    assert len(stderr.strip().splitlines()) <= 2 and says in stderr.strip().splitlines()[-1], stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["no model", "model not a folder", "no shards there", "bad stage"])
def test_a_wrong_train_flag_is_refused_before_torch_is_imported(case: str, tmp_path: pathlib.Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "shard-00000.tar").write_bytes(b"")
    base = ["train", "--stage", "1", "--output", str(tmp_path / "run")]
    argv, says = {
        "no model": ([*base, "--shards", str(tmp_path / "s")], "pass --model PATH"),
        "model not a folder": ([*base, "--shards", str(tmp_path / "s"), "--model", str(tmp_path / "nope")],
                               "is not a folder"),
        "no shards there": ([*base, "--shards", str(tmp_path / "none-{0..3}.tar"), "--model", str(tmp_path)],
                            "does not exist"),
        "bad stage": (["train", "--stage", "3", "--shards", "x", "--output", "y"], "invalid choice"),
    }[case]
    code, heavy, stderr = finehard_imports(*argv)
    assert code == 2 and heavy == [], stderr
    assert says in stderr.strip().splitlines()[-1], stderr


def test_the_beam_flag_table_matches_the_installed_beam() -> None:
    from pipeline.beam_flags import BEAM_VERSION, FLAGS, installed_beam, live_table

    assert BEAM_VERSION == installed_beam(), "regenerate it: python -m pipeline.beam_flags"
    assert FLAGS == live_table(), "regenerate it: python -m pipeline.beam_flags"


def test_the_startup_bench_runs_and_prints_its_ratio() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cli_startup.py"), "--no-doc", "--n", "12",
                           "--repeat", "1"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"cli_startup: ratio=\d+\.\d\d", lines[-1])
    assert any(line.startswith("| re-run over that finished output (no-op) |") for line in lines)
