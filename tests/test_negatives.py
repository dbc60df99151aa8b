"""Hard negatives: cleanup, validation, retries, the rules engine, the Beam stage and the stage CLI."""
from __future__ import annotations

import io
import json
import sys
import types

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that

from core.engines import EngineEntry, NegativesEngine, parse_spec
from pipeline.stage_cli import negatives_main
from prompts import load_prompt
from transforms.negatives import (NEGATIVE_ENGINES, GenerateNegatives, apply_negatives, clean_negative,
                                  head_noun, load_negatives_prompt, negatives_for, parse_answer,
                                  validate_negatives)

GOOD = ["a blue wooden chair", "a red metal chair", "a green plastic chair", "a small red wooden chair",
        "a striped red wooden chair", "a broken red wooden chair", "two red wooden chairs",
        "a white wicker chair", "a round black chair", "a folded yellow chair"]


def test_cleanup_drops_symbols_numbering_quotes_and_spaces() -> None:
    assert clean_negative('1. "a blue, striped; shirt"\n') == "a blue striped shirt"
    assert clean_negative("  (3)  a  red\tcar. ") == "a red car"
    assert clean_negative("- \u201ca green cup\u201d") == "a green cup"
    assert clean_negative("Negative 4: a pink hat") == "a pink hat"


@pytest.mark.parametrize("negatives, reason", [
    (GOOD[:9], "wrong_count"),
    (GOOD[:9] + ["A  Blue wooden CHAIR"], "duplicates"),
    (GOOD[:9] + ["the red wooden chair"], "equals_positive"),
    (GOOD[:9] + ["a red wooden table"], "head_noun_changed"),
    (GOOD[:9] + ["x" * 300 + " chair"], "bad_length"),
    (GOOD[:9] + ["a red wooden chair 10th-century shirt green plastic wheelchair a stripedred chair"], "bad_length"),
    (GOOD, None),
])
def test_validation_reasons(negatives: list[str], reason: str | None) -> None:
    assert validate_negatives("a red wooden chair", negatives) == reason


