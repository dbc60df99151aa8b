"""The request window of the server engines: requests flow across batch boundaries, records leave in
the order their answers come, and failures inside the window stay per sample (fake server on 127.0.0.1)."""
from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from core.engines import parse_spec
from fake_openai_server import FakeOpenAIServer, FullBatches, Slots, completion
from stages.negatives import NEGATIVE_ENGINES, apply_negatives
from transforms.negatives import GenerateNegatives
from stages.caption import CAPTIONERS
from transforms.recaption import Recaption
from stages.window import RequestWindow, engine_window


def image_records(n: int, red: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (16 + i, 12), "red" if i in red else "blue").save(buf, format="PNG")
        out.append({"key": f"k{i:03d}", "image_bytes": buf.getvalue(), "short_caption": f"alt {i}",
                    "width": 16 + i, "height": 12})
    return out


GOOD = ["a blue wooden chair", "a red metal chair", "a green plastic chair", "a small red wooden chair",
        "a striped red wooden chair", "a broken red wooden chair", "two red wooden chairs",
        "a white wicker chair", "a round black chair", "a folded yellow chair"]
CHAIRS = [f"a {size} red wooden chair" for size in ("tall", "new", "low", "heavy", "plain", "large", "narrow")]


def chair_records(n: int) -> list[dict[str, Any]]:
    """One region per record, each with its own expression (GOOD are valid negatives of every one)."""
    return [{"key": f"k{i}", "bbox_info": [{"bbox": [0, 0, 1, 1, 0.9], "short_expr": CHAIRS[i],
                                            "long_expr": "", "flag_short_neg": 0, "short_expr_negs": {}}]}
            for i in range(n)]


def chair_of(body: dict[str, Any]) -> int:
    return next(i for i, e in enumerate(CHAIRS) if f'"{e}"' in body["messages"][-1]["content"])


