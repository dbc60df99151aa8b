"""The OpenAI-compatible engine: a real llama_cpp.server on 127.0.0.1, and a scripted fake server
for the answers a real one rarely gives (malformed JSON, silence, errors)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from core.engines import parse_spec
from test_negatives_llama_cpp import VALIDATION_REASONS, smollm_gguf
from fake_openai_server import FakeOpenAIServer, completion
from transforms.negatives import NEGATIVE_ENGINES, apply_negatives, load_negatives_prompt, negatives_for, parse_answer

GOOD = ["a blue wooden chair", "a red metal chair", "a green plastic chair", "a small red wooden chair",
        "a striped red wooden chair", "a broken red wooden chair", "two red wooden chairs",
        "a white wicker chair", "a round black chair", "a folded yellow chair"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """``python -m llama_cpp.server`` with SmolLM2-135M on 127.0.0.1; its base URL."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("llama_server") / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", smollm_gguf(), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not start; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_real_llama_cpp_server_rejects_json_schema_and_the_engine_falls_back_to_grammar(llama_server: str) -> None:
    from test_negatives_llama_cpp import Recording

    engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{llama_server}?timeout=120&concurrency=2#smollm2"))
    recording = Recording(engine)
    results = negatives_for(recording, ["a blue striped shirt", "an old wooden table"], retries=0)
    assert engine.mode == "grammar"  # json_schema was refused, the GBNF grammar field is accepted
    for answer, res in zip(recording.raw, results):
        assert isinstance(answer, str), answer
        assert len(parse_answer(answer)) == 10  # the grammar held on the server too
        assert res.reason in VALIDATION_REASONS and len(res.negatives) <= 10  # the usable items it keeps
        assert res.valid == (len(res.negatives) == 10)


def _prompted_expression(body: dict) -> str:
    return re.search(r'Object description: "([^"]*)"', body["messages"][0]["content"]).group(1)


def test_auto_mode_walks_the_request_shapes_and_keeps_the_accepted_one() -> None:
    def reply(body: dict) -> tuple[int, object]:
        if body.get("response_format", {}).get("type") == "json_schema":
            return 400, {"error": {"message": "response_format type json_schema is not supported"}}
        expr = _prompted_expression(body)
        return 200, completion(json.dumps([f"{n} {expr.split()[-1]}" for n in
                                           ("a red", "a blue", "a green", "a pink", "a gray", "a black", "a white",
                                            "a brown", "a purple", "an orange")]))
    with FakeOpenAIServer(reply) as srv:
        engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{srv.url}?concurrency=3#m"))
        exprs = ["a yellow cup", "a yellow hat", "a yellow car", "a yellow kite"]
        results = negatives_for(engine, exprs, retries=0)
    assert [r.negatives[0] for r in results] == ["a red cup", "a red hat", "a red car", "a red kite"]  # order kept
    assert all(r.valid for r in results) and engine.mode == "grammar"
    shapes = [("json_schema" if b.get("response_format") else "grammar" if "grammar" in b else "?") for b in srv.requests]
    assert shapes.count("grammar") == 4 and 1 <= shapes.count("json_schema") <= 3
    grammar_request = next(b for b in srv.requests if "grammar" in b)
    assert grammar_request["grammar"] == load_negatives_prompt().grammar and grammar_request["model"] == "m"


@pytest.mark.parametrize("mode, check", [
    ("json_schema", lambda b: b["response_format"]["json_schema"]["schema"] == load_negatives_prompt().schema),
    ("json_object", lambda b: b["response_format"] == {"type": "json_object", "schema": load_negatives_prompt().schema}),
    ("grammar", lambda b: b["grammar"].startswith("#") and "response_format" not in b),
    ("none", lambda b: "grammar" not in b and "response_format" not in b),
])
def test_structured_option_picks_the_request_shape(mode: str, check) -> None:
    with FakeOpenAIServer(lambda b: (200, completion(json.dumps(GOOD)))) as srv:
        engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{srv.url}?structured={mode}"))
        [res] = negatives_for(engine, ["a red wooden chair"], retries=0)
    assert res.valid and check(srv.requests[0]) and "model" not in srv.requests[0]


def test_malformed_answer_is_counted_and_the_image_kept() -> None:
    with FakeOpenAIServer(lambda b: (200, completion("Sure! 1. a blue chair 2. a red chair"))) as srv:
        engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{srv.url}?structured=grammar"))
        rec = {"key": "k", "bbox_info": [{"bbox": [0, 0, 1, 1, 0.9], "short_expr": "a green chair",
                                          "long_expr": "a green chair", "flag_short_neg": 0, "short_expr_negs": {}}]}
        [out] = apply_negatives(engine, [rec], retries=2)
    assert "_dead" not in out and out["bbox_info"][0]["flag_short_neg"] == 0
    assert out["_stats"] == {"negatives_invalid:unparseable": 1}
    assert len(srv.requests) == 3 and len({b["seed"] for b in srv.requests}) == 3  # retried with new seeds


def test_silent_server_times_out_per_expression() -> None:
    def reply(body: dict) -> tuple[int, object]:
        time.sleep(1.5)
        return 200, completion(json.dumps(GOOD))
    with FakeOpenAIServer(reply) as srv:
        engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{srv.url}?structured=grammar&timeout=0.3&retries=0"))
        results = negatives_for(engine, ["a red wooden chair", "a red chair"], retries=0)
    assert [r.reason for r in results] == ["timeout", "timeout"]


def test_server_errors_are_an_engine_error_reason() -> None:
    with FakeOpenAIServer(lambda b: (503, {"error": "overloaded"})) as srv:
        engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{srv.url}?retries=1&structured=grammar"))
        [res] = negatives_for(engine, ["a red wooden chair"], retries=0)
    assert res.reason == "engine_error" and len(srv.requests) == 2


def test_unknown_structured_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="structured"):
        NEGATIVE_ENGINES.build(parse_spec("openai:http://127.0.0.1:9/v1?structured=xml"))
