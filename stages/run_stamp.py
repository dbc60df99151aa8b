"""Record edits of the run itself (no model): what a record keeps from its input, and which run wrote a field."""
from __future__ import annotations

from typing import Any

from core.outcomes import mark_dead
from core.record import Field
from stages.caption import clean_caption

STAGE_FIELDS = {"recaption": "caption", "expressions": "expressions", "detect": "bbox_info", "negatives": "negatives"}


def carry_input_fields(rec: dict[str, Any], stages: tuple[str, ...], config_hash: str,
                       reuse_captions: bool, max_caption_chars: int = 4000) -> dict[str, Any]:
    """Keep what the input already has (our own shards, a long-caption column) for the stages not rerun.

    A kept caption is cleaned and limited as the captioner's are (the recaption stage's ``clean_caption``);
    one left empty by that is no caption."""
    old = rec.pop(Field.INPUT_RECORD, {})
    caption = rec.pop(Field.INPUT_CAPTION, None)
    keep_caption = bool(caption) and ("recaption" not in stages or reuse_captions)
    caption = clean_caption(rec, str(caption), max_caption_chars) if keep_caption else None
    provenance = dict(old.get("provenance", {}))
    provenance.pop("version", None)
    if caption:
        rec["caption"] = caption
        provenance.setdefault("caption", {"engine": "input", "stub": False, "run": config_hash})
    else:
        provenance.pop("caption", None)
    if "detect" not in stages and "bbox_info" in old:
        rec["bbox_info"] = old["bbox_info"]
    else:
        provenance.pop("bbox_info", None)
        provenance.pop("expressions", None)
    if "negatives" in stages:
        provenance.pop("negatives", None)
        for region in rec.get("bbox_info", []):
            region["flag_short_neg"], region["short_expr_negs"] = 0, {}
    if provenance:
        rec["provenance"] = provenance
    if "caption" not in rec and stages and "recaption" not in stages:  # a model stage needs a caption
        return mark_dead(rec, "recaption", "no_caption", "the input has no long caption and --stages skips recaption")
    return rec


def stamp_run(rec: dict[str, Any], field: str, config_hash: str) -> dict[str, Any]:
    """Say which run produced ``field`` (kept as is when the field came from an earlier run)."""
    block = rec.get("provenance", {}).get(field)
    if isinstance(block, dict) and Field.DEAD not in rec:
        block.setdefault("run", config_hash)
    return rec


def strip_bytes(rec: dict[str, Any]) -> dict[str, Any]:
    """The record without its image bytes (a failed sample's dead letter does not keep them)."""
    rec.pop(Field.IMAGE_BYTES, None)
    return rec
