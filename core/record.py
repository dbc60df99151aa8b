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
# Reasons that say an engine (a server, a GPU worker) failed rather than the sample: the sample is
# written to the dead-letter list as retryable, and a re-run into the same output asks again.
RETRYABLE_REASONS = frozenset({"caption_request_failed", "caption_timeout", "engine_error", "timeout"})
# Image file extensions (lower case, no dot) the readers accept and the shard readers recognise.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "jfif", "jpe", "avif")
# The largest image file (or tar member, or download) read: --max-image-bytes' default. Written here only:
# pipeline.options gives it as the flag's default and pipeline.run compares the flag with it to decide
# whether it enters the config hash (two copies could drift apart and silently break resume).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
ROWS_PER_UNIT = 5000  # --rows-per-read-unit default: manifest rows per read unit (a large manifest is read by many workers)
MAX_DETAIL_CHARS = 500  # a dead-letter or diagnostic detail is cut here
METRICS_NAMESPACE = "finehard"  # Beam metrics; RunInference stages use "finehard_<stage>"
# Counter keys (core.outcomes.bump) that other modules read back: the prefix, then the reason.
NEGATIVES_INVALID = "negatives_invalid:"  # a region left without negatives (transforms.negatives)
# Not a field: appended to a tar's file name, it makes the key of the record that stands for a tar
# that could not be read to its end (that record is dead-lettered under this key).
TAR_ERROR_KEY_SUFFIX = "_tar_error"

# Fields of the emitted .json member (FineHARD layout plus key/provenance).
RECORD_FIELDS = ("key", "f_path", "caption", "short_caption", "width", "height", "bbox_info", "provenance")
REGION_FIELDS = ("bbox", "short_expr", "long_expr", "flag_short_neg", "short_expr_negs")



class SampleError(Exception):
    """A per-sample failure with a short machine-readable reason (e.g. ``corrupt_image``): that
    sample is dead-lettered with it, the run goes on."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Field:
    """The record's internal fields: set and read between stages, never written to a shard's ``.json``.

    Everything a stage adds that is not a FineHARD field is named here, and :func:`public_fields`
    is the one place they are stripped.
    """
    DEAD = "_dead"                    # {"stage", "reason", "detail"}: goes to the dead-letter output
    FILTERED = "_filtered"            # {"stage", "reason", "detail"}: dropped on purpose (too small, duplicate)
    STATS = "_stats"                  # per-record counters the shard writer sums into the shard's stats
    SHARD = "_shard"                  # shard id, assigned after reading
    EXPRESSIONS = "_expressions"      # referring expressions found in the caption, for the detector
    INPUT_RECORD = "_input_record"    # the record an input shard of ours carried (fields of stages not rerun)
    INPUT_CAPTION = "_input_caption"  # a long caption the input already had
    SPILL = "_spill"                  # where the image bytes were spilled (a path or fsspec URI of the spill folder)
    # where the stored bytes can be read again exactly, so they are not carried nor spilled: a file (local
    # path or fsspec URI) holding just them, or (uri, offset, size) of a member of an uncompressed tar
    SOURCE = "_source"
    # where the sample stands in the input: (read unit's place in the listing, item's place in it, file name);
    # duplicate removal keeps the first (stages.dedup.rank)
    ORDER = "_order"
    SHA256 = "_image_sha256"          # sha256 of the stored image bytes, computed once (spill name, dedup, cache)
    DHASH = "_dhash"                  # perceptual hash for near-duplicate removal
    THUMB = "_thumb"                  # tiny thumbnail that confirms a near-duplicate
    DIAGNOSTICS = "_diagnostics"      # [{"stage", "reason", "detail", "raw_answer", ...}]: OUTPUT/diagnostics/
    IMAGE_BYTES = "image_bytes"       # the (checked, normalised) image file
    EXT = "ext"                       # its file extension in the shard (jpg, png, webp)


INTERNAL_FIELDS = frozenset(v for k, v in vars(Field).items() if k.isupper())


def public_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its internal fields: what a shard's ``.json`` member holds."""
    return {k: v for k, v in record.items() if k not in INTERNAL_FIELDS and not k.startswith("_")}


_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def text_hash(text: str) -> str:
    """Short stable hash of a text (prompts, configs) for provenance."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def is_valid_text(text: str) -> bool:
    """False when ``text`` holds lone surrogates (which UTF-8 cannot encode), e.g. from a JSON ``"\\ud800"``
    escape or from undecodable bytes (Python's ``surrogateescape``) in a file name or manifest line."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def valid_text(text: str, escape: bool = False) -> str:
    """``text`` with every lone surrogate made valid; unchanged when it is valid already.

    ``escape=False`` (captions, expressions) puts U+FFFD in its place; ``escape=True`` (paths, URLs)
    writes it out so the original stays recognisable: an undecodable byte ``0xff`` kept by
    ``surrogateescape`` becomes the four characters ``\\xff``, any other lone surrogate ``\\udXXX``.
    """
    if is_valid_text(text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            if not escape:
                out.append("\ufffd")
            elif 0xDC80 <= code <= 0xDCFF:
                out.append(f"\\x{code - 0xDC00:02x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def make_key(name: str, identity: str | None = None) -> str:
    """A WebDataset-safe key (no dots, no slashes) that is stable for the same ``name``.

    Characters outside ``[A-Za-z0-9_-]`` become ``_``; when that changed anything (or the name
    is long), a short hash of the original keeps distinct names distinct.
    """
    identity = name if identity is None else identity
    safe = _KEY_BAD.sub("_", name).strip("_")[:80]
    if safe != name or not safe:
        # surrogatepass: a name with lone surrogates (undecodable bytes) still hashes, and every valid
        # name hashes exactly as before
        safe = f"{safe or 'k'}_{hashlib.sha1(identity.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
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
