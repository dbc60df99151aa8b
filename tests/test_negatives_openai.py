"""The OpenAI-compatible engine: llama.cpp's real C++ server on 127.0.0.1, and a scripted fake server
for the answers a real one rarely gives (malformed JSON, silence, errors)."""
from __future__ import annotations

import json
import re
import time

import pytest

from core.engines import parse_spec
from test_negatives_llama_cpp import VALIDATION_REASONS, Recording, smollm_gguf
from stages.engines.negatives_llama_cpp import start_server
from fake_openai_server import FakeOpenAIServer, completion
from stages.negatives import NEGATIVE_ENGINES, apply_negatives, negatives_for
from stages.negatives_prompt import load_negatives_prompt
from stages.negatives_validation import clean_negative, parse_answer

GOOD = ["a blue wooden chair", "a red metal chair", "a green plastic chair", "a small red wooden chair",
        "a striped red wooden chair", "a broken red wooden chair", "two red wooden chairs",
        "a white wicker chair", "a round black chair", "a folded yellow chair"]


@pytest.fixture(scope="module")
def llama_server():
    """llama.cpp's C++ server (the prebuilt wheel the llama-cpp engine runs) with SmolLM2-135M on
    127.0.0.1; its base URL. The engines below reach it over HTTP only."""
    server = start_server(smollm_gguf(), n_ctx=2048, n_threads=2)
    try:
        yield server.base_url
    finally:
        server.close()


@pytest.mark.slow  # a real model on the CPU
def test_real_llama_cpp_server_takes_the_json_schema_and_its_answers_parse(llama_server: str) -> None:
    engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{llama_server}?timeout=120&concurrency=2#smollm2"))
    recording = Recording(engine)
    results = negatives_for(recording, ["a blue striped shirt", "an old wooden table"], retries=0)
    assert engine.mode == "json_schema"  # auto tries json_schema first; llama.cpp's server accepts it
    for answer, res in zip(recording.raw, results):
        assert isinstance(answer, str), answer
        assert len(parse_answer(answer)) == 10  # the schema held on the server
        assert res.reason in VALIDATION_REASONS and len(res.negatives) <= 10  # the usable items it keeps
        assert res.valid == (len(res.negatives) == 10)


@pytest.mark.slow  # a real model on the CPU
def test_real_llama_cpp_server_takes_the_gbnf_grammar_field(llama_server: str) -> None:
    engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{llama_server}?structured=grammar&timeout=120#smollm2"))
    recording = Recording(engine)
    [res] = negatives_for(recording, ["a small brown dog"], retries=0)
    assert engine.mode == "grammar"
    [answer] = recording.raw
    assert isinstance(answer, str), answer
    negatives = parse_answer(answer)
    assert len(negatives) == 10 and all(n == clean_negative(n) for n in negatives)  # the grammar held on the server
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
