"""SIGINT (Ctrl-C) and SIGTERM stop `finehard shards` in any phase: one line, exit 130 / 143, the lock
and the spill folder gone, and the same command resumes.

Each case runs a real `finehard shards` process in its own process group, waits for a progress or
log line of the phase it interrupts (a slow fake OpenAI-compatible captioner holds the recaption
stage), sends a real signal to the process or to its group, and reads what it printed afterwards.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

import pytest

from conftest import ROOT
from fake_openai_server import FakeOpenAIServer, completion

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CAPTION = "a red square and a blue circle on a white background"
LINE = re.compile(r"^finehard shards: interrupted \((SIGINT|SIGTERM)\); completed shards are kept: run the same "
                  r"command again to resume$")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from core.synthetic import write_scenes

    d = tmp_path_factory.mktemp("signal_scenes")
    write_scenes(str(d), 40, seed=11)
    return d / "manifest.jsonl"


@pytest.fixture()
def slow_captioner():
    """An OpenAI-compatible captioner that takes 0.3 s per caption: the recaption stage lasts seconds."""
    def reply(body: dict) -> tuple[int, dict]:
        time.sleep(0.3)
        return 200, completion(CAPTION)

    with FakeOpenAIServer(reply, models=lambda: (200, {"data": []})) as server:
        yield f"openai:{server.url}#fake?concurrency=2"


class Run:
    """A `finehard shards` process in its own process group, its stderr lines collected as they come."""

    def __init__(self, *argv: str, ignore_sigint: bool = False):
        def preexec() -> None:
            os.setsid()
            if ignore_sigint:  # what a shell does to a background job: `finehard shards ... &` in a script
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "shards", "--progress-every-s", "0.5",
                                      *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=preexec)
        self.lines: list[str] = []
        self.sent_at: Optional[int] = None  # how many lines had come when the signal was sent
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def wait_for(self, pattern: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            assert self.proc.poll() is None, f"the run ended before {pattern!r}: {''.join(self.lines)[-3000:]}"
            assert time.monotonic() < deadline, f"{pattern!r} never came: {''.join(self.lines)[-3000:]}"
            time.sleep(0.05)

    def send(self, sig: int, group: bool) -> None:
        self.sent_at = len(self.lines)
        (os.killpg if group else os.kill)(self.proc.pid, sig)

    def finish(self, timeout: float = 60) -> tuple[int, list[str]]:
        """Exit code and the stderr lines printed after the signal (the hang guard is generous: this
        machine is shared; the stop itself takes about a second)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"still running {timeout} s after the signal: {''.join(self.lines)[-3000:]}")
        self._reader.join(10)
        return self.proc.returncode, [line.rstrip("\n") for line in self.lines[self.sent_at:]]


INFO_LINE = re.compile(r"^\d\d:\d\d:\d\d INFO ")  # a progress line logged as the signal came


def assert_stopped(run: Run, out: pathlib.Path, code: int, name: str) -> None:
    rc, after = run.finish()
    assert rc == code, "\n".join(run.lines[-40:])
    after = [line for line in after if not INFO_LINE.match(line)]
    assert len(after) == 1 and LINE.match(after[0]) and f"({name})" in after[0], after
    assert not any("Traceback" in line for line in run.lines), "".join(run.lines)[-3000:]
    assert not (out / ".finehard.lock").exists()
    assert not list(out.glob(".spill-*")) and not (out / ".waves").exists()


def finished(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "pipeline", "shards", *argv], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sigint_to_the_process_mid_stage_exits_130_in_one_line_and_the_run_resumes(
        scenes: pathlib.Path, slow_captioner: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    argv = ("--input", str(scenes), "--output", str(out), "--samples-per-shard", "10", "--captioner", slow_captioner)
    run = Run(*argv)
    run.wait_for(r"progress: recaption \d+/")
    run.send(signal.SIGINT, group=False)
    assert_stopped(run, out, 130, "SIGINT")
    summary = finished(*argv)
    assert summary["written"] == 40 and summary["reconciled"] is True


def test_sigterm_to_the_group_of_a_two_worker_run_exits_143_in_one_line(
        scenes: pathlib.Path, slow_captioner: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    run = Run("--input", str(scenes), "--output", str(out), "--samples-per-shard", "10", "--captioner", slow_captioner,
              "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    run.wait_for(r"progress: recaption \d+/")
    run.send(signal.SIGTERM, group=True)
    assert_stopped(run, out, 143, "SIGTERM")


def test_sigint_to_a_background_job_that_ignores_it_still_stops_the_run(scenes: pathlib.Path,
                                                                         tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    run = Run("--input", str(scenes), "--output", str(out), "--samples-per-shard", "10", ignore_sigint=True)
    run.wait_for(r"progress: started")
    run.send(signal.SIGINT, group=False)
    assert_stopped(run, out, 130, "SIGINT")


@pytest.mark.parametrize("phase, pattern, sig, group", [
    ("the hashing pass", r"waves: hashing", signal.SIGINT, True),
    ("the second wave", r"wave 2/", signal.SIGTERM, False),
])
def test_a_signal_in_a_run_in_waves_stops_it_and_the_run_resumes(phase: str, pattern: str, sig: int, group: bool,
                                                                 scenes: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    argv = ("--input", str(scenes), "--output", str(out), "--samples-per-shard", "10", "--wave-samples", "20")
    run = Run(*argv)
    run.wait_for(pattern)
    run.send(sig, group=group)
    assert_stopped(run, out, 128 + sig, signal.Signals(sig).name)
    summary = finished(*argv)
    assert summary["written"] == 40 and summary["reconciled"] is True


BUSY_IN_NATIVE_CODE = """
import os, sys, pathlib
from pipeline.interrupt import StopOnSignals, on_stop
marker = pathlib.Path(sys.argv[1])
with StopOnSignals("stopped ({signal})"), on_stop(lambda: marker.write_text("cleaned")):
    print("busy", file=sys.stderr, flush=True)
    # system() waits in C for a child that ignores SIGTERM: no Python signal handler runs meanwhile
    os.system("trap '' TERM; sleep 120")
"""


def test_a_run_busy_in_native_code_is_ended_by_the_watchdog_after_its_cleanups(tmp_path: pathlib.Path) -> None:
    from pipeline.interrupt import GRACE_S

    marker = tmp_path / "cleaned"
    proc = subprocess.Popen([sys.executable, "-c", BUSY_IN_NATIVE_CODE, str(marker)], cwd=ROOT, env=ENV,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().strip() == "busy"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=GRACE_S + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the watchdog did not end the process")
    assert proc.returncode == 143 and stderr.strip() == "stopped (SIGTERM)"
    assert marker.read_text() == "cleaned"
