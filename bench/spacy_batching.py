"""spaCy expression extraction: ``nlp.pipe`` batches vs one ``nlp(caption)`` call per caption.

Same captions (the synthetic scenes' long captions), same pipeline, same extraction; prints a table,
appends it to docs/benchmarks.md and ends with ``spacy_batching: ratio=X.XX`` (per-call time /
batched time, so > 1 means batching is faster).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import append_section, spacy_version  # noqa: E402
from core.synthetic import long_caption, make_scene  # noqa: E402
from stages.expressions import expressions_from_doc, load_nlp



def captions(n: int) -> list[str]:
    return [long_caption(make_scene(i, seed=7)[1]) for i in range(n)]


def timed(fn) -> tuple[float, int]:
    t = time.perf_counter()
    count = fn()
    return time.perf_counter() - t, count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="captions to parse")
    p.add_argument("--batch-size", type=int, default=64, help="nlp.pipe batch size")
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args(argv)
    texts = captions(args.n)
    nlp = load_nlp()
    list(nlp.pipe(texts[:50]))  # warm up
    batched_s, n_b = timed(lambda: sum(len(expressions_from_doc(d)) for d in nlp.pipe(texts, batch_size=args.batch_size)))
    single_s, n_s = timed(lambda: sum(len(expressions_from_doc(nlp(t))) for t in texts))
    assert n_b == n_s, "both ways must find the same expressions"
    ratio = single_s / batched_s
    lines = [f"Setup: {args.n} synthetic long captions (mean {sum(map(len, texts)) / len(texts):.0f} chars), "
             f"components {nlp.pipe_names}, {n_b} expressions found both ways", "",
             "| mode | seconds | captions/s |", "|---|---|---|",
             f"| nlp.pipe(batch_size={args.batch_size}) | {batched_s:.2f} | {args.n / batched_s:.0f} |",
             f"| nlp(caption) one by one | {single_s:.2f} | {args.n / single_s:.0f} |", "",
             f"spacy_batching: ratio={ratio:.2f}"]
    print("\n".join(lines))
    if not args.no_doc:
        append_section("spaCy batching (bench/spacy_batching.py)", lines, [spacy_version()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
