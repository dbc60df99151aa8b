"""The pipeline benchmarks run end to end on tiny inputs and print their ratio line (no timing asserted)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import append_benchmark, make_input, run_child  # noqa: E402

RATIO = r"ratio=(\d+\.\d\d|nan|n/a \(.+\))"


def run_bench(script: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``bench/<script>.py`` with ``--no-doc``; its stdout lines (fails the test on a non-zero exit)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--no-doc", *args],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("inputs"))


def test_make_input_writes_the_scenes_once(tiny_cache: str) -> None:
    manifest = make_input(5, seed=3, cache=tiny_cache)
    rows = Path(manifest).read_text().splitlines()
    assert len(rows) == 5 and all((Path(manifest).parent / __import__("json").loads(r)["url"]).is_file() for r in rows)
    mtime = os.path.getmtime(manifest)
    assert make_input(5, seed=3, cache=tiny_cache) == manifest and os.path.getmtime(manifest) == mtime


def test_run_child_sees_the_peak_memory_of_a_grandchild() -> None:
    # A child that starts a grandchild holding ~300 MiB: the tree's peak must include it.
    grandchild = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
    code = textwrap.dedent(f"""
        import subprocess, sys
        subprocess.run([sys.executable, "-c", {grandchild!r}], check=True)
        print('{{"ok": 1}}')
    """)
    run = run_child([sys.executable, "-c", code], interval=0.02)
    assert run.returncode == 0 and run.result() == {"ok": 1}
    assert run.peak_tree_rss_mib > 300
    assert run.maxrss_mib > 300  # the kernel's figure for the waited-for tree agrees


def test_append_benchmark_files_the_new_figure_first_and_keeps_the_old_one_in_history(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nearlier section\n\n## Other (bench/other.py)\n\n### Other — 2026-01-01 00:00 UTC\n\nx\n")
    append_benchmark("Thing", "bench/thing.py", "n=3", ["| a |", "|---|", "| 1 |"], "thing: ratio=1.00", str(doc))
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nearlier section\n\n## Other (bench/other.py)\n")
    assert re.search(r"\n## Thing \(bench/thing\.py\)\n\n### Thing \(bench/thing\.py\) — \d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert "Machine: " in text and "Setup: n=3" in text and text.rstrip().endswith("thing: ratio=1.00")
    append_benchmark("Thing", "bench/thing.py", "n=4", ["| a |", "|---|", "| 2 |"], "thing: ratio=2.00", str(doc))
    thing = doc.read_text().split("## Thing (bench/thing.py)\n", 1)[1]
    assert thing.index("Setup: n=4") < thing.index("### History") < thing.index("#### Thing (bench/thing.py) — ")
    assert thing.index("#### Thing") < thing.index("Setup: n=3") and thing.count("## Thing") == 2  # nothing lost
    assert doc.read_text().count("### Other — 2026-01-01") == 1  # other benches untouched


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_pipeline_overhead_runs_and_prints_its_ratio() -> None:
    lines = run_bench("pipeline_overhead", "--n", "24")
    assert re.fullmatch(r"pipeline_overhead: " + RATIO, lines[-1])
    assert any("byte-identical shards from both: True" in line for line in lines)  # same work both ways


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_scaling_runs_every_size() -> None:
    lines = run_bench("scaling", "--n", "32")
    assert re.fullmatch(r"scaling: " + RATIO, lines[-1])
    assert [int(line.split("|")[1]) for line in lines if re.match(r"\| \d+ \|", line)] == [4, 8, 16, 32]


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_scaling_on_the_portable_runner_reports_the_sdk_worker() -> None:
    lines = run_bench("scaling", "--n", "8", "--portable", "--pipeline-args=--no-dedup")
    assert re.fullmatch(r"scaling: " + RATIO, lines[-1])
    header = next(line for line in lines if line.startswith("| N |"))
    assert "SDK worker pool peak RSS MiB" in header
    rows = [line.split("|")[1:-1] for line in lines if re.match(r"\| \d+ \|", line)]
    assert [int(r[0]) for r in rows] == [1, 2, 4, 8] and all(int(r[-1]) == int(r[0]) for r in rows)
    column = header.split("|")[1:-1].index(" SDK worker pool peak RSS MiB ")
    assert all(float(r[column]) > 250 for r in rows)  # the worker itself, spaCy loaded (an idle pool is < 100)


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_workers_runs_one_and_two_workers() -> None:
    lines = run_bench("workers", "--n", "16", "--repeats", "1")
    assert re.fullmatch(r"workers: " + RATIO, lines[-1])
    table = "\n".join(lines)
    assert "| multi_processing, 1 worker |" in table and "| multi_processing, 2 workers |" in table
    assert all(line.rstrip(" |").endswith("| 16") for line in lines if line.startswith("| multi_processing"))


def test_gpu_engines_says_why_it_cannot_run_here() -> None:
    import torch

    lines = run_bench("gpu_engines", env={"FINEHARD_VLLM_MODEL": ""})  # no model folder given: never measures
    if torch.cuda.is_available():
        assert re.fullmatch(r"gpu_engines: ratio=n/a \((no vllm|no model: .+)\)", lines[-1])
    else:
        assert lines[-1] == "gpu_engines: ratio=n/a (no GPU)"
    assert lines[0].startswith("gpu_engines: skipped: ")


FAKE_VLLM = '''
"""A stand-in vllm: ten colour swaps for any prompt, with token ids."""
import json, types
from . import sampling_params
__version__ = "0.0-fake"

class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw

class LLM:
    def __init__(self, model, **kw):
        assert kw.get("load_format") == "dummy"

    def chat(self, conversations, sampling_params=None, use_tqdm=True):
        assert len(conversations) == len(sampling_params)
        text = json.dumps([f"a {c} thing" for c in "red green blue pink gray black white brown tan teal".split()])
        done = types.SimpleNamespace(text=text, finish_reason="stop", token_ids=[1] * 25)
        return [types.SimpleNamespace(outputs=[done]) for _ in conversations]
'''


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_gpu_engines_measures_both_sides_with_a_stand_in_vllm(tmp_path: Path) -> None:
    pkg = tmp_path / "site" / "vllm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_VLLM)
    (pkg / "sampling_params.py").write_text("class StructuredOutputsParams:\n    def __init__(self, **kw):\n"
                                            "        self.kw = kw\n")
    (tmp_path / "model").mkdir()
    lines = run_bench("gpu_engines", "--assume-gpu", "--model", str(tmp_path / "model"), "--n", "12",
                      env={"PYTHONPATH": str(tmp_path / "site")})
    assert re.fullmatch(r"gpu_engines: " + RATIO, lines[-1]) and "n/a" not in lines[-1]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in lines if line.startswith("| ")}
    pipe, direct = rows["pipeline (whole run minus engine load)"], rows["vLLM direct (one LLM.chat)"]
    # The direct call replays exactly the pipeline's requests: same count, same tokens (25 each).
    assert pipe == direct and int(pipe[0]) > 0 and int(pipe[1]) == 25 * int(pipe[0])


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_negatives_quality_judges_every_local_engine_and_rules_meets_its_goal() -> None:
    lines = run_bench("negatives_quality", "--n-llm", "0")  # SmolLM2 is skipped here: minutes on two cores
    assert re.fullmatch(r"negatives_quality: " + RATIO, lines[-1])
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines if re.match(r"\| \w", line)}
    assert {"rules", "stub"} <= set(rows) and int(rows["rules"][0]) >= 100  # at least 100 phrases
    assert any(line.startswith("llama-cpp: skipped: ") for line in lines)  # said, not silently left out
    share = float(re.search(r"rules acceptable share (\d\.\d+)", "\n".join(lines)).group(1))
    assert share >= 0.98, "\n".join(lines)


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_peers_times_every_contender_and_says_when_img2dataset_is_left_out() -> None:
    lines = run_bench("peers", "--n", "12", "--rounds", "1", "--no-img2dataset")
    assert lines[0] == "peers: skipped img2dataset: img2dataset not asked for (--no-img2dataset)"
    table = "\n".join(lines)
    for row in ("finehard ingest, in-process", "finehard ingest, 2 workers", "plain loop (PIL decode + TarWriter)"):
        assert f"| {row} |" in table
    assert re.fullmatch(r"peers: " + RATIO, lines[-1])


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_shuffle_bytes_measures_every_boundary_with_the_bytes_riding_and_re_read() -> None:
    from bench.shuffle_bytes import BOUNDARIES, RUNS

    lines = run_bench("shuffle_bytes", "--n", "6")
    assert re.fullmatch(r"shuffle_bytes: " + RATIO, lines[-1])
    cells = {line.split("|")[1].strip(): dict(zip((c for c, *_ in RUNS), (c.strip() for c in line.split("|")[2:-1])))
             for line in lines if line.startswith("| ") and not line.startswith("| boundary")}
    assert list(cells) == [row for row, _ in BOUNDARIES]
    spill = cells.pop("after spill")
    assert all((spill[c] == "-") is (not distributed) for c, _, distributed, _ in RUNS)  # only the new chain has it
    size = {row: {c: int(v.replace(",", "")) for c, v in by_run.items()} for row, by_run in cells.items()}
    group = size["group by shard"]
    assert group["folder, before"] > 10 * group["folder, after"] and group["tar, before"] > 10 * group["tar, after"]
    assert group["tar.gz, after"] == group["tar.gz, before"]  # nowhere to put them: the bytes still ride
    assert group["tar.gz, before"] > 10 * group["tar.gz, after, --spill-dir"]
    assert float(lines[-1].split("=")[1]) > 10


@pytest.mark.slow  # a whole benchmark in subprocesses
def test_launcher_measures_every_input_kind_against_a_bare_baseline() -> None:
    lines = run_bench("launcher", "--sizes", "20,200")
    assert re.fullmatch(r"launcher: " + RATIO, lines[-1]) and "n/a" not in lines[-1]
    rows = [line.split("|")[1:3] for line in lines if line.startswith("| ") and not line.startswith("| input")]
    assert [(name.strip(), n.strip()) for name, n in rows] == [("baseline (same imports, no input)", "")] + [
        (name, n) for name in ("folder (subfolders of 1000)", "flat folder", "jsonl manifest", "parquet manifest")
        for n in ("20", "200")]
    assert any(line.startswith("flat folder: ") and "MiB of peak RSS per million files" in line for line in lines)


def test_train_memory_measures_both_loss_schemes_per_rank() -> None:
    lines = run_bench("train_memory", "--batch", "256", "--dim", "16")
    assert re.fullmatch(r"train_memory: " + RATIO, lines[-1])
    rows = [line for line in lines if line.startswith("| full") or line.startswith("| rank-local")]
    assert len(rows) == 2 and all(len(r.split("|")[3].split(",")) == 2 for r in rows)  # one peak per rank


def test_saturation_measures_a_fake_batch_server_and_a_simulated_device() -> None:
    lines = run_bench("saturation", "--quick", "--n", "16", "--only", "captions,device")
    rows = [line for line in lines if line.startswith("| captions") or line.startswith("| device")]
    assert len(rows) == 3 and all(row.rstrip(" |").endswith("yes") for row in rows)  # every sample written
    assert re.fullmatch(r"saturation: " + RATIO, lines[-1])


def test_busy_from_launch_counts_the_time_before_the_first_request_as_idle() -> None:
    from bench.saturation import busy_report

    log = [(10.0, 10.0, 11.0), (10.0, 10.0, 11.0)]  # (arrived, started, answered): both slots busy 10-11 s
    report = busy_report(log, 2, launch=0.0)
    assert report["busy"] == 1.0 and report["first_request_s"] == 10.0
    assert abs(report["busy_from_launch"] - 2.0 / 22.0) < 1e-9  # 2 slot-seconds used of 2 slots x 11 s


def test_the_best_possible_busy_share_counts_the_last_round_s_empty_slots() -> None:
    from bench.saturation import busy_report

    # five requests on four slots: two rounds of one second, the second with three slots empty
    log = [(0.0, 0.0, 1.0)] * 4 + [(0.0, 1.0, 2.0)]
    report = busy_report(log, 4, launch=0.0)
    assert report["busy"] == report["best"] == 5 / 8


def test_the_bench_server_hands_a_freed_slot_to_the_next_queued_request_at_once() -> None:
    """A queued request starts when the slot it waits for frees (its L seconds from then), in arrival order.
    A server that woke every waiter at each freed slot kept slots empty with requests queued."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.saturation import BatchServer

    server = BatchServer(slots=2, seconds=0.05)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: server.serve({"messages": [{"role": "user", "content": str(i)}]}),
                                range(6)))
    assert len(answers) == 6 and len(server.log) == 6
    by_start = sorted(server.log, key=lambda r: r[1])
    queued = by_start[2:]  # two slots: the first two start on arrival, the other four wait for one
    ends = sorted(e for _, _, e in server.log)
    for (_, start, end) in queued:
        assert start in ends and end - start >= 0.05  # started at the very moment a request ended
    assert [a for a, _, _ in queued] == sorted(a for a, _, _ in queued)  # first in, first out
    assert server.queue_page().split()[1::2] == ["0.0", "0.0"]  # nothing running or waiting at the end


def test_caption_feed_measures_one_build_thread_against_the_default() -> None:
    lines = run_bench("caption_feed", "--n", "4", "--width", "320", "--height", "240", "--slots", "8",
                      "--seconds", "0.05")
    rows = [line for line in lines if line.startswith("| 1 thread") or line.startswith("| default")]
    assert len(rows) == 2 and all(row.rstrip(" |").endswith("yes") for row in rows)  # every sample written
    assert rows[0].split("|")[2].strip() == "1"  # the baseline really built its jobs on one thread
    assert re.fullmatch(r"caption_feed: " + RATIO, lines[-1])
