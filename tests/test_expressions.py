"""Referring-expression extraction with the real spaCy pipeline (en_core_web_sm)."""
from __future__ import annotations

import io
import json

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that

from pipeline.stage_cli import expressions_main
from core.synthetic import long_caption, make_scene
from stages.expressions import abstract_nouns, extract_expressions, load_nlp
from transforms.expressions import ExtractExpressions

BLACKBIRD = "A red-winged blackbird perched on a tree branch next to a man in a blue striped shirt."

# caption -> (short expressions that must be found, {short: long} that must hold, shorts that must not appear)
CASES = {
    BLACKBIRD: ({"a red-winged blackbird", "a tree branch", "a man", "a blue striped shirt"},
                {"a man": "a man in a blue striped shirt", "a tree branch": "a tree branch"}, set()),
    "A simple drawing of two shapes on a plain light canvas: a small yellow dotted square in the bottom "
    "right corner, a large red circle at the top and a small blue striped ring on the left.":
        ({"a small yellow dotted square", "a large red circle", "a small blue striped ring"},
         {"a small yellow dotted square": "a small yellow dotted square in the bottom right corner",
          "a large red circle": "a large red circle at the top",  # stops at "and"
          "a small blue striped ring": "a small blue striped ring on the left"},
         {"the bottom right corner", "the top", "the left"}),
    "A woman holding an umbrella walks past a dog that is sleeping on a wooden bench and a cat.":
        ({"a woman", "an umbrella", "a dog", "a wooden bench", "a cat"},
         {"a woman": "a woman holding an umbrella", "a dog": "a dog that is sleeping on a wooden bench"},
         {"that"}),
    "It is a picture of a cat and a dog on a sofa.":
        ({"a cat", "a dog", "a sofa"}, {"a cat": "a cat", "a dog": "a dog on a sofa"}, {"it", "a picture"}),
    "The image shows a white plate of pasta with tomato sauce, a glass of red wine and a fork on a "
    "checkered tablecloth.":
        ({"a white plate", "a glass", "a fork", "a checkered tablecloth"},
         {"a white plate": "a white plate of pasta with tomato sauce", "a glass": "a glass of red wine",
          "a fork": "a fork on a checkered tablecloth"}, {"the image"}),
    # spaCy attaches the comma to "circle", so its noun chunk starts with ", ": trimmed.
    "A simple drawing of three shapes on a plain light canvas: a large blue striped square on the left, "
    "a small gray dotted circle in the center and a small red checkered ring.":
        ({"a large blue striped square", "a small gray dotted circle", "a small red checkered ring"},
         {"a small gray dotted circle": "a small gray dotted circle in the center",
          "a large blue striped square": "a large blue striped square on the left"}, set()),
    "Love and freedom fill the background behind a tall lamp.":
        ({"a tall lamp"}, {"a tall lamp": "a tall lamp"}, {"love", "freedom", "the background"}),
}


@pytest.fixture(scope="module")
def extracted() -> dict[str, list[dict]]:
    captions = list(CASES)
    return dict(zip(captions, extract_expressions(captions, load_nlp(), batch_size=4)))


@pytest.mark.parametrize("caption", list(CASES))
def test_short_and_long_expressions(caption: str, extracted: dict[str, list[dict]]) -> None:
    must, longs, never = CASES[caption]
    got = {e["short_expr"]: e["long_expr"] for e in extracted[caption]}
    assert must <= set(got), f"missing {must - set(got)} in {got}"
    assert not never & {s.lower() for s in got}
    for short, long_ in longs.items():
        assert got[short] == long_


def test_offsets_point_at_the_expressions_in_the_caption(extracted: dict[str, list[dict]]) -> None:
    for caption, exprs in extracted.items():
        for e in exprs:
            assert caption[e["start_char"]:e["end_char"]].lower() == e["short_expr"].lower()
            assert caption[e["start_char"]:e["long_end_char"]].lower() == e["long_expr"].lower()
            assert e["long_expr"].startswith(e["short_expr"])