def image_of(body: dict[str, Any]) -> Image.Image:
    import base64

    url = next(p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def width_of(body: dict[str, Any]) -> int:
    return image_of(body).width


def test_a_server_is_kept_at_concurrency_requests_across_batch_boundaries() -> None:
    # The server answers only while it holds 4 requests: a client that waits for its batch of 4 to
    # come back before sending the next leaves it waiting at every batch boundary (a stall).
    server_reply = FullBatches(4, lambda body: (200, completion(f"A picture {width_of(body)} wide.")), grace=1.0)
    with FakeOpenAIServer(server_reply) as server:
        spec = CAPTIONERS.resolve(f"openai:{server.url}#m")
        with BeamTestPipeline() as p:
            out = (p | beam.Create(image_records(24))
                   | Recaption(spec, batch_size=4, engine_options={"concurrency": 4, "timeout": 30, "retries": 0})
                   | beam.Map(lambda r: (r["key"], r.get("caption"))))
            assert_that(out, equal_to([(f"k{i:03d}", f"A picture {16 + i} wide.") for i in range(24)]))
    assert len(server.requests) == 24
    assert server.max_in_flight == 4  # never more than the concurrency
    assert server_reply.stalls <= 4, f"the server waited for requests {server_reply.stalls} times"


def test_records_leave_in_the_order_their_answers_come_without_loss() -> None:
    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(0.3 * (4 - chair_of(body)))  # the first record's answer comes last
        return 200, completion(json.dumps(GOOD))

    def in_order(got: list[tuple[str, float, int]]) -> None:
        keys = [k for k, _, _ in sorted(got, key=lambda g: g[1])]
        assert keys == ["k4", "k3", "k2", "k1", "k0"], keys
        assert all(flag == 1 for _, _, flag in got)

    with FakeOpenAIServer(reply) as server:
        spec = parse_spec(f"openai:{server.url}?concurrency=8&retries=0&structured=json_schema#m")
        with BeamTestPipeline() as p:
            out = (p | beam.Create(chair_records(5)) | GenerateNegatives(spec, batch_size=16)
                   | beam.Map(lambda r: (r["key"], time.monotonic(), r["bbox_info"][0]["flag_short_neg"])))
            assert_that(out, in_order)


def test_a_failure_inside_the_window_dead_letters_that_sample_only() -> None:
    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        pixel = image_of(body).getpixel((0, 0))
        return (503, {"error": "overloaded"}) if pixel[0] > 200 else (200, completion("A blue picture."))

    with FakeOpenAIServer(reply) as server:
        spec = CAPTIONERS.resolve(f"openai:{server.url}#m")
        with BeamTestPipeline() as p:
            out = (p | beam.Create(image_records(10, red=(2, 7)))
                   | Recaption(spec, engine_options={"concurrency": 3, "timeout": 10, "retries": 1})
                   | beam.Map(lambda r: (r["key"], r.get("caption"), (r.get("_dead") or {}).get("reason"))))
            assert_that(out, equal_to([(f"k{i:03d}", None, "caption_request_failed") if i in (2, 7)
                                       else (f"k{i:03d}", "A blue picture.", None) for i in range(10)]))
    assert len(server.requests) == 8 + 2 * 2  # the two red images were asked twice (one retry), no more


def test_the_window_gives_the_same_negatives_as_a_batch_including_re_asks() -> None:
    # Every expression's first answer is invalid (9 negatives): the re-ask with the next seed is valid.
    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        first = body["seed"] == seed0[chair_of(body)]
        return 200, completion(json.dumps(GOOD[:9] if first else GOOD))

    from stages.negatives_prompt import request_seed

    records = chair_records(6) + [{"key": "dup", "bbox_info": chair_records(2)[1]["bbox_info"] * 2}]
    seed0 = {i: request_seed(CHAIRS[i], 0) for i in range(6)}
    with FakeOpenAIServer(reply) as server:
        spec = parse_spec(f"openai:{server.url}?concurrency=4&retries=2&structured=json_schema#m")
        batch = apply_negatives(NEGATIVE_ENGINES.build(spec), json.loads(json.dumps(records)), retries=2)
        asked_by_batch = len(server.requests)
        with BeamTestPipeline() as p:
            out = (p | beam.Create(records) | GenerateNegatives(spec, retries=2)
                   | beam.Map(lambda r: json.dumps(r, sort_keys=True)))
            assert_that(out, equal_to([json.dumps(r, sort_keys=True) for r in batch]))
    assert all(reg["flag_short_neg"] == 1 for r in batch for reg in r["bbox_info"])
    assert asked_by_batch == 12 and len(server.requests) - asked_by_batch <= 14


def test_a_window_never_has_more_than_its_concurrency_in_flight_and_loses_no_answer() -> None:
    import queue

    open_now, most, lock = [0], [0], threading.Lock()

    def call(i: int) -> int:
        with lock:
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])
        time.sleep(0.01)
        with lock:
            open_now[0] -= 1
        if i % 7 == 0:
            raise ValueError(f"no {i}")
        return i * 2

    window, done = RequestWindow(3, "test"), queue.Queue()
    for i in range(40):
        window.submit(call, i, done, i)
    got = dict(done.get(timeout=10) for _ in range(40))
    window.close()
    assert most[0] == 3 and sorted(got) == list(range(40))
    assert all(isinstance(got[i], ValueError) if i % 7 == 0 else got[i] == 2 * i for i in range(40))
    assert window.totals["requests"] == 40 and window.totals["failed"] == 6
    assert window.totals["in_flight_max"] == 3 and "concurrency 3" in window.describe()



