"""Issue 26: hard negatives that are hard and truly false.

One test per failure class of the issue; each fails on the rules engine and validation before it.
The validator tests go through the fake OpenAI-compatible server with the ``openai:`` engine.
"""
from __future__ import annotations

import json

import pytest

from core.engines import parse_spec
from fake_openai_server import FakeOpenAIServer, completion
from stages.lexicons import lexicons
from stages.negatives import NEGATIVE_ENGINES, apply_negatives, negatives_for
from stages.negatives_validation import (clean_negative, merge_answers, negative_reason, parse_answer,
    validate_negatives)
from stages.text import analyse, tokens

COUNTS = {"a", "an", "one", "two", "three", "four", "five", "several"}


@pytest.fixture(scope="module")
def rules():
    return NEGATIVE_ENGINES.build(parse_spec("rules"))


def _all(engine, expression: str, seeds: int = 4) -> list[str]:
    return list(dict.fromkeys(n for s in range(seeds) for n in engine.negatives(expression, seed=s)))


def _count_changed(positive: str, negative: str) -> bool:
    head = analyse(positive).head_word
    plural_now = not tokens(negative)[tokens(negative).index(head)] == head if head in tokens(negative) else True
    return plural_now or (set(tokens(negative)) & COUNTS) != (set(tokens(positive)) & COUNTS)


@pytest.mark.parametrize("positive", ["a dog", "a cup", "a laptop", "the man", "a car"])
def test_no_negative_is_an_insert_a_picture_of_the_expression_may_still_match(rules, positive: str) -> None:
    marked = set().union(*lexicons().marked.values())
    for n in _all(rules, positive):
        # every negative changes the count or adds a state no ordinary picture has ("a broken car");
        # never "a gray dog", "a clean laptop", "a round cup" alone
        assert _count_changed(positive, n) or set(tokens(n)) & marked, (positive, n)


@pytest.mark.parametrize("positive, stated", [
    ("a woman in a yellow raincoat", {"yellow", "raincoat"}),
    ("a black cat sleeping on a red blanket", {"black", "sleeping", "red", "on", "blanket"}),
    ("a blue denim jacket", {"blue", "denim"}),
])
def test_swaps_of_what_the_expression_states_come_first(rules, positive: str, stated: set[str]) -> None:
    negs = rules.negatives(positive)
    swapped = [n for n in negs if stated - set(tokens(n))]
    assert len(negs) == 10 and len(swapped) >= 5, negs


def test_actions_relations_and_their_objects_are_swapped(rules) -> None:
    horse = _all(rules, "a man riding a horse")
    assert any(n in horse for n in ("a man leading a horse", "a man feeding a horse", "a man petting a horse"))
    assert any(n.startswith("a man riding a ") and not n.endswith("horse") for n in horse)
    assert "a man riding a kitten" not in horse and not any("feeding a bicycle" in n for n in horse)
    balloon = _all(rules, "a man holding a balloon")
    assert any(n.startswith("a man holding a") and "balloon" not in n for n in balloon)
    assert "a cat sitting under a car" in _all(rules, "a cat sitting on a car")
    assert "a man behind a bus" in _all(rules, "a man in front of a bus")
    assert "the man on the right" in _all(rules, "the man on the left")
    eating = _all(rules, "a child eating an ice cream cone")
    assert not any(w in n for n in eating for w in ("knife", "balloon", "remote", "bat"))  # food stays food


@pytest.mark.parametrize("positive", ["his left hand", "purple fog", "a man's bearded face", "a woman's long blonde hair"])
def test_unknown_nouns_and_body_parts_get_no_arbitrary_colour_or_count(rules, positive: str) -> None:
    colours = lexicons().colours
    own = set(tokens(positive))
    for n in _all(rules, positive):
        toks = set(tokens(n))
        assert not toks & {"two", "three", "four", "five", "several"}, n  # "his three left hands"
        new_colours = (toks - own) & colours
        assert not new_colours or own & colours, n  # "purple fog" may become "gray fog", "a face" never green
        assert "purple" not in toks - own and "green" not in toks - own, n


@pytest.mark.parametrize("phrase, kind", [
    ("a license plate", "signs"), ("an ice cream cone", "dishes"), ("a traffic cone", "signs"),
    ("the light", "unknown"), ("his left hand", "body_parts"), ("a woman's long blonde hair", "hair"),
    ("a cup of coffee", "dishware"), ("a man's face", "body_parts"),
])
def test_the_kind_comes_from_the_whole_noun_phrase(phrase: str, kind: str) -> None:
    assert lexicons().kind_of(analyse(phrase)).kind == kind


def test_a_license_plate_is_no_dish_and_a_cone_of_ice_cream_no_traffic_cone(rules) -> None:
    for n in _all(rules, "a license plate"):
        assert not set(tokens(n)) & {"sliced", "half-eaten", "hot", "burnt", "whole"}, n
    for n in _all(rules, "an ice cream cone"):
        assert not set(tokens(n)) & {"rusty", "plastic", "metal"}, n


@pytest.mark.parametrize("positive, name", [
    ("the Black Gate Bridge", "Black Gate Bridge"), ("Big Ben", "Big Ben"), ("a Coca-Cola bottle", "Coca-Cola bottle"),
    ("the Great Wall of China", "Great Wall of China"), ("a Starbucks cup", "Starbucks cup"),
])
def test_proper_names_are_left_untouched(rules, positive: str, name: str) -> None:
    negs = _all(rules, positive)
    for n in negs:
        words = name.split()
        assert " ".join(words[:-1]) in n, (positive, n)  # never "Big gray Ben", "a Coca-Cola pink bottle"
    if positive.split()[-1][0].isupper():
        assert negs == []  # the name is the object: nothing honest to edit


