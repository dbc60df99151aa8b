"""The vLLM engine's requests, built against a fake ``vllm`` module (vLLM cannot live in this venv)."""
from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest

from core.engines import parse_spec
from stages.negatives import NEGATIVE_ENGINES, negatives_for
from stages.negatives_prompt import load_negatives_prompt, request_seed

GOOD = ["a blue wooden chair", "a red metal chair", "a green plastic chair", "a small red wooden chair",
        "a striped red wooden chair", "a broken red wooden chair", "two red wooden chairs",
        "a white wicker chair", "a round black chair", "a folded yellow chair"]


def fake_vllm(new_api: bool = True, answer: str = json.dumps(GOOD), finish: str = "stop") -> types.ModuleType:
    """A stand-in ``vllm`` package recording LLM(...) and chat(...) calls."""
    vllm = types.ModuleType("vllm")
    sp = types.ModuleType("vllm.sampling_params")
    calls: dict[str, Any] = {"llm": [], "chat": []}

    class Params:
        def __init__(self, **kw: Any):
            self.kw = kw

    if new_api:
        sp.StructuredOutputsParams = type("StructuredOutputsParams", (Params,), {})
    else:
        sp.GuidedDecodingParams = type("GuidedDecodingParams", (Params,), {})

    class LLM:
        def __init__(self, **kw: Any):
            calls["llm"].append(kw)

        def chat(self, conversations: list, sampling_params: list, use_tqdm: bool = True) -> list:
            calls["chat"].append((conversations, sampling_params))
            completion = types.SimpleNamespace(text=answer, finish_reason=finish)
            return [types.SimpleNamespace(outputs=[completion]) for _ in conversations]

    vllm.LLM, vllm.SamplingParams, vllm.sampling_params = LLM, Params, sp
    vllm.__version__ = "0.0-fake"
    vllm.calls = calls
    return vllm


def _install(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> None:
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", module.sampling_params)


def test_llm_is_built_from_the_spec_path_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = fake_vllm()
    _install(monkeypatch, vllm)
    spec = NEGATIVE_ENGINES.resolve("vllm:/models/llama-70b?tensor_parallel_size=2&load_format=dummy"
                                    "&gpu_memory_utilization=0.85&temperature=0.5")
    engine = NEGATIVE_ENGINES.build(spec)
    assert vllm.calls["llm"] == [{"model": "/models/llama-70b", "tensor_parallel_size": 2, "load_format": "dummy",
                                  "gpu_memory_utilization": 0.85}]
    assert engine.temperature == 0.5 and NEGATIVE_ENGINES.entry(spec).gpu
    assert engine.provenance["stub"] is False and engine.provenance["prompt_sha"] == load_negatives_prompt().prompt_sha


@pytest.mark.parametrize("new_api, field", [(True, "structured_outputs"), (False, "guided_decoding")])
def test_one_batched_chat_call_with_json_schema_decoding(monkeypatch: pytest.MonkeyPatch, new_api: bool,
                                                         field: str) -> None:
    vllm = fake_vllm(new_api=new_api)
    _install(monkeypatch, vllm)
    engine = NEGATIVE_ENGINES.build(parse_spec("vllm:/models/m"))
    exprs = ["a red wooden chair", "a red wooden chair in a room", "the red wooden chair"]
    results = negatives_for(engine, exprs, retries=0)
    assert all(r.valid for r in results)
    [(conversations, params)] = vllm.calls["chat"]  # one call for the whole batch
    assert [c[0]["content"] for c in conversations] == [load_negatives_prompt().messages(e)[0]["content"] for e in exprs]
    schema = load_negatives_prompt().schema
    for expr, p in zip(exprs, params):
        assert p.kw[field].kw == {"json": schema}
        assert p.kw["seed"] == request_seed(expr, 0) and p.kw["max_tokens"] > 0


def test_truncated_answers_are_a_reason_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, fake_vllm(answer='["a blue', finish="length"))
    engine = NEGATIVE_ENGINES.build(parse_spec("vllm:/models/m"))
    [res] = negatives_for(engine, ["a red wooden chair"], retries=1)
    assert not res.valid and res.reason == "truncated" and res.attempts == 2


def test_missing_vllm_fails_at_build_with_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError):
        NEGATIVE_ENGINES.build(parse_spec("vllm:/models/m"))


class _MethodsOnlyProxy:
    """What Beam hands a stage for a model shared across processes: methods only, no attributes."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            raise AttributeError(f"proxy exposes no attribute {name!r}")
        return value


def test_negatives_stage_reads_provenance_through_the_shared_model_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.negatives import apply_negatives

    _install(monkeypatch, fake_vllm())
    engine = NEGATIVE_ENGINES.build(NEGATIVE_ENGINES.resolve("vllm:/models/m"))
    record = {"key": "k", "bbox_info": [{"bbox": [0, 0, 1, 1, 0.9], "short_expr": "a red wooden chair",
                                         "long_expr": "a red wooden chair", "flag_short_neg": 0, "short_expr_negs": {}}]}
    (out,) = apply_negatives(_MethodsOnlyProxy(engine), [record])
    assert out["provenance"]["negatives"]["engine"] == "vllm" and out["provenance"]["negatives"]["stub"] is False
    assert out["bbox_info"][0]["flag_short_neg"] == 1
