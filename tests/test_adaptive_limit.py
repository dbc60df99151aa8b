"""The adaptive limit against a simulated first-in-first-out batch server (B slots, L s per request): no
threads, no clock, so the figures are exact. And the limit a run's next wave starts from."""
from __future__ import annotations

import heapq
from typing import Any

import pytest

from core.adaptive_limit import MOST, AdaptiveLimit


def serve(slots: int, seconds: float, requests: int, limit: AdaptiveLimit) -> tuple[float, list[tuple[float, int]]]:
    """``requests`` requests, all ready at 0, sent while ``limit`` has room; the server's busy share from the
    first request to the last answer, and (time, limit) after each answer."""
    free = [0.0] * slots  # when each slot frees; taken in sending order: first in, first out
    in_flight: list[tuple[float, float]] = []  # (answered at, sent at)
    now, sent, trace = 0.0, 0, []
    while sent < requests or in_flight:
        while len(in_flight) < limit.value and sent < requests:
            start = max(now, heapq.heappop(free))
            heapq.heappush(free, start + seconds)
            heapq.heappush(in_flight, (start + seconds, now))
            sent += 1
        now, at = heapq.heappop(in_flight)
        limit.answered(at, now - at, bound=sent < requests, overloaded=False, now=now)
        trace.append((now, limit.value))
    return requests * seconds / (slots * now), trace


@pytest.mark.parametrize("slots", [64, 256])
def test_the_slow_start_doubles_the_limit_every_answer_time(slots: int) -> None:
    # from 8: 16, 32, 64, 128, 256 after five answer times (the first one gives the baseline); it grew by half
    # that when every round's end forgot the answers still in flight (eleven answer times to 256 slots)
    _, trace = serve(slots, 4.0, 20 * slots, AdaptiveLimit())
    reached = next(t for t, value in trace if value >= slots)
    assert reached <= 4.0 * (1 + (slots // 8).bit_length()), (slots, reached)


@pytest.mark.parametrize("slots,seconds", [(8, 1.0), (32, 1.0), (32, 0.2), (256, 4.0)])
def test_once_grown_the_limit_keeps_the_server_full_without_a_long_queue(slots: int, seconds: float) -> None:
    busy, trace = serve(slots, seconds, 300 * slots, AdaptiveLimit())
    settled = [value for t, value in trace if t > trace[-1][0] / 2]
    assert busy >= 0.97, busy
    # a request waits at most about one service time in the queue (1.2-1.5 x the slots in flight)
    assert sum(value <= 2 * slots for value in settled) >= 0.95 * len(settled), (min(settled), max(settled))
    assert max(settled) <= MOST


def test_a_small_server_is_found_without_queueing_for_long() -> None:
    _, trace = serve(4, 1.0, 2000, AdaptiveLimit())
    settled = [value for t, value in trace if t > 100]
    assert max(settled) <= 8 and min(settled) >= 2, (min(settled), max(settled))


def test_the_next_wave_of_a_run_starts_where_the_last_wave_s_limit_ended() -> None:
    from core.engines import parse_spec
    from fake_openai_server import FakeOpenAIServer, Slots, completion
    from stages.negatives import NEGATIVE_ENGINES
    from stages.window import engine_key, engine_window, limits_kept, release_engine, shared_engine
    from test_request_window import CHAIRS, GOOD
    import json
    import queue

    def wave(url: str) -> tuple[int, int]:
        """A pipeline's share of requests: the limit its window started from, and the one it ended with."""
        spec, options = parse_spec(f"openai:{url}?structured=none&timeout=30&retries=0#m"), {}
        key = engine_key(NEGATIVE_ENGINES, spec, options)
        engine = shared_engine(NEGATIVE_ENGINES, spec, options)
        window, done, answered, sent = engine_window(engine, "test", key), queue.Queue(), 0, 0
        start = window.concurrency
        while answered < 300:
            while sent < 300 and window.has_room():
                window.submit(engine.call, (CHAIRS[sent % len(CHAIRS)], sent), done, sent)
                sent += 1
            done.get(timeout=60)
            answered += 1
        end = window.concurrency
        release_engine(key)
        return start, end

    with FakeOpenAIServer(Slots(256, 0.05, lambda body: (200, completion(json.dumps(GOOD))))) as server:
        with limits_kept():
            first, learnt = wave(server.url)
            second, _ = wave(server.url)
        third, _ = wave(server.url)  # a later run starts afresh
    assert first == 8 and learnt > 16, (first, learnt)
    assert second == learnt, (second, learnt)
    assert third == 8