@pytest.mark.parametrize("positive, bad", [
    ("a hot dog", "hot hot"), ("the sand", "sandy sand"), ("the snow", "snowy snow"), ("green grass", "dead green"),
    ("a half-eaten sandwich", "half-eatens"), ("a dozen eggs", "large dozen"),
    ("a motorcycle parked on the street", "parked motorcycle parked"), ("a ripe yellow banana", "ripe green"),
    ("a half-eaten sandwich", "hot sandwich"),
])
def test_no_repeated_or_contradicting_words(rules, positive: str, bad: str) -> None:
    for n in _all(rules, positive):
        assert bad not in n, (positive, n)


def test_a_description_without_ten_honest_edits_gets_fewer_and_the_region_flag_0_with_the_reason(rules) -> None:
    assert rules.negatives("Big Ben") == [] and rules.negatives("his left hand") == ["his right hand"]
    assert "proper name" in rules.shortfall("Big Ben")
    rec = {"key": "k", "bbox_info": [{"bbox": [0, 0, 1, 1, 0.9], "short_expr": e, "long_expr": e, "flag_short_neg": 0,
                                      "short_expr_negs": {}} for e in ("his left hand", "a red car")]}
    [out] = apply_negatives(rules, [rec], retries=2)
    short, full = out["bbox_info"]
    assert short["flag_short_neg"] == 0 and short["short_expr_negs"] == {}
    assert full["flag_short_neg"] == 1 and len(full["short_expr_negs"]) == 10
    [diag] = out["_diagnostics"]
    assert diag["reason"] == "wrong_count" and "1 of 10 usable" in diag["detail"] and "honest edits" in diag["detail"]


# --- the validator every engine's answers go through -------------------------------------------------------------

P = "a red wooden chair"
VALID = ["a blue wooden chair", "a red metal chair", "a green plastic chair", "a small red wooden chair",
         "a striped red wooden chair", "a broken red wooden chair", "two red wooden chairs", "a white wicker chair",
         "a black wooden chair", "a red leather chair", "a yellow wooden chair", "three red wooden chairs"]
FAULTS = {
    "a large red wooden chair!": None,  # only an added size: usable (not a fault)
    "one red wooden chair": "synonym_only", "a red wood chair": "synonym_only", "a very red wooden chair": "synonym_only",
    "not a red wooden chair": "negation", "zero red wooden chairs": "negation", "a red wooden chair without legs": "negation",
    "a red wooden chair #2": "stray_symbols", "a red wooden chair \U0001FA91": "stray_symbols",
    "a blue wooden chair (painted)": "stray_symbols",
    "a red wooden chair leg": "part_of_object",
}


@pytest.mark.parametrize("negative, reason", FAULTS.items())
def test_the_validator_catches_what_an_annotator_catches(negative: str, reason: str | None) -> None:
    assert negative_reason(P, negative) == reason
    assert negative_reason("a dog", "a purple dog") == "implausible_colour"
    assert negative_reason("a brown dog", "a purple dog") == "implausible_colour"
    assert negative_reason("a dog", "a golden dog") is None and negative_reason("a car", "a purple car") is None


@pytest.mark.parametrize("raw, clean", [
    ("a) a blue chair", "a blue chair"), ("#1 a blue chair", "a blue chair"), ("i. a blue chair", "a blue chair"),
    ("iv) a blue chair", "a blue chair"), ("**a blue chair**", "a blue chair"), ("1. **a blue chair**", "a blue chair"),
    ("**1.** a blue chair", "a blue chair"), ("- *a blue chair*", "a blue chair"), ("an old chair", "an old chair"),
])
def test_list_markers_and_markdown_are_cleaned_not_fatal(raw: str, clean: str) -> None:
    assert clean_negative(raw) == clean
    bold = "Here you go:\n" + json.dumps([f"**{v}**" for v in VALID[:10]])
    assert parse_answer(bold) == VALID[:10]


def test_a_partly_valid_answer_keeps_its_valid_items() -> None:
    kept = merge_answers(P, [], VALID[:7] + ["not a red wooden chair", VALID[0], "a red wooden chair leg"])
    assert kept == VALID[:7]
    assert merge_answers(P, kept, VALID[7:]) == VALID[:10]  # the retry only fills what is missing
    assert validate_negatives(P, merge_answers(P, kept, VALID[7:])) is None


def test_every_fault_kind_is_rejected_through_an_openai_server_and_no_valid_item_is_lost() -> None:
    faulty = [k for k, v in FAULTS.items() if v] + ["a purple chair leg"]
    first = faulty + VALID[:6]
    second = [f"{i + 1}. **{v}**" for i, v in enumerate(VALID[6:])]
    answers = iter([first, second])

    def reply(body: dict) -> tuple[int, object]:
        return 200, completion(json.dumps(next(answers, VALID)))

    with FakeOpenAIServer(reply) as srv:
        engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{srv.url}?structured=json_schema"))
        [res] = negatives_for(engine, [P], retries=2)
    assert res.valid and res.attempts == 2 and len(srv.requests) == 2
    assert res.negatives == VALID[:6] + VALID[6:10]  # the six valid items of the first answer kept, in order
    assert not set(res.negatives) & set(faulty)
    with FakeOpenAIServer(lambda b: (200, completion(json.dumps(faulty[:10])))) as srv:  # ten, all faulty
        engine = NEGATIVE_ENGINES.build(parse_spec(f"openai:{srv.url}?structured=json_schema"))
        [res] = negatives_for(engine, [P], retries=0)
    assert not res.valid and res.reason == "stray_symbols"