def test_summary_and_stats_show_requests_in_flight_against_the_concurrency(scenes_dir: Any, tmp_path: Any,
                                                                         capsys: Any) -> None:
    from conftest import run_pipeline
    from shards.stats import stats_main

    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(0.05)
        return 200, completion("A picture of shapes.")

    with FakeOpenAIServer(reply) as server:
        summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "o", "--stages", "recaption",
                               "--captioner", f"openai:{server.url}#m", "--caption-concurrency", "3")
    m = summary["stage_metrics"]["recaption"]
    assert summary["written"] == 12 and m["samples"] == 12 and m["requests"] == 12 == len(server.requests)
    assert m["failed_requests"] == 0 and m["concurrency"] == 3 and 1 <= m["in_flight_max"] <= 3
    assert 0 < m["in_flight_mean"] <= 3 and m["answer_latency_s"] >= 0.05 and m["requests_per_second"] > 0
    assert stats_main([str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "12 requests (0 failed), in flight" in out and "of concurrency 3" in out


def test_in_process_engines_get_full_batches_from_the_first_and_vllm_hundreds_of_prompts() -> None:
    from transforms.inference import EngineModelHandler, SpacyExpressionHandler

    def kwargs(raw: str, size: int) -> dict[str, int]:
        return EngineModelHandler(NEGATIVE_ENGINES, parse_spec(raw), apply_negatives, batch_size=size
                                  ).batch_elements_kwargs()
    assert kwargs("stub", 16) == {"min_batch_size": 16, "max_batch_size": 16}
    assert kwargs("vllm:/models/llama", 16) == {"min_batch_size": 256, "max_batch_size": 256}
    assert kwargs("vllm:/models/llama", 512) == {"min_batch_size": 512, "max_batch_size": 512}
    assert SpacyExpressionHandler(batch_size=64).batch_elements_kwargs()["min_batch_size"] == 64


def ask_through_the_window(url: str, n: int, options: str = "") -> tuple[RequestWindow, list[Any]]:
    """``n`` negatives requests through the request window of an ``openai:`` engine (no concurrency set
    unless ``options`` sets it), the way the stage sends them: as many as the window has room for, looking again
    every ``WAIT_S`` while no answer comes."""
    import queue

    from stages.window import WAIT_S

    engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{url}?structured=none&timeout=30{options}#m"))
    window, done, answers, sent = engine_window(engine, "test"), queue.Queue(), [], 0
    deadline = time.monotonic() + 60
    while len(answers) < n:
        while sent < n and window.has_room():
            window.submit(engine.call, (CHAIRS[sent % len(CHAIRS)], sent), done, sent)
            sent += 1
        try:
            answers.append(done.get(timeout=WAIT_S)[1])
        except queue.Empty:
            assert time.monotonic() < deadline, f"{len(answers)} of {n} answers in 60 s"
    window.close()
    return window, answers


def test_with_no_concurrency_set_the_window_fills_a_server_with_many_slots() -> None:
    # a vLLM-like server with room for 256 requests at once: eight at a time would leave it nearly idle
    server_reply = Slots(256, 0.3, lambda body: (200, completion(json.dumps(GOOD))))
    with FakeOpenAIServer(server_reply) as server:
        window, answers = ask_through_the_window(server.url, 400, "&retries=0")
    assert server.max_in_flight > 32, server.max_in_flight
    assert all(a == json.dumps(GOOD) for a in answers) and window.adaptive
    assert window.totals["in_flight_max"] <= window.totals["limit_max"] <= 320
    assert "adaptive concurrency" in window.describe()


def test_with_no_concurrency_set_the_window_backs_off_from_a_small_server_that_queues() -> None:
    # four slots: eight requests in flight (the old fixed default) double every answer's time
    server_reply = Slots(4, 0.1, lambda body: (200, completion(json.dumps(GOOD))))
    with FakeOpenAIServer(server_reply) as server:
        window, answers = ask_through_the_window(server.url, 200, "&retries=0")
    assert all(a == json.dumps(GOOD) for a in answers) and len(server.requests) == 200
    assert window.concurrency < 8 and window.limiter.cuts >= 1, window.describe()


def test_with_no_concurrency_set_the_window_backs_off_when_the_server_answers_429() -> None:
    # a server that refuses (429, Retry-After) whatever comes beyond 4 at once
    open_now, refused, lock = [0], [0], threading.Lock()

    def reply(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]] | tuple[int, Any]:
        with lock:
            if open_now[0] >= 4:
                refused[0] += 1
                return 429, {"error": "too many requests"}, {"Retry-After": "0"}
            open_now[0] += 1
        time.sleep(0.1)
        with lock:
            open_now[0] -= 1
        return 200, completion(json.dumps(GOOD))

    with FakeOpenAIServer(reply) as server:
        window, answers = ask_through_the_window(server.url, 150, "&retries=4")
    assert sum(a == json.dumps(GOOD) for a in answers) >= 145  # the refused ones were asked again
    limit_mean = window.totals["limit_seconds"] / window.totals["busy_seconds"]  # it swings: cut, grown again, cut
    assert limit_mean <= 6 and window.limiter.cuts >= 1, window.describe()
    assert refused[0] < 0.25 * len(server.requests), (refused[0], len(server.requests))


def test_a_concurrency_that_is_set_keeps_the_window_fixed() -> None:
    server_reply = Slots(256, 0.05, lambda body: (200, completion(json.dumps(GOOD))))
    with FakeOpenAIServer(server_reply) as server:
        window, answers = ask_through_the_window(server.url, 60, "&retries=0&concurrency=5")
    assert window.concurrency == 5 and server.max_in_flight == 5


def test_summary_and_stats_say_when_the_concurrency_adapted(scenes_dir: Any, tmp_path: Any, capsys: Any) -> None:
    from conftest import run_pipeline
    from shards.stats import stats_main

    with FakeOpenAIServer(Slots(64, 0.05, lambda body: (200, completion("A picture of shapes.")))) as server:
        summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "o", "--stages", "recaption",
                               "--captioner", f"openai:{server.url}#m")
    m = summary["stage_metrics"]["recaption"]
    assert summary["written"] == 12 and m["requests"] == 12 and m["adaptive"] == 1
    assert 1 <= m["in_flight_max"] <= m["concurrency"] <= 320 and 0 < m["concurrency_mean"] <= m["concurrency"], json.dumps(m)
    assert stats_main([str(tmp_path / "o")]) == 0
    assert "of an adaptive concurrency (" in capsys.readouterr().out



