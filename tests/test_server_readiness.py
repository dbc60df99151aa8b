"""A worker waits for its OpenAI-compatible server (vLLM still loading) and backs off as the server asks."""
from __future__ import annotations

import socket
import threading

import pytest

from fake_openai_server import FakeOpenAIServer, completion, scripted
from stages.engines import openai_client
from stages.engines.openai_client import OpenAIClient


def _reserved_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_client_waits_for_a_server_that_starts_late() -> None:
    port = _reserved_port()
    url = f"http://127.0.0.1:{port}/v1"
    ready = [(503, {"error": "loading"})] * 2 + [(200, {"object": "list", "data": [{"id": "m"}]})]
    started = threading.Event()
    holder: dict = {}

    def start_later() -> None:  # nothing listens at first (connection refused), then 503 twice, then ready
        started.wait(10)
        holder["server"] = FakeOpenAIServer(scripted((200, completion("a cat"))),
                                            models=lambda: ready.pop(0) if len(ready) > 1 else ready[0],
                                            port=port).__enter__()

    client = OpenAIClient(url, timeout=5)
    polls = []
    real_once = client._once

    def counting_once(*a, **k):  # the server starts only once the first poll has been refused
        polls.append(a[1])
        try:
            return real_once(*a, **k)
        finally:
            started.set()

    client._once = counting_once  # type: ignore[method-assign]
    thread = threading.Thread(target=start_later, daemon=True)
    thread.start()
    try:
        assert client.wait_ready(budget_s=60, poll_s=0.05) is True
        server = holder["server"]
        assert server.gets == 3  # 503, 503, 200: waited through the loading answers
        assert client.chat([{"role": "user", "content": "x"}]) == "a cat"  # the first batch gets through
    finally:
        thread.join(10)
        if "server" in holder:
            holder["server"].__exit__(None, None, None)
    assert polls.count("models") >= 4  # at least one refused poll before the server listened


def test_the_wait_gives_up_after_its_budget() -> None:
    client = OpenAIClient(f"http://127.0.0.1:{_reserved_port()}/v1", timeout=1)
    assert client.wait_ready(budget_s=0.2, poll_s=0.05) is False


def test_a_server_without_a_models_route_counts_as_up() -> None:
    with FakeOpenAIServer(scripted((200, completion("x")))) as srv:  # GET answers 404
        assert OpenAIClient(srv.url).wait_ready(budget_s=5, poll_s=0.05) is True
        assert srv.gets == 1


def test_engines_wait_for_readiness_with_the_spec_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.engines import parse_spec
    from stages.negatives import NEGATIVE_ENGINES

    monkeypatch.setattr(openai_client, "READY_POLL_S", 0.05)
    ready = [(503, {"error": "loading"})] * 3 + [(200, {"data": []})]
    with FakeOpenAIServer(scripted((200, completion("[]"))),
                          models=lambda: ready.pop(0) if len(ready) > 1 else ready[0]) as srv:
        NEGATIVE_ENGINES.build(parse_spec(f"openai:{srv.url}?warmup=60#m"))
        assert srv.gets == 4 and srv.requests == []  # it waited, and sent nothing before the server was up


def test_retry_after_is_honoured_and_backoff_has_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(openai_client.time, "sleep", lambda s: slept.append(s))
    with FakeOpenAIServer(scripted((429, {"error": "slow down"}, {"Retry-After": "7"}), (200, completion("ok")))) as srv:
        client = OpenAIClient(srv.url, timeout=5, retries=2, backoff=0.01)
        assert client.chat([{"role": "user", "content": "x"}]) == "ok"
    assert slept == [7.0]  # the server's Retry-After, not the 0.01 s backoff
    delays = {OpenAIClient("http://h/v1", backoff=1.0).retry_delay(1) for _ in range(20)}
    assert len(delays) > 1 and all(1.0 <= d <= 3.0 for d in delays)  # 2 s +- 50 %: workers do not retry in step
    assert OpenAIClient("http://h/v1").retry_delay(0, retry_after=3600) == openai_client.MAX_RETRY_AFTER_S
