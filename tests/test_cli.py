"""The command-line contract: help, fast failures with one-line messages, exit codes."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def finehard(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_help_explains_every_flag() -> None:
    res = finehard("shards", "--help")
    assert res.returncode == 0
    for flag in ("--input", "--output", "--samples-per-shard", "--captioner", "--detector", "--negatives",
                 "--runner", "--direct_num_workers", "--box-conf", "--nms-iou", "--max-regions"):
        assert flag in res.stdout, flag
    top = finehard("--help")
    assert top.returncode == 0 and "shards" in top.stdout


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    errors = [l for l in res.stderr.splitlines() if "error" in l.lower() or "unknown" in l.lower()]
    assert errors, res.stderr
    return errors[-1]


def test_unknown_flag_fails_at_once(tmp_path: pathlib.Path) -> None:
    line = _one_line_error(finehard("shards", "--input", str(ROOT / "sample"), "--output", str(tmp_path / "o"),
                                    "--samples-per-shrd", "3"))
    assert "--samples-per-shrd" in line
    assert not (tmp_path / "o").exists()


def test_missing_input_folder_fails_at_once(tmp_path: pathlib.Path) -> None:
    line = _one_line_error(finehard("shards", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")))
    assert "does not exist" in line and str(tmp_path / "nope") in line


def test_unknown_engine_says_what_to_choose(tmp_path: pathlib.Path) -> None:
    line = _one_line_error(finehard("shards", "--input", str(ROOT / "sample"), "--output", str(tmp_path / "o"),
                                    "--captioner", "gpt9:/x"))
    assert "unknown captioner engine 'gpt9'" in line and "stub" in line


def test_unknown_command() -> None:
    res = finehard("shardz")
    assert res.returncode == 2 and "unknown command" in res.stderr


def test_shards_command_runs_and_prints_summary(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    res = finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(tmp_path / "o"),
                   "--runner", "DirectRunner", "--direct_num_workers", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["written"] == 12 and summary["reconciled"] is True
    assert "Prism" not in res.stderr  # the local run never tries to download a runner binary




def _failing_server():
    """A server that is up (a run starts) but fails every chat request: an outage during the run.

    (A server that does not answer at all stops the run before it starts: tests/test_nothing_lost.py.)
    """
    from fake_openai_server import FakeOpenAIServer

    return FakeOpenAIServer(lambda body: (503, {"error": "model overloaded, try later"}))


def test_a_negatives_server_that_fails_fails_the_run_with_its_error(tmp_path: pathlib.Path,
                                                                    scenes_dir: pathlib.Path) -> None:
    out = tmp_path / "o"
    with _failing_server() as srv:
        res = finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out),
                       "--negatives", f"openai:{srv.url}?warmup=0&retries=0&structured=none#m",
                       "--negatives-retries", "0")
    assert res.returncode == 1, res.stderr[-3000:]
    line = [l for l in res.stderr.splitlines() if l.startswith("finehard shards: failed:")]
    assert len(line) == 1 and "no valid negatives" in line[0] and "engine_error" in line[0], res.stderr[-3000:]
    assert "HTTP 503" in line[0] and "--max-failure-rate 0.5" in line[0]
    diagnostics = [json.loads(l) for p in sorted((out / "diagnostics").glob("*.jsonl")) for l in p.read_text().splitlines()]
    assert diagnostics and all(d["reason"] == "engine_error" and "HTTP 503" in d["detail"] for d in diagnostics)
    assert json.loads(res.stdout.strip().splitlines()[-1])["negatives_valid_rate"] == 0.0


def test_a_captioner_that_fails_fails_the_run_unless_allowed(tmp_path: pathlib.Path,
                                                             scenes_dir: pathlib.Path) -> None:
    with _failing_server() as srv:
        down = f"openai:{srv.url}?warmup=0&retries=0#m"
        res = finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(tmp_path / "o"),
                       "--captioner", down)
        allowed = finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output",
                           str(tmp_path / "o2"), "--captioner", down, "--max-failure-rate", "1")
    assert res.returncode == 1, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("finehard shards: failed: 12/12 samples dead-lettered (100.0% > --max-failure-rate 0.5)")
    assert "recaption:" in line and "HTTP 503" in line and "deadletter/" in line
    assert allowed.returncode == 0, allowed.stderr[-3000:]


def test_raw_answers_of_invalid_negatives_are_kept(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    from fake_openai_server import FakeOpenAIServer, completion

    out = tmp_path / "o"
    with FakeOpenAIServer(lambda b: (200, completion('["only one negative"]'))) as srv:
        res = finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out),
                       "--negatives", f"openai:{srv.url}?structured=none#m", "--negatives-retries", "0",
                       "--max-failure-rate", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    diagnostics = [json.loads(l) for p in sorted((out / "diagnostics").glob("*.jsonl")) for l in p.read_text().splitlines()]
    assert diagnostics and {d["reason"] for d in diagnostics} == {"wrong_count"}
    assert all(d["raw_answer"] == '["only one negative"]' and d["expression"] and d["key"] for d in diagnostics)


def test_version_and_a_beam_flag_without_its_value() -> None:
    res = finehard("--version")
    assert res.returncode == 0 and res.stdout.startswith("finehard 0.")
    line = _one_line_error(finehard("shards", "--input", str(ROOT / "sample"), "--output", "/tmp/never", "--runner"))
    assert "--runner: expected one argument" in line
    res = finehard("shards", "--input", str(ROOT / "sample"), "--output", "/tmp/never", "--runner")
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # not Beam's 130-line usage


def test_stage_commands_do_not_import_runinference_or_torch() -> None:
    code = ("import sys, io; from pipeline.cli import main; sys.stdin = io.StringIO('A red car near a tree.\\n');"
            "rc = main(['expressions']); assert rc == 0;"
            "sys.stdin = io.StringIO('a red car\\n'); rc = main(['negatives', '--negatives', 'rules']);"
            "bad = [m for m in ('apache_beam.ml.inference.base', 'torch') if sys.modules.get(m) is not None];"
            "print('HEAVY', bad)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY []" in res.stdout, res.stdout[-2000:]


def test_stats_reads_only_unless_asked(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    out = tmp_path / "o"
    assert finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out)).returncode == 0
    before = sorted(p.name for p in out.iterdir())
    assert finehard("stats", str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == before
    assert finehard("stats", str(out), "--write").returncode == 0 and (out / "stats_report.json").exists()


def test_a_finished_output_folder_is_a_valid_input(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    out, again = tmp_path / "o", tmp_path / "again"
    assert finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out),
                    "--samples-per-shard", "4").returncode == 0
    (out / "deadletter").mkdir(exist_ok=True)  # dead-letter lists look like manifests
    (out / "deadletter" / "shard-00000.jsonl").write_text('{"key": "x", "f_path": "y"}\n')
    res = finehard("shards", "--input", str(out), "--output", str(again), "--stages", "negatives")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["read"] == 12 and summary["written"] == 12


def test_a_cloud_path_without_its_filesystem_says_what_to_install(tmp_path: pathlib.Path) -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        import pytest

        pytest.skip("gcsfs is installed here")
    line = _one_line_error(finehard("shards", "--input", "gs://finehard-test-bucket/in/", "--output", str(tmp_path / "o")))
    assert "gcsfs" in line and "pip install -e '.[gcp]'" in line and "gs://finehard-test-bucket/in/" in line