def test_with_two_servers_the_negatives_start_while_captions_are_still_being_asked(tmp_path: Any) -> None:
    # the local runner materialised a Flatten right after the captioner, so no record reached the stages after it
    # before every caption was in: a negatives server sat idle for the whole captioning, and the other way round
    import re

    from conftest import run_pipeline
    from core.synthetic import SHAPES, write_scenes
    from model_stubs.negatives import StubNegatives

    write_scenes(str(tmp_path / "in"), 160, seed=5)
    captioned: list[float] = []
    asked: list[float] = []

    def caption(body: dict[str, Any]) -> tuple[int, Any]:
        captioned.append(time.monotonic())
        return 200, completion(" ".join(f"There is a {shape} in the picture." for shape in SHAPES))

    def negatives(body: dict[str, Any]) -> tuple[int, Any]:
        asked.append(time.monotonic())
        expression = re.search(r'Object description: "(.*)"', body["messages"][-1]["content"]).group(1)
        return 200, completion(json.dumps(StubNegatives._one(expression)))

    with FakeOpenAIServer(Slots(2, 0.02, caption)) as captioner, FakeOpenAIServer(negatives) as negatives_server:
        summary = run_pipeline(tmp_path / "in" / "manifest.jsonl", tmp_path / "o", "--detector", "stub",
                               "--captioner", f"openai:{captioner.url}#m", "--model-cache", "none",
                               "--negatives", f"openai:{negatives_server.url}?structured=none#m")
    assert summary["written"] == 160 and summary["reconciled"] is True
    assert len(captioned) == 160 and asked, (len(captioned), len(asked))
    assert min(asked) < max(captioned), "the negatives waited for the last caption"


READ_AT: list[float] = []  # when the reader handed on each record (module level: Beam pickles the reader by reference)


def _timed_read(*args: Any, **kwargs: Any) -> Any:
    from inputs.reader import read_and_check

    for rec in read_and_check(*args, **kwargs):
        READ_AT.append(time.monotonic())
        yield rec


