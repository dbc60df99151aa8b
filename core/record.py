"""The FineHARD record: field names, checks, and the provenance block.

The ``.json`` member of every emitted WebDataset sample is one record. Field names follow the
released FineHARD json files so FG-CLIP's loader and ``training/`` read the same thing.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

PROJECT_VERSION = "0.1.0"
NUM_NEGATIVES = 10
METRICS_NAMESPACE = "finehard"  # Beam metrics; RunInference stages use "finehard_<stage>"

# Fields of the emitted .json member (FineHARD layout plus key/provenance).
RECORD_FIELDS = ("key", "f_path", "caption", "short_caption", "width", "height", "bbox_info", "provenance")
REGION_FIELDS = ("bbox", "short_expr", "long_expr", "flag_short_neg", "short_expr_negs")

_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def text_hash(text: str) -> str:
    """Short stable hash of a text (prompts, configs) for provenance."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def make_key(name: str, identity: str | None = None) -> str:
    """A WebDataset-safe key (no dots, no slashes) that is stable for the same ``name``.

    Characters outside ``[A-Za-z0-9_-]`` become ``_``; when that changed anything (or the name
    is long), a short hash of the original keeps distinct names distinct.
    """
    identity = name if identity is None else identity
    safe = _KEY_BAD.sub("_", name).strip("_")[:80]
    if safe != name or not safe:
        safe = f"{safe or 'k'}_{hashlib.sha1(identity.encode('utf-8')).hexdigest()[:10]}"
    return safe


def negatives_mapping(negatives: list[str]) -> dict[str, str]:
    """The FineHARD ``short_expr_negs`` layout: ``{"0": neg0, ..., "9": neg9}``."""
    return {str(i): n for i, n in enumerate(negatives)}


def validate_record(rec: dict[str, Any]) -> list[str]:
    """Problems with an emitted record, as short strings; empty when it is well formed."""
    problems = []
    for f in RECORD_FIELDS:
        if f not in rec:
            problems.append(f"missing field {f}")
    if problems:
        return problems
    if not isinstance(rec["caption"], str) or not isinstance(rec["short_caption"], str):
        problems.append("caption and short_caption must be strings")
    if "." in rec["key"] or "/" in rec["key"]:
        problems.append("key contains '.' or '/'")
    for i, r in enumerate(rec["bbox_info"]):
        missing = [f for f in REGION_FIELDS if f not in r]
        if missing:
            problems.append(f"region {i}: missing {missing}")
            continue
        b = r["bbox"]
        if len(b) != 5 or not (0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1):
            problems.append(f"region {i}: bbox {b} is not normalised xyxy+score")
        if r["flag_short_neg"] == 1 and len(r["short_expr_negs"]) != NUM_NEGATIVES:
            problems.append(f"region {i}: flag_short_neg=1 needs exactly {NUM_NEGATIVES} negatives")
    return problems
