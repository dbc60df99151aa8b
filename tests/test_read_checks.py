"""check_image limits and conversions, alt-text limits and tar member checks, one function at a time."""
from __future__ import annotations

import io
import tarfile

import pytest
from PIL import Image

from bad_inputs import bomb_png
from transforms.check import check_image, clip_short_caption
from transforms.read import unsafe_member_problem


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def _rec(data: bytes, caption: str = "") -> dict:
    return {"key": "k", "f_path": "x", "short_caption": caption, "image_bytes": data}


def test_max_pixels_is_checked_from_the_header() -> None:
    rec = check_image(_rec(_jpeg((64, 48))), max_pixels=64 * 48 - 1, min_side=8)
    assert rec["_dead"]["reason"] == "too_large" and "64x48" in rec["_dead"]["detail"]
    assert "_dead" not in check_image(_rec(_jpeg((64, 48))), max_pixels=64 * 48, min_side=8)
    bomb = check_image(_rec(bomb_png(50_000, 60_000)), max_pixels=64_000_000, min_side=8)
    assert bomb["_dead"]["reason"] == "too_large" and "50000x60000" in bomb["_dead"]["detail"]


def test_plain_rgb_jpeg_bytes_are_stored_untouched() -> None:
    data = _jpeg()
    rec = check_image(_rec(data), max_pixels=10**8, min_side=8)
    assert rec["image_bytes"] is data and (rec["width"], rec["height"], rec["ext"]) == (64, 48, "jpg")
    assert "_stats" not in rec


@pytest.mark.parametrize("mode,fmt,ext", [("1", "PNG", "png"), ("RGB", "BMP", "png"), ("RGB", "TIFF", "png"),
                                         ("LA", "PNG", "png"), ("RGBA", "WEBP", "png")])
def test_other_modes_and_formats_become_rgb_or_grey(mode: str, fmt: str, ext: str) -> None:
    buf = io.BytesIO()
    Image.new(mode, (20, 10)).save(buf, format=fmt)
    rec = check_image(_rec(buf.getvalue()), max_pixels=10**8, min_side=8)
    assert "_dead" not in rec, rec.get("_dead")
    stored = Image.open(io.BytesIO(rec["image_bytes"]))
    assert stored.mode in ("RGB", "L") and stored.size == (20, 10) and rec["ext"] == ext


def test_alt_text_is_cut_at_a_word_boundary_and_counted() -> None:
    rec = clip_short_caption(_rec(b"", "alpha beta gamma delta"), 12)
    assert rec["short_caption"] == "alpha beta" and rec["_stats"] == {"short_caption_truncated": 1}
    rec = clip_short_caption(_rec(b"", "x" * 50), 10)
    assert rec["short_caption"] == "x" * 10
    rec = clip_short_caption(_rec(b"", "nul\x00byte 🐈"), 100)
    assert rec["short_caption"] == "nulbyte 🐈" and "_stats" not in rec


@pytest.mark.parametrize("name,kind,problem", [
    ("000001.jpg", tarfile.REGTYPE, None),
    ("part/000001.jpg", tarfile.REGTYPE, None),
    ("../../etc/x.jpg", tarfile.REGTYPE, "path traversal"),
    ("a/../../x.jpg", tarfile.REGTYPE, "path traversal"),
    ("/etc/x.jpg", tarfile.REGTYPE, "absolute path"),
    ("C:/x.jpg", tarfile.REGTYPE, "absolute path"),
    ("000002.jpg", tarfile.SYMTYPE, "not a regular file"),
    ("000003.jpg", tarfile.LNKTYPE, "not a regular file"),
    ("000004.jpg", tarfile.CHRTYPE, "not a regular file"),
])
def test_tar_member_names_are_checked(name: str, kind: bytes, problem: str | None) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    found = unsafe_member_problem(ti)
    assert (found is None) if problem is None else (problem in found)