def test_a_local_run_asks_its_first_caption_before_the_last_image_is_read(tmp_path: Any, monkeypatch: Any) -> None:
    # a Reshuffle between the read and the model stages held every record of a one-worker local run (or wave)
    # until the last one was read and checked: the model server idled through the whole read
    import transforms.read
    from conftest import run_pipeline
    from core.synthetic import write_scenes

    write_scenes(str(tmp_path / "in"), 300, seed=6)
    monkeypatch.setattr(transforms.read, "read_and_check", _timed_read)
    READ_AT.clear()
    asked: list[float] = []

    def caption(body: dict[str, Any]) -> tuple[int, Any]:
        asked.append(time.monotonic())
        return 200, completion("There is a red circle in the picture.")

    with FakeOpenAIServer(Slots(8, 0.01, caption)) as server:
        summary = run_pipeline(tmp_path / "in" / "manifest.jsonl", tmp_path / "o", "--stages", "recaption",
                               "--no-dedup", "--captioner", f"openai:{server.url}#m", "--model-cache", "none")
    assert summary["written"] == 300 and summary["reconciled"] is True
    assert len(READ_AT) == 300 and len(asked) == 300, (len(READ_AT), len(asked))
    assert min(asked) < max(READ_AT), "the first caption was asked only after every image was read"


def test_a_windowed_negatives_stage_parses_the_expressions_of_many_records_in_one_go(monkeypatch: Any) -> None:
    """spaCy costs less than half as much per phrase in a batch: the stage parses a batch of records'
    expressions together, not each record's one or two as it comes (the requests still leave one by one)."""
    import stages.text as text

    parsed: list[int] = []
    nlp = text._load_nlp()

    class Counting:
        def pipe(self, texts: list[str], **kwargs: Any) -> Any:
            parsed.append(len(texts))
            return nlp.pipe(texts, **kwargs)

    monkeypatch.setattr(text, "_CACHE", {})  # nothing parsed before
    monkeypatch.setattr(text, "_load_nlp", lambda: Counting())
    with FakeOpenAIServer(lambda body: (200, completion(json.dumps(GOOD)))) as server:
        spec = parse_spec(f"openai:{server.url}?concurrency=2&retries=0&structured=json_schema#m")
        with BeamTestPipeline() as p:
            out = (p | beam.Create(chair_records(7)) | GenerateNegatives(spec)
                   | beam.Map(lambda r: (r["key"], r["bbox_info"][0]["flag_short_neg"])))
            assert_that(out, equal_to([(f"k{i}", 1) for i in range(7)]))
    assert len(server.requests) == 7  # one request per record, as before
    assert max(parsed) == 7, parsed  # the seven records' expressions in one nlp.pipe


def test_a_captioner_window_builds_its_jobs_on_several_threads_at_once() -> None:
    """Opening, resizing and JPEG-encoding an image is the captioner's CPU work (~45 ms for a 1600 x 1200 photo;
    Pillow lets go of the GIL there): on one thread a process fed a server ~20 photos a second."""
    from apache_beam.transforms.window import GlobalWindow

    from stages.caption import CaptionJob
    from transforms.window import WindowedStage

    both = threading.Barrier(2, timeout=10)

    def make_job(engine: Any, record: dict[str, Any]) -> CaptionJob:
        both.wait()  # passes only while two jobs are being built at once (BrokenBarrierError otherwise)
        return CaptionJob(engine, record)

    with FakeOpenAIServer(lambda body: (200, completion(f"A picture {width_of(body)} wide."))) as server:
        spec = CAPTIONERS.resolve(f"openai:{server.url}#m")
        stage = WindowedStage(CAPTIONERS, spec, make_job, {"concurrency": 4, "timeout": 30, "retries": 0},
                              build_threads=2)
        stage.setup()
        try:
            stage.start_bundle()
            out = [r for rec in image_records(6) for r in stage.process(rec, 0, GlobalWindow())]
            out += [wv.value for wv in stage.finish_bundle()]
        finally:
            stage.teardown()
    assert sorted((r["key"], r["caption"]) for r in out) == [(f"k{i:03d}", f"A picture {16 + i} wide.")
                                                            for i in range(6)]
    assert len(server.requests) == 6