def test_head_noun_and_count_changes_keep_the_noun() -> None:
    assert head_noun("a man in a blue striped shirt") == "man"
    assert head_noun("A red-winged blackbird") == "blackbird"
    negs = [f"{n} men" for n in ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")] + ["a tall man"]
    assert validate_negatives("a man", negs) is None  # irregular plural counts as the same noun


def test_parse_answer_accepts_json_and_rejects_garbage() -> None:
    assert parse_answer(json.dumps(GOOD)) == GOOD
    assert parse_answer("```json\n" + json.dumps({"negatives": GOOD}) + "\n```") == GOOD
    assert parse_answer("Sure! " + json.dumps(GOOD) + " Hope it helps") == GOOD
    for bad in ("I cannot do that", "[1, 2, 3]", "{\"a\": 1}", "[\"unterminated"):
        with pytest.raises(Exception) as err:
            parse_answer(bad)
        assert getattr(err.value, "reason", "") == "unparseable"


def test_prompt_schema_and_grammar_are_data_files_hashed_into_provenance() -> None:
    prompt = load_negatives_prompt()
    assert prompt.prompt_sha == load_prompt("negatives.txt")[1]
    assert prompt.schema["minItems"] == prompt.schema["maxItems"] == 10
    assert "{9}" in prompt.grammar
    text = prompt.messages("a blue striped shirt")[0]["content"]
    assert "a blue striped shirt" in text and '"shirt"' in text and "10" in text
    engine = NEGATIVE_ENGINES.build(parse_spec("rules"))
    assert engine.provenance["stub"] is False and engine.provenance["engine"] == "rules"


EXPRESSIONS = ["a man", "a blue striped shirt", "a small yellow dotted square", "two shapes", "an old wooden table",
               "a red-winged blackbird", "a tree branch", "a man in a blue striped shirt", "the dog", "glasses"]


def test_rules_engine_gives_ten_valid_negatives_deterministically() -> None:
    engine = NEGATIVE_ENGINES.build(parse_spec("rules"))
    results = negatives_for(engine, EXPRESSIONS, retries=0)
    assert all(r.valid and len(r.negatives) == 10 for r in results), [r for r in results if not r.valid]
    again = negatives_for(NEGATIVE_ENGINES.build(parse_spec("rules")), EXPRESSIONS, retries=0)
    assert [r.negatives for r in results] == [r.negatives for r in again]
    assert engine.generate(["a blue striped shirt"], seed=1) != engine.generate(["a blue striped shirt"], seed=0)
    shirt = results[1].negatives
    assert any("striped" not in n for n in shirt) and any("blue" not in n for n in shirt)  # attributes swapped


class ScriptedEngine(NegativesEngine):
    """Answers from a script per attempt (seed); records what it was asked."""

    def __init__(self, *answers: object):
        self.answers = answers
        self.asked: list[tuple[list[str], int]] = []
        self.provenance = {"engine": "scripted", "stub": True}

    def generate(self, expressions: list[str], seed: int = 0) -> list[object]:
        self.asked.append((list(expressions), seed))
        answer = self.answers[min(seed, len(self.answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return [answer] * len(expressions)


def test_invalid_answers_are_retried_with_a_new_seed() -> None:
    engine = ScriptedEngine("not json", json.dumps(GOOD[:3]), json.dumps(GOOD))
    [res] = negatives_for(engine, ["a red wooden chair"], retries=2)
    assert res.valid and res.attempts == 3 and [s for _, s in engine.asked] == [0, 1, 2]
    engine = ScriptedEngine("not json", RuntimeError("server down"))
    [res] = negatives_for(engine, ["a red wooden chair"], retries=1)
    assert not res.valid and res.reason == "engine_error" and res.attempts == 2


def test_same_expression_is_asked_once_per_attempt() -> None:
    engine = ScriptedEngine(json.dumps(GOOD))
    out = negatives_for(engine, ["a red wooden chair"] * 3, retries=2)
    assert len(out) == 3 and all(r.valid for r in out) and engine.asked == [(["a red wooden chair"], 0)]


def _record(key: str, exprs: list[str]) -> dict:
    return {"key": key, "caption": "c", "bbox_info": [
        {"bbox": [0.1, 0.1, 0.5, 0.5, 0.9], "short_expr": e, "long_expr": e, "flag_short_neg": 0,
         "short_expr_negs": {}} for e in exprs]}


def test_apply_negatives_counts_valid_and_invalid_and_keeps_the_image() -> None:
    records = [_record("a", ["a red wooden chair", "a red wooden chair"]), _record("b", []),
               {"key": "dead", "_dead": {"stage": "detect", "reason": "x", "detail": ""}, "bbox_info": []}]
    apply_negatives(ScriptedEngine(json.dumps(GOOD)), records, retries=0)
    assert records[0]["_stats"]["negatives_valid"] == 2
    assert all(r["flag_short_neg"] == 1 and len(r["short_expr_negs"]) == 10 for r in records[0]["bbox_info"])
    bad = [_record("c", ["a red wooden chair"])]
    apply_negatives(ScriptedEngine("garbage"), bad, retries=1)
    assert "_dead" not in bad[0] and bad[0]["bbox_info"][0]["flag_short_neg"] == 0
    assert bad[0]["_stats"] == {"negatives_invalid:unparseable": 1}


GARBAGE_MODULE = "finehard_test_garbage_negatives"


def _garbage_build(spec: object, **_: object) -> ScriptedEngine:
    return ScriptedEngine("!!! no list here !!!")


def test_beam_stage_rules_flags_regions_and_garbage_engine_keeps_images(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType(GARBAGE_MODULE)
    module.build = _garbage_build
    monkeypatch.setitem(sys.modules, GARBAGE_MODULE, module)
    monkeypatch.setitem(NEGATIVE_ENGINES.entries, "garbage", EngineEntry(f"{GARBAGE_MODULE}:build", False, False, "test"))
    records = [_record("a", ["a blue striped shirt", "a man"]), _record("b", ["a small yellow dotted square"])]

    def check_rules(out: list[dict]) -> None:
        assert sorted(r["key"] for r in out) == ["a", "b"]
        for rec in out:
            assert rec["provenance"]["negatives"]["engine"] == "rules"
            for region in rec["bbox_info"]:
                assert region["flag_short_neg"] == 1 and sorted(region["short_expr_negs"]) == [str(i) for i in range(10)]

    def check_garbage(out: list[dict]) -> None:
        assert sorted(r["key"] for r in out) == ["a", "b"]  # no image lost
        for rec in out:
            assert "_dead" not in rec
            assert all(r["flag_short_neg"] == 0 and r["short_expr_negs"] == {} for r in rec["bbox_info"])
            assert rec["_stats"] == {"negatives_invalid:unparseable": len(rec["bbox_info"])}

    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(records) | GenerateNegatives(NEGATIVE_ENGINES.resolve("rules"), batch_size=4)
        assert_that(out, check_rules)
    records = [_record("a", ["a blue striped shirt", "a man"]), _record("b", ["a small yellow dotted square"])]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(records) | GenerateNegatives(NEGATIVE_ENGINES.resolve("garbage"), retries=1)
        assert_that(out, check_garbage)


def test_whole_pipeline_with_rules_negatives(scenes_dir, tmp_path) -> None:
    from conftest import read_shards, run_pipeline

    summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "out", "--negatives", "rules",
                           "--samples-per-shard", "6")
    assert summary["reconciled"] and summary["negatives_valid_rate"] == 1.0
    regions = [r for s in read_shards(tmp_path / "out") for r in s["record"]["bbox_info"]]
    assert regions and all(r["flag_short_neg"] == 1 and len(r["short_expr_negs"]) == 10 for r in regions)


def test_cli_reads_plain_json_and_expressions_output() -> None:
    stdin = io.StringIO("a red wooden chair\n"
                        '{"short_expr": "a blue striped shirt"}\n'
                        '{"caption": "c", "expressions": [{"short_expr": "a man", "long_expr": "a man in a hat"}]}\n\n')
    out = io.StringIO()
    assert negatives_main(["--negatives", "rules"], stdin=stdin, stdout=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["expression"] for r in lines] == ["a red wooden chair", "a blue striped shirt", "a man"]
    assert all(r["valid"] and r["reason"] is None and len(r["negatives"]) == 10 for r in lines)


def test_cli_reports_invalid_answers_and_bad_specs(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert negatives_main(["--negatives", "stub", "--retries", "0"], stdin=io.StringIO("a red green car\n"),
                          stdout=out) == 0
    assert json.loads(out.getvalue())["expression"] == "a red green car"
    assert negatives_main(["--negatives", "nosuch"], stdin=io.StringIO(""), stdout=io.StringIO()) == 2
    assert "unknown negatives engine" in capsys.readouterr().err
