"""Nothing lost, ever (run level): the independent count, one run per output, changed input, engine
outages, atomic markers, full disks, interrupts, and duplicate decisions that survive a resume.

The concurrency, disk-full and interrupt cases run real `finehard shards` processes.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import apache_beam as beam
import pytest

from conftest import ROOT, dead_letters, read_shards, run_pipeline, shard_hashes
from fake_openai_server import FakeOpenAIServer, completion

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def finehard(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "shards", *argv], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300, **kw)


def start(*argv: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "shards", *argv], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def all_outputs(out: pathlib.Path) -> dict[str, str]:
    """Hashes of every tar, marker and list a run wrote (summary.json holds timings, so it is left out)."""
    names = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".tar", ".jsonl")
                   or p.name.endswith("_stats.json"))
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in names}


@pytest.fixture(scope="module")
def many_scenes(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from core.synthetic import write_scenes

    d = tmp_path_factory.mktemp("many")
    write_scenes(str(d), 160, seed=5)
    return d


# --- 1. the check that can fail -----------------------------------------------------------------

def test_a_clean_run_reconciles_against_the_count_taken_while_reading(scenes_dir: pathlib.Path,
                                                                       tmp_path: pathlib.Path) -> None:
    summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "o")
    counts = [json.loads(p.read_text()) for p in (tmp_path / "o" / "read_counts").glob("*.json")]
    assert sum(c["items"] for c in counts) == summary["read"] == 12
    assert summary["accounted"] == summary["written"] + summary["dead_lettered"] + summary["filtered"] == 12
    assert summary["reconciled"] is True


def test_a_sample_lost_between_read_and_write_is_caught(scenes_dir: pathlib.Path, tmp_path: pathlib.Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    import transforms.graph as run_module
    from pipeline.cli import main

    real = run_module.split_outcomes

    def leaky(pcoll, stage):  # an injected bug: one live sample vanishes after recaptioning
        live, dead, filtered = real(pcoll, stage)
        if stage == "recaption":
            live = live | "InjectedLoss" >> beam.Filter(lambda r: r["key"] != "scene_03_000004")
        return live, dead, filtered

    monkeypatch.setattr(run_module, "split_outcomes", leaky)
    rc = main(["shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["reconciled"] is False and summary["read"] == 12 and summary["accounted"] == 11
    assert rc == 1 and "NOT RECONCILED" in err


# --- 2. one run per output ----------------------------------------------------------------------

def test_a_second_run_on_a_held_output_is_refused_and_the_first_loses_nothing(scenes_dir: pathlib.Path,
                                                                              tmp_path: pathlib.Path) -> None:
    import threading

    release = threading.Event()

    def reply(body: dict) -> tuple[int, object]:  # the first run's captioner answers only when released
        release.wait(timeout=120)
        return 200, completion("A picture of shapes.")

    out = tmp_path / "o"
    with FakeOpenAIServer(reply) as server:
        argv = ("--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out), "--samples-per-shard", "4",
                "--captioner", f"openai:{server.url}#m")
        first = start(*argv)
        wait_for(out / ".finehard.lock", first)
        second = finehard(*argv)
        release.set()
        stdout, stderr = first.communicate(timeout=300)
    assert second.returncode == 2
    assert "is in use by a run on" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["written"] == 12 and summary["reconciled"] is True
    assert not (out / ".finehard.lock").exists()


def test_a_lock_left_by_a_dead_run_is_taken_over(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "o"
    out.mkdir()
    (out / ".finehard.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                    "started": "2026-01-01T00:00:00"}))
    assert run_pipeline(scenes_dir / "manifest.jsonl", out)["written"] == 12


def test_a_lock_held_by_a_live_process_refuses_the_run(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from shards.outdir import OutputInUse

    out = tmp_path / "o"
    out.mkdir()
    (out / ".finehard.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                    "started": "2026-01-01T00:00:00"}))
    with pytest.raises(OutputInUse, match=f"pid {os.getpid()}"):
        run_pipeline(scenes_dir / "manifest.jsonl", out)
    assert list(out.iterdir()) == [out / ".finehard.lock"]  # nothing touched


# --- 3. changed input ---------------------------------------------------------------------------

def test_resuming_after_the_input_changed_is_refused_with_the_fix(scenes_dir: pathlib.Path,
                                                                  tmp_path: pathlib.Path) -> None:
    from pipeline.stages import UsageError

    folder = tmp_path / "in"
    shutil.copytree(scenes_dir, folder, ignore=shutil.ignore_patterns("*.jsonl"))
    out = tmp_path / "o"
    run_pipeline(folder, out, "--samples-per-shard", "4")
    shutil.copy(folder / "scene_03_000001.jpg", folder / "added.jpg")
    with pytest.raises(UsageError, match="--input changed .* 12 listed then, 13 now.*--overwrite"):
        run_pipeline(folder, out, "--samples-per-shard", "4")
    (folder / "added.jpg").unlink()
    (folder / "scene_03_000002.jpg").unlink()
    with pytest.raises(UsageError, match="--input changed"):
        run_pipeline(folder, out, "--samples-per-shard", "4")
    again = run_pipeline(folder, out, "--samples-per-shard", "4", "--overwrite")
    assert again["read"] == again["written"] == 11 and again["reconciled"] is True
    keys = {r["record"]["key"] for r in read_shards(out)}
    assert "scene_03_000002" not in keys and "added" not in keys and len(keys) == 11


# --- 4. engine outages --------------------------------------------------------------------------

def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_an_engine_that_does_not_answer_stops_the_run_before_it_starts(scenes_dir: pathlib.Path,
                                                                        tmp_path: pathlib.Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    done = finehard("--input", str(scenes_dir / "manifest.jsonl"), "--output", str(tmp_path / "o"),
                    "--captioner", f"openai:{url}#m")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--captioner server {url} does not answer" in done.stderr
    assert not (tmp_path / "o" / "summary.json").exists()


def test_samples_failed_by_an_outage_are_retried_by_a_rerun_and_answers_are_not_asked_again(
        scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    down = {"on": True}
    asked: list[str] = []

    def reply(body: dict) -> tuple[int, object]:
        image = json.dumps(body["messages"])
        digest = hashlib.sha256(image.encode()).hexdigest()
        asked.append(digest)
        if down["on"] and int(digest, 16) % 3 == 0:  # the server fails a third of the images, every time
            return 503, {"error": "overloaded"}
        return 200, completion(f"A picture {digest[:8]}.")

    out = tmp_path / "o"
    with FakeOpenAIServer(reply) as server:
        spec = f"openai:{server.url}?retries=0#m"
        first = run_pipeline(scenes_dir / "manifest.jsonl", out, "--captioner", spec, "--samples-per-shard", "4")
        failed = [d for d in dead_letters(out) if d["reason"] == "caption_request_failed"]
        assert failed and all(d["retryable"] for d in failed)
        assert first["retryable"] == len(failed) and first["written"] == 12 - len(failed)
        asked_first = len(asked)
        down["on"] = False
        second = run_pipeline(scenes_dir / "manifest.jsonl", out, "--captioner", spec, "--samples-per-shard", "4")
    assert second["written"] == 12 and second["dead_lettered"] == 0 and second["reconciled"] is True
    assert len(asked) - asked_first == len(failed)  # only the failed images were asked again
    assert second["counters"]["cache_hits:recaption"] > 0


# --- 5. atomic markers, full disk ---------------------------------------------------------------

def test_an_empty_or_corrupt_marker_is_an_unfinished_shard(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    reference = all_outputs(out)
    (out / "shard-00001_stats.json").write_bytes(b"")
    (out / "shard-00002_stats.json").write_text('{"shard": "shard-00002", "written":')
    again = run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    assert again["reconciled"] is True and all_outputs(out) == reference


def test_a_full_disk_fails_the_run_in_one_line_and_a_rerun_completes(scenes_dir: pathlib.Path,
                                                                     tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    biggest = max(p.stat().st_size for p in scenes_dir.glob("*.jpg"))
    limit = biggest * 3  # single images and markers fit; a shard of 12 images does not

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = finehard("--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out), "--spill-dir", "none",
                    preexec_fn=small_disk)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("finehard shards: error: the run failed:") and "File too large" in last
    assert not list(out.glob("*_stats.json")) and not list(out.glob("*.tar"))
    assert [p for p in out.iterdir() if p.stat().st_size == 0 and p.is_file()] == []
    again = finehard("--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out), "--spill-dir", "none")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["written"] == 12


# --- 18. interrupts and bad paths: one line, a useful exit code ---------------------------------

def test_sigint_exits_130_in_one_line_and_the_next_run_resumes(many_scenes: pathlib.Path,
                                                               tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    proc = start("--input", str(many_scenes / "manifest.jsonl"), "--output", str(out), "--samples-per-shard", "20")
    wait_for(out / ".finehard.lock", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr.strip().splitlines()[-1]
    assert not (out / ".finehard.lock").exists()
    again = finehard("--input", str(many_scenes / "manifest.jsonl"), "--output", str(out),
                     "--samples-per-shard", "20")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["written"] == 160 and summary["reconciled"] is True


@pytest.mark.parametrize("case", ["output_is_a_file", "empty_output", "corrupt_parquet", "missing_spill_dir"])
def test_bad_paths_fail_in_one_line_with_exit_2(case: str, scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    manifest, out, extra = str(scenes_dir / "manifest.jsonl"), str(tmp_path / "o"), []
    expected = ""
    if case == "output_is_a_file":
        (tmp_path / "o").write_text("x")
        expected = "is a file"
    elif case == "empty_output":
        out, expected = "", "--output is empty"
    elif case == "corrupt_parquet":
        manifest = str(tmp_path / "m.parquet")
        pathlib.Path(manifest).write_bytes(b"PAR1 this is not parquet PAR1")
        expected = "is not a readable parquet file"
    elif case == "missing_spill_dir":
        extra, expected = ["--spill-dir", str(tmp_path / "nowhere" / "x")], "is not an existing folder"
    done = finehard("--input", manifest, "--output", out, *extra)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and expected in done.stderr
    assert not (tmp_path / "nowhere").exists()


# --- 16. deterministic dead letters; 20. duplicate decisions survive a resume --------------------

def test_two_clean_runs_write_identical_dead_letters(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    (folder / "empty.png").write_bytes(b"")
    run_pipeline(folder, tmp_path / "a")
    run_pipeline(folder, tmp_path / "b")
    a, b = (tmp_path / "a" / "deadletter"), (tmp_path / "b" / "deadletter")
    assert [p.read_bytes() for p in sorted(a.glob("*"))] == [p.read_bytes() for p in sorted(b.glob("*"))]
    assert "0x" not in "".join(p.read_text() for p in a.glob("*"))


def test_a_resumed_run_makes_the_same_duplicate_decisions(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from shards.write import num_shards_for, shard_of

    folder = tmp_path / "in"
    shutil.copytree(scenes_dir, folder, ignore=shutil.ignore_patterns("*.jsonl"))
    n = num_shards_for(13, 4)
    kept = "scene_03_000000"  # the first of the pair by name is kept; find a copy name that lands in another shard
    copy = next(f"zz_copy_{i}" for i in range(100) if shard_of(f"zz_copy_{i}", n) != shard_of(kept, n))
    shutil.copy(folder / f"{kept}.jpg", folder / f"{copy}.jpg")
    out = tmp_path / "o"
    first = run_pipeline(folder, out, "--samples-per-shard", "4")
    assert first["filtered_by_reason"] == {"dedup:duplicate": 1}
    reference = all_outputs(out)
    victim = f"shard-{shard_of(copy, n):05d}"
    (out / f"{victim}_stats.json").unlink()
    (out / f"{victim}.tar").unlink()
    again = run_pipeline(folder, out, "--samples-per-shard", "4")
    assert all_outputs(out) == reference and again["filtered_by_reason"] == {"dedup:duplicate": 1}
    assert shard_hashes(out) == {k: v for k, v in reference.items() if k.endswith(".tar")}
