"""A record as the readers make it: a new one, its text made valid, its image bytes read in (or the reason they
could not be), and the checks on a record that comes from one of our own shards."""
from __future__ import annotations

from typing import Any, Optional

from core.outcomes import bump, mark_dead
from core.record import Field, NUM_NEGATIVES, REGION_FIELDS, SampleError, is_valid_text, valid_text
from inputs.opening import read_limited, source_of

STAGE = "read"


def new_record(key: str, f_path: str, short_caption: str = "", key_source: Optional[str] = None,
               **extra: Any) -> dict[str, Any]:
    rec = {"key": key, "f_path": f_path, "short_caption": short_caption or "", **extra}
    if key_source is not None and not is_valid_text(key_source):
        bump(rec, "unicode_repaired")
    return rec


def valid_record(rec: dict[str, Any]) -> dict[str, Any]:
    """Every text of the record made valid UTF-8 (lone surrogates), counted as ``unicode_repaired``.

    Shards are written with ``ensure_ascii=False``: a lone surrogate would fail the write. Paths
    and URLs keep the undecodable bytes visible (``\\xff``); other text gets U+FFFD.
    """
    for field in list(rec):
        if field == Field.IMAGE_BYTES:
            continue
        value, n = _valid_value(rec[field], escape=field in ("f_path", "source_url"))
        if n:
            rec[field] = value
            bump(rec, "unicode_repaired", n)
    return rec


def _valid_value(value: Any, escape: bool) -> tuple[Any, int]:
    if isinstance(value, str):
        return (value, 0) if is_valid_text(value) else (valid_text(value, escape), 1)
    if isinstance(value, dict):
        n, out = 0, {}
        for k, v in value.items():
            k2, a = _valid_value(k, escape) if isinstance(k, str) else (k, 0)
            v2, b = _valid_value(v, escape)
            out[k2], n = v2, n + a + b
        return (out, n) if n else (value, 0)
    if isinstance(value, (list, tuple)):
        items = [_valid_value(v, escape) for v in value]
        n = sum(b for _, b in items)
        return ([v for v, _ in items], n) if n else (value, 0)
    return value, 0


def _read_error(rec: dict[str, Any], e: BaseException) -> dict[str, Any]:
    if isinstance(e, SampleError):
        return mark_dead(rec, STAGE, e.reason, e.detail)
    return mark_dead(rec, STAGE, "unreadable", f"{type(e).__name__}: {e}")


def _read_into(rec: dict[str, Any], uri: str, limit: Optional[int], allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        rec[Field.IMAGE_BYTES] = read_limited(uri, limit, allowed)
    except Exception as e:  # noqa: BLE001 - one unreadable image is that sample's reason, never the bundle's
        _read_error(rec, e)
        return rec
    _keep_source(rec, uri)
    return rec


def _keep_source(rec: dict[str, Any], uri: str) -> None:
    """Note where the record's bytes (all of the file at ``uri``) can be read again."""
    source = source_of(uri)
    if source is not None:
        rec[Field.SOURCE] = source


def _not_object(row: Any) -> str:
    return f"a JSON {type(row).__name__ if row is not None else 'null'}, not an object"


def is_finehard_record(meta: dict[str, Any]) -> bool:
    """True for the ``.json`` member of a shard this pipeline wrote (it has provenance and regions)."""
    return isinstance(meta.get("provenance"), dict) and "bbox_info" in meta and "f_path" in meta


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def shard_record_problem(meta: dict[str, Any]) -> Optional[str]:
    """What is wrong with the record of one of our own shards (tampered, or from a broken writer), or None.

    Its fields are carried into the new shard (captions, regions, provenance), so they must have
    the types every later stage and the training loader expect.
    """
    for f in ("key", "f_path", "short_caption", "caption"):
        if f in meta and not isinstance(meta[f], str):
            return f"{f} is a {type(meta[f]).__name__}, not a string"
    regions = meta.get("bbox_info")
    if not isinstance(regions, list):
        return f"bbox_info is a {type(regions).__name__}, not a list"
    for i, r in enumerate(regions):
        if not isinstance(r, dict):
            return f"bbox_info[{i}] is a {type(r).__name__}, not an object"
        missing = [f for f in REGION_FIELDS if f not in r]
        if missing:
            return f"bbox_info[{i}] lacks {missing}"
        b = r["bbox"]
        if not (isinstance(b, list) and len(b) == 5 and all(_number(v) for v in b)
                and 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1):
            return f"bbox_info[{i}].bbox is not normalised [x1, y1, x2, y2, score]: {str(b)[:100]}"
        if not isinstance(r["short_expr"], str) or not isinstance(r["long_expr"], str):
            return f"bbox_info[{i}] expressions are not strings"
        if r["flag_short_neg"] not in (0, 1) or isinstance(r["flag_short_neg"], bool):
            return f"bbox_info[{i}].flag_short_neg is {str(r['flag_short_neg'])[:50]}, not 0 or 1"
        negs = r["short_expr_negs"]
        if not isinstance(negs, dict) or not all(isinstance(v, str) for v in negs.values()):
            return f"bbox_info[{i}].short_expr_negs is not an object of strings"
        if r["flag_short_neg"] == 1 and len(negs) != NUM_NEGATIVES:
            return f"bbox_info[{i}] has flag_short_neg 1 and {len(negs)} negatives, not {NUM_NEGATIVES}"
    for name, block in meta["provenance"].items():
        if name != "version" and not isinstance(block, dict):
            return f"provenance.{name} is a {type(block).__name__}, not an object"
    return None
