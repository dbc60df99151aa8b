"""What a user sees while a run goes: log set-up, progress lines with counts, rate and ETA."""
from __future__ import annotations

import logging
import pathlib
import re
import subprocess
import sys

from fake_openai_server import FakeOpenAIServer, completion, slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def finehard(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_rates_of_slow_stages_are_seconds_per_sample() -> None:
    from shards.progress import format_eta, format_rate, progress_line

    assert format_rate(3, 12.0) == "4.0s/sample"  # not "0.2/s", never "0.0/s"
    assert format_rate(30, 12.0) == "2.5/s"
    assert format_eta(1, 4.0, 900) == "ETA 59m56s" and format_eta(1, 10.0, 900) == "ETA 2h29m"
    assert progress_line(2, 10.0, 10) == "2/10 samples (20.0%), 5.0s/sample, ETA 0m40s"


def test_the_line_shows_the_moving_stage_and_every_count() -> None:
    from pipeline.progress_view import ProgressView

    view = ProgressView(["read", "recaption", "negatives", "done"], total=10, tty=False)
    view._started = 0.0
    view._first = {"read": 0.0, "recaption": 5.0}
    line = view.line({"read": 10, "recaption": 4, "failed:read": 2}, now=20.0)
    # recaption can get 10 - 2 (dead while reading) = 8; 4 in the 20 s since reading began
    assert line.startswith("recaption 4/8 (50.0%), 5.0s/sample, ETA 0m20s | read 10, recaption 4, negatives 0, done 0")
    assert line.endswith("dead-lettered/filtered 2")


def test_the_line_shows_the_samples_a_slow_stage_holds_before_any_is_done() -> None:
    from pipeline.progress_view import ProgressView

    view = ProgressView(["read", "recaption", "negatives", "done"], total=10, tty=False)
    view._started = 0.0
    view._first = {"read": 0.0}
    counts = {"read": 10, "started:recaption": 4, "recaption": 1, "failed:recaption": 1}
    assert view.line(counts, now=30.0).startswith("recaption 1/10 (10.0%), 30.0s/sample, ETA 4m30s, 2 in flight | "
                                                  "read 10, recaption 1 (2 in flight), negatives 0, done 0")
    # a later stage moving too (stages overlap): the first unfinished one still leads, as it paces the run
    later = view.line({**counts, "negatives": 1, "started:negatives": 1}, now=30.0)
    assert later.startswith("recaption 1/10 (10.0%)") and "recaption 1 (2 in flight), negatives 1, " in later
    # it done, the next unfinished one leads
    done = view.line({**counts, "recaption": 9, "started:recaption": 10, "negatives": 3, "started:negatives": 9},
                     now=30.0)
    assert done.startswith("negatives 3/9 (33.3%)"), done
    # nothing done yet: the stage holding samples is the one shown, not the one before it
    assert view.line({"read": 10, "started:recaption": 3}, now=30.0).startswith("recaption 0/10 (0.0%), 3 in flight |")
    # a run in waves: the first wave read its share of the input (4 of 10) and the captioner works on it; the read,
    # begun and unfinished until the next wave, does not lead with its rate falling and its ETA growing
    wave = view.line({"read": 4, "started:recaption": 4, "recaption": 2}, now=30.0)
    assert wave.startswith("recaption 2/10 (20.0%)"), wave


def test_a_slow_stage_prints_a_line_every_progress_every_s_with_its_samples_in_flight(
        scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A captioner that takes 2.5 s per image (llama.cpp on a CPU): lines keep coming while nothing finishes."""
    import json

    rows = (scenes_dir / "manifest.jsonl").read_text().splitlines()[:2]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({**json.loads(r), "url": str(scenes_dir / json.loads(r)["url"])})
                                              + "\n" for r in rows))
    with FakeOpenAIServer(slow(2.5, (200, completion("A small red cube on a grey floor.")))) as server:
        res = finehard("shards", "--input", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "o"),
                       "--captioner", f"openai:{server.url}?concurrency=1#m", "--batch-size", "1",
                       "--stages", "recaption", "--progress-every-s", "0.2")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [l.split("progress: ", 2)[2] for l in res.stderr.splitlines()
             if "INFO finehard.progress: progress:" in l and "progress: started" not in l]
    # samples handed to the captioner and not back: the one it works on (and the next, waiting in its batcher)
    holding = [l for l in lines if re.match(r"recaption \d/2 \(.*, [12] in flight \| ", l)]
    assert len(holding) >= 3, "\n".join(lines)  # ~5 lines per image at one a poll; never one before
    counts = [l.split(" | ", 1)[1] for l in holding]
    assert max(counts.count(c) for c in counts) >= 2, "\n".join(lines)  # lines with no sample finished between


def test_logging_is_set_up_whatever_beam_did_at_import() -> None:
    import io

    from pipeline.logs import configure

    root = logging.getLogger()
    saved = (list(root.handlers), root.level,
             {n: logging.getLogger(n).level for n in ("finehard", "apache_beam", "httpx", "httpcore")})
    logging.warning("apitools not found, and bigquery client libraries are not available")  # what Beam does
    stream = io.StringIO()
    try:
        configure(0, stream=stream)
        logging.getLogger("finehard").info("an info line")
        logging.getLogger("apache_beam.transforms.util").info("BatchElements statistics: noise")
        logging.getLogger("apache_beam.runners").warning("a Beam warning")
        logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1:1/v1/chat/completions "200 OK"')
        configure(-1, stream=stream)
        logging.getLogger("finehard").info("quiet now")
    finally:  # give pytest its handlers back
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
    text = stream.getvalue()
    assert "INFO finehard: an info line" in text and "a Beam warning" in text
    assert "BatchElements" not in text and "apitools" not in text and "quiet now" not in text
    assert "HTTP Request" not in text  # a line per model request otherwise (shown with -vv, as Beam's own)


def test_a_run_prints_info_and_progress_lines_with_counts_and_eta(scenes_dir: pathlib.Path,
                                                                  tmp_path: pathlib.Path) -> None:
    # A captioner that takes 0.2 s per image, one at a time: recaption is seen half done.
    with FakeOpenAIServer(slow(0.2, (200, completion("A small red cube on a grey floor.")))) as server:
        res = finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(tmp_path / "o"),
                       "--captioner", f"openai:{server.url}?concurrency=1#m", "--batch-size", "1",
                       "--progress-every-s", "0.5")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    assert any(" INFO finehard: read 12, written 12" in l for l in lines), res.stderr[-3000:]
    progress = [l for l in lines if "INFO finehard.progress: progress:" in l]
    assert "sdk_worker" not in res.stderr and "apitools" not in res.stderr, res.stderr
    assert progress[0].endswith("12 samples through read -> dedup -> recaption -> expressions -> detect -> negatives")
    mid = [l for l in progress if "progress: recaption " in l and "ETA " in l]
    assert mid, "\n".join(progress)
    assert "read 12, dedup " in mid[0] and "/12 (" in mid[0]
    assert progress[-1].split("progress: ", 2)[2].startswith("done 12/12 (100.0%)")
    assert "sdk_worker" not in res.stderr and "apitools" not in res.stderr


def test_multi_process_runs_show_progress_not_beam_chatter(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    res = finehard("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(tmp_path / "o"),
                   "--direct_running_mode=multi_processing", "--direct_num_workers", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    progress = [l for l in res.stderr.splitlines() if "finehard.progress: progress:" in l]
    assert progress and "done 12/12 (100.0%)" in progress[-1], res.stderr
    beam_lines = [l for l in res.stderr.splitlines() if "apache_beam" in l or "BatchElements" in l
                  or l.startswith(("INFO:", "WARNING:"))]
    assert not beam_lines, beam_lines


def test_terminal_bars_show_every_stage_with_its_total(capsys) -> None:
    from pipeline.progress_view import ProgressView
    from shards.progress import write_count

    with ProgressView(["read", "recaption", "done"], total=5, tty=True) as view:
        write_count(view.dir, "read", "w1", 3)
        write_count(view.dir, "read", "w2", 2)  # two workers' counts add up
        write_count(view.dir, "failed:read", "w1", 1)
        write_count(view.dir, "recaption", "w1", 4)
    err = capsys.readouterr().err
    rows = {line.split()[0]: line for line in err.splitlines() if line.strip()}
    assert "5/5" in rows["read"] and "4/4" in rows["recaption"]  # recaption: 5 read less 1 dead while reading
    assert "0/5" in rows["done"]


def test_a_resumed_run_expects_only_the_samples_of_unfinished_shards(scenes_dir: pathlib.Path,
                                                                    tmp_path: pathlib.Path) -> None:
    import json

    out = tmp_path / "o"
    args = ("shards", "--input", str(scenes_dir / "manifest.jsonl"), "--output", str(out), "--samples-per-shard", "4")
    assert finehard(*args).returncode == 0
    redo = json.loads((out / "shard-00001_stats.json").read_text())["read"]
    (out / "shard-00001_stats.json").unlink()
    res = finehard(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming: 2 shard(s) already complete" in res.stderr  # the INFO line users never saw
    started = [l for l in res.stderr.splitlines() if "progress: started" in l]
    assert started and f"started, {redo} samples through" in started[0], res.stderr


def test_terminal_bars_leave_a_log_handler_with_a_closed_stream_alone(capsys, tmp_path: pathlib.Path) -> None:
    """A root handler whose stream was closed (left by the program embedding the run) must not stop the display."""
    from pipeline.progress_view import ProgressView
    from shards.progress import write_count

    closed = open(tmp_path / "log.txt", "w")  # noqa: SIM115 - closed on purpose below
    handler = logging.StreamHandler(closed)
    closed.close()
    logging.getLogger().addHandler(handler)
    try:
        with ProgressView(["read", "done"], total=2, tty=True) as view:
            write_count(view.dir, "read", "w1", 2)
    finally:
        logging.getLogger().removeHandler(handler)
    assert handler.stream is closed
    assert "2/2" in {line.split()[0]: line for line in capsys.readouterr().err.splitlines() if line.strip()}["read"]