def test_no_expression_begins_or_ends_with_punctuation(extracted: dict[str, list[dict]]) -> None:
    for exprs in extracted.values():
        for e in exprs:
            for text in (e["short_expr"], e["long_expr"]):
                assert text == text.strip(" ,;:.-!?\"'()"), e


def test_long_expressions_never_cross_a_conjunction(extracted: dict[str, list[dict]]) -> None:
    for exprs in extracted.values():
        for e in exprs:
            assert " and " not in e["long_expr"] and "," not in e["long_expr"]


def test_abstract_noun_list_is_data_and_includes_the_picture_and_places() -> None:
    words = abstract_nouns()
    assert {"time", "love", "freedom", "image", "picture", "background", "corner"} <= words
    assert not {"drawing", "canvas", "shape", "man", "dog"} & words  # kept on purpose, see the file


def test_the_abstract_noun_list_is_read_once_per_process_not_per_caption(monkeypatch) -> None:
    import stages.expressions as ex

    reads: list[str] = []
    real = ex.load_word_list
    monkeypatch.setattr(ex, "load_word_list", lambda name: reads.append(name) or real(name))
    ex.abstract_nouns.cache_clear()
    try:
        out = extract_expressions(["A red cup on a table.", "A dog in the corner of the picture.", "Two cats."])
    finally:
        ex.abstract_nouns.cache_clear()  # later tests read the real list again
    assert [e["short_expr"] for e in out[1]] == ["a dog"]  # "the corner", "the picture": abstract
    assert reads == [ex.ABSTRACT_NOUNS_FILE]


def test_one_spacy_pipeline_per_process_whichever_way_it_is_asked_for() -> None:
    """The expressions stage's model handler asks by name, the negatives' phrase analysis by default:
    both must get the one pipeline (a second copy costs ~40 MiB and a load per worker)."""
    from stages.expressions import SPACY_MODEL
    from transforms.inference import SpacyExpressionHandler
    from stages.text import _load_nlp as phrase_nlp

    assert load_nlp() is load_nlp(SPACY_MODEL) is SpacyExpressionHandler().load_model() is phrase_nlp()


def test_only_needed_spacy_components_run() -> None:
    nlp = load_nlp()
    assert "parser" in nlp.pipe_names and "ner" not in nlp.pipe_names


def test_beam_stage_fills_expressions_and_keeps_dead_records() -> None:
    image, scene = make_scene(1, seed=5)
    records = [{"key": "a", "caption": long_caption(scene)}, {"key": "b", "caption": BLACKBIRD},
               {"key": "dead", "caption": "x", "_dead": {"stage": "read", "reason": "corrupt_image", "detail": ""}}]

    def check(out: list[dict]) -> None:
        by_key = {r["key"]: r for r in out}
        assert set(by_key) == {"a", "b", "dead"}
        shorts = {e["short_expr"] for e in by_key["a"]["_expressions"]}
        assert {o["expr"] for o in scene["objects"]} <= shorts
        assert by_key["b"]["provenance"]["expressions"]["engine"] == "spacy"
        assert by_key["b"]["provenance"]["expressions"]["stub"] is False
        assert "_expressions" not in by_key["dead"]

    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(records) | ExtractExpressions(batch_size=8)
        assert_that(out, check)


def test_cli_prints_one_json_line_per_caption() -> None:
    out = io.StringIO()
    assert expressions_main(["--batch-size", "2"], stdin=io.StringIO(f"{BLACKBIRD}\n\nIt is here.\n"), stdout=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["caption"] for r in lines] == [BLACKBIRD, "", "It is here."]
    assert {"short_expr": "a man", "long_expr": "a man in a blue striped shirt"}.items() <= \
        next(e for e in lines[0]["expressions"] if e["short_expr"] == "a man").items()
    assert lines[1]["expressions"] == [] and lines[2]["expressions"] == []
