"""The slow start reads a server's own queue where it says (vLLM's /metrics): a big server fills in a fraction
of an answer time, a small one is not flooded, and a server without /metrics is asked once."""
from __future__ import annotations

import json
import math
from typing import Any

from core.adaptive_limit import AdaptiveLimit
from fake_openai_server import FakeOpenAIServer, Slots, completion
from stages.engines.server_metrics import metrics_url, parse_queue
from test_request_window import GOOD, ask_through_the_window

V1_PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-70B-Instruct"} 200.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-70B-Instruct"} 56.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-70B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-70B-Instruct"} 0.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 7.0
"""


def test_the_queue_gauges_are_summed_over_engines_and_a_page_without_them_says_nothing() -> None:
    assert parse_queue(V1_PAGE) == (256.0, 3.0)
    assert parse_queue("vllm:num_requests_running 4 1700000000000\nvllm:num_requests_waiting 0\n") == (4.0, 0.0)
    assert parse_queue("vllm:num_requests_running 4\n") is None  # no waiting gauge: no queue figure
    assert parse_queue('{"error": "not found"}') is None and parse_queue("") is None
    assert parse_queue("vllm:num_requests_running{a=\"}\"} oops\nvllm:num_requests_waiting 0\n") is None
    assert metrics_url("http://gpu:8000/v1") == metrics_url("http://gpu:8000/v1/") == "http://gpu:8000/metrics"
    assert metrics_url("https://proxy/llm") == "https://proxy/llm/metrics"


def test_the_limit_doubles_only_while_the_server_holds_all_of_ours_and_none_wait() -> None:
    limit = AdaptiveLimit()
    limit.server_queue(8, 0, in_flight=8, bound=True, now=0.0)
    assert limit.value == 16
    limit.server_queue(10, 0, in_flight=16, bound=True, now=0.1)
    assert limit.value == 16  # six of ours not there yet
    limit.server_queue(16, 0, in_flight=16, bound=False, now=0.2)
    assert limit.value == 16  # nothing waits for room
    limit.server_queue(40, 0, in_flight=16, bound=True, now=0.3)
    assert limit.value == 32  # other clients count too
    limit.server_queue(32, 1, in_flight=32, bound=True, now=0.4)
    assert limit.value == 32  # one waits: the server is full
    limit.slow_start = False
    limit.server_queue(40, 0, in_flight=32, bound=True, now=0.5)
    assert limit.value == 32  # after the slow start the rounds decide ...
    limit.server_queue(10, 0, in_flight=32, bound=False, now=0.6)
    assert limit.value == 32
    limit.server_queue(10, 2, in_flight=32, bound=True, now=0.7)
    assert limit.value == 32
    limit.server_queue(10, 0, in_flight=32, bound=True, now=0.8)  # ... but 30 of the 40 slots it ran are free now
    assert limit.value == 62


def round_of(limit: AdaptiveLimit, latency: float, now: float) -> None:
    for i in range(max(limit.value // 2, 4)):
        limit.answered(now - latency, latency, bound=True, overloaded=False, now=now)


def test_after_the_slow_start_the_server_s_queue_decides_cut_or_growth() -> None:
    limit = AdaptiveLimit(start=64)
    round_of(limit, 1.0, now=1.0)  # the baseline
    limit.slow_start = False
    limit.server_queue(256, 200, in_flight=64, bound=True, now=1.5)  # more waiting than half of those running
    round_of(limit, 1.0, now=2.0)  # however fast the answers came
    assert limit.value == 48 and limit.cuts == 1
    limit.server_queue(256, 20, in_flight=48, bound=True, now=2.5)
    round_of(limit, 1.4, now=3.5)  # slower answers, but a short queue: it grows
    # by half the square root of the server's batch (the same step for every window on it) per answer time: the
    # round took 1.4 (from 2.1 s to 3.5 s)
    assert limit.value == int(48 + 0.5 * math.sqrt(256) * 1.4)
    round_of(limit, 3.0, now=9.0)  # the figures are old now: the latency decides again
    assert limit.value < 54 and limit.cuts == 2


def answers_in_flight_at_the_first_answer(slots: int, seconds: float, n: int, metrics: bool) -> tuple[int, Any]:
    """How many requests the server held when it gave its first answer (and the server)."""
    held: list[int] = []
    server_box: list[FakeOpenAIServer] = []

    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        if not held:
            held.append(server_box[0].in_flight)
        return 200, completion(json.dumps(GOOD))

    batch = Slots(slots, seconds, reply)
    with FakeOpenAIServer(batch, metrics=batch.metrics if metrics else None) as server:
        server_box.append(server)
        window, answers = ask_through_the_window(server.url, n, "&retries=0")
    assert len(answers) == n and all(a == json.dumps(GOOD) for a in answers)
    return held[0], server


def test_a_big_server_that_reports_its_queue_is_filled_before_its_first_answer() -> None:
    # 256 slots, 1.5 s per answer: from the latency alone the limit is still 8 when the first answer comes
    held, server = answers_in_flight_at_the_first_answer(256, 1.5, 400, metrics=True)
    assert held > 32, held
    assert server.metrics_gets >= 2


def test_while_its_whole_limit_is_out_the_slow_start_reads_the_queue_often(monkeypatch: Any) -> None:
    # Read every 0.2 s, the queue let the limit double at most three times (8 -> 64) before a 0.6 s answer came
    # back; read every 0.05 s while the window is full, a 256-slot server is filled in a fraction of an answer.
    # On a clock of the test's own (no sleeping, no threads: under a loaded CI the real clock decides nothing):
    # the window's whole limit stays out with more requests ready, and the server holds them all.
    import types

    import stages.window as window_module
    from stages.window import RequestWindow

    now = [0.0]
    window = RequestWindow(None, "test", server_queue=lambda: None)
    window._ready.append((print, None, None, "k"))  # a request waiting for room (never sent: no threads run)

    def sleep(seconds: float) -> None:  # meanwhile the window fills whatever room its limit has
        now[0] += seconds
        window._in_flight = window.concurrency

    monkeypatch.setattr(window_module, "time", types.SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    asked: list[float] = []

    def ask() -> Any:
        if now[0] > 1.0:
            return None  # "the server does not say": the reader ends
        asked.append(now[0])
        return float(window._in_flight), 0.0  # the server runs every request sent, none waits

    window._watch_queue(ask)
    by_06 = [t for t in asked if t <= 0.6]
    assert len(by_06) >= 10, asked  # every 0.05 s while full (3 reads by 0.6 s at 0.2 s)
    assert window.concurrency >= 256  # 8 -> 320 in six reads


def test_a_small_server_that_reports_its_queue_is_not_flooded() -> None:
    held, server = answers_in_flight_at_the_first_answer(4, 0.3, 40, metrics=True)
    assert held <= 16, held  # at most twice its four slots: the first waiting request ends the doubling


def test_a_server_without_metrics_is_asked_once_and_grows_with_its_answers() -> None:
    held, server = answers_in_flight_at_the_first_answer(256, 0.5, 100, metrics=False)
    assert held <= 8 and server.metrics_gets == 1, (held, server.metrics_gets)
