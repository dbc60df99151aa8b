"""The adaptive limit against a simulated first-in-first-out batch server (B slots, L s per request): no
threads, no clock, so the figures are exact. And the limit a run's next wave starts from."""
from __future__ import annotations

import heapq

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
        window.limiter._value = 77.0  # where this wave's limit ended (whatever the server's pace made it)
        release_engine(key)
        return start, window.limiter.value

    with FakeOpenAIServer(Slots(256, 0.05, lambda body: (200, completion(json.dumps(GOOD))))) as server:
        with limits_kept():
            first, learnt = wave(server.url)
            second, _ = wave(server.url)
        third, _ = wave(server.url)  # a later run starts afresh
    assert first == 8 and learnt == 77
    assert second == 77
    assert third == 8


def serve_shared(slots: int, seconds: float, requests: int, windows: int, server_says: bool) -> float:
    """Like :func:`serve`, for ``windows`` windows (worker processes) sharing the server, ``requests`` each; service
    times vary by a fifth either way (seeded). ``server_says``: each answer comes with the server's running and
    waiting counts (vLLM's /metrics). The server's busy share until the last answer."""
    import random

    rnd = random.Random(1)
    free = [0.0] * slots
    limits = [AdaptiveLimit() for _ in range(windows)]
    left, out = [requests] * windows, [0] * windows
    in_flight: list[tuple[float, int, float]] = []  # (answered at, window, sent at)
    now, busy = 0.0, 0.0

    def send(w: int) -> None:
        nonlocal busy
        while out[w] < limits[w].value and left[w]:
            start = max(now, heapq.heappop(free))
            took = seconds * rnd.uniform(0.8, 1.2)
            busy += took
            heapq.heappush(free, start + took)
            heapq.heappush(in_flight, (start + took, w, now))
            out[w], left[w] = out[w] + 1, left[w] - 1

    for w in range(windows):
        send(w)
    while in_flight:
        now, w, at = heapq.heappop(in_flight)
        out[w] -= 1
        if server_says:
            total = sum(out)
            limits[w].server_queue(min(total, slots), max(0, total - slots), out[w], left[w] > 0, now)
        limits[w].answered(at, now - at, bound=left[w] > 0, overloaded=False, now=now)
        send(w)
    return busy / (slots * now)


@pytest.mark.parametrize("slots", [8, 32])
def test_two_windows_that_read_the_server_s_queue_keep_it_full_together(slots: int) -> None:
    # growing per answer (or by a tenth of its own limit per round), the window with the larger share grew
    # faster and starved the other, whose last requests then trickled out alone: 63% busy at 32 slots
    assert serve_shared(slots, 1.0, 1000, 2, server_says=True) >= 0.95
