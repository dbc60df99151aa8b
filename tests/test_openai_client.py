"""The shared OpenAI-compatible client against a small scripted HTTP server on 127.0.0.1."""
from __future__ import annotations

import pytest

from fake_openai_server import FakeOpenAIServer, completion, scripted, slow
from stages.engines.openai_client import OpenAIClient, OpenAIError, OpenAITimeout


def test_chat_returns_the_first_choice_and_sends_model_and_extras() -> None:
    with FakeOpenAIServer(scripted((200, completion("hello")))) as srv:
        client = OpenAIClient(srv.url, model="tiny", timeout=5)
        assert client.chat([{"role": "user", "content": "hi"}], temperature=0.1, seed=7) == "hello"
    body = srv.requests[0]
    assert body["model"] == "tiny" and body["seed"] == 7 and body["messages"][0]["content"] == "hi"


def test_transient_errors_are_retried_then_succeed() -> None:
    with FakeOpenAIServer(scripted((503, {"error": "busy"}), (500, "oops"), (200, completion("ok")))) as srv:
        client = OpenAIClient(srv.url, timeout=5, retries=2, backoff=0.01)
        assert client.chat([{"role": "user", "content": "x"}]) == "ok"
    assert len(srv.requests) == 3


def test_a_rejected_request_is_not_retried_and_keeps_its_status() -> None:
    with FakeOpenAIServer(scripted((400, {"error": "response_format not supported"}))) as srv:
        client = OpenAIClient(srv.url, timeout=5, retries=3, backoff=0.01)
        with pytest.raises(OpenAIError) as err:
            client.chat([{"role": "user", "content": "x"}])
    assert err.value.status == 400 and "response_format" in err.value.body
    assert len(srv.requests) == 1


def test_a_silent_server_raises_timeout_after_the_retries() -> None:
    with FakeOpenAIServer(slow(1.5)) as srv:
        client = OpenAIClient(srv.url, timeout=0.3, retries=1, backoff=0.01)
        with pytest.raises(OpenAITimeout):
            client.chat([{"role": "user", "content": "x"}])
    assert len(srv.requests) == 2


def test_an_answer_without_content_is_an_error() -> None:
    with FakeOpenAIServer(scripted((200, {"choices": []}))) as srv:
        with pytest.raises(OpenAIError, match="no choices"):
            OpenAIClient(srv.url, timeout=5).chat([{"role": "user", "content": "x"}])


def test_api_key_comes_from_the_environment_and_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINEHARD_OPENAI_API_KEY", "sk-secret-123")
    with FakeOpenAIServer(scripted((401, {"error": "bad key"}))) as srv:
        client = OpenAIClient(srv.url, timeout=5, retries=0)
        with pytest.raises(OpenAIError) as err:
            client.chat([{"role": "user", "content": "x"}])
    assert srv.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(client) and "sk-secret" not in str(err.value)


def test_map_returns_results_and_failures_in_input_order() -> None:
    with FakeOpenAIServer(slow(0.3, (200, completion("x")))) as srv:
        client = OpenAIClient(srv.url, timeout=5, concurrency=4)
        out = client.map(lambda i: client.chat([{"role": "user", "content": str(i)}]) if i != 2 else 1 / 0,
                         range(4))
        client.close()
    assert out[0] == out[1] == out[3] == "x" and isinstance(out[2], ZeroDivisionError)


def test_unreachable_server_and_bad_url() -> None:
    with pytest.raises(ValueError):
        OpenAIClient("127.0.0.1:8000/v1")
    client = OpenAIClient("http://127.0.0.1:9/v1", timeout=2, retries=0)  # discard port: refused
    with pytest.raises(OpenAIError, match="cannot reach|connection"):
        client.chat([{"role": "user", "content": "x"}])


def test_each_thread_sends_on_its_own_connection_pool_and_close_starts_them_anew() -> None:
    # one pool shared by a request window's 320 threads made them queue for its lock at every request and answer
    import threading

    client = OpenAIClient("http://127.0.0.1:9/v1")
    seen: list[object] = []

    def take() -> None:
        seen.append(client._http_client())
        seen.append(client._http_client())

    threads = [threading.Thread(target=take) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 3 and seen[0] is seen[1]  # one per thread, kept by it
    mine = client._http_client()
    client.close()
    assert all(c.is_closed for c in seen) and mine.is_closed
    assert client._http_client() is not mine and not client._http_client().is_closed  # a new one after close
    client.close()
