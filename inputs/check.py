"""The image check: every image is fully decoded once and stored the way every reader sees it.

Runs right after reading, in the read step's thread pool (``inputs.reader.checked``): size
limits from the header (decompression bombs), a full decode (truncated or corrupt files are
dead-lettered here, never later), EXIF orientation applied, CMYK/16-bit/32-bit/float/palette/alpha
made RGB or 8-bit grey, first frame of animations; the short caption is clipped.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from core.record import Field, SampleError
from core.images import dhash, thumbnail
from core.outcomes import bump, mark_dead, mark_filtered

STAGE = "read"
MAX_SHORT_CAPTION_CHARS = 2000  # alt-text longer than this is cut at a word boundary


def clip_short_caption(record: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """Cut an over-long alt-text at a word boundary (counted as ``short_caption_truncated``)."""
    text = record.get("short_caption") or ""
    text = text.replace("\x00", "")
    if len(text) > max_chars:
        cut = text[:max_chars]
        text = cut.rsplit(" ", 1)[0] if " " in cut else cut
        bump(record, "short_caption_truncated")
    record["short_caption"] = text
    return record


_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_KEPT_MODES = ("RGB", "L")  # greyscale is kept as stored: every reader converts to RGB on load
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _to_rgb(im: Image.Image) -> tuple[Image.Image, str]:
    """``im`` as an 8-bit RGB (or L) image and the name of the conversion done ("" when none)."""
    if im.mode in _KEPT_MODES:
        return im, ""
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        if im.mode == "RGB":
            return im, "palette"
        return _flatten_alpha(im), "palette"
    if im.mode in _ALPHA_MODES:
        return _flatten_alpha(im), "alpha"
    if im.mode.startswith("I") or im.mode == "F":  # 16-bit / 32-bit / float greyscale: scale to 8 bits
        return _to_8bit(im)
    if im.mode == "CMYK":
        return im.convert("RGB"), "cmyk"
    return im.convert("RGB"), im.mode.lower()


def _to_8bit(im: Image.Image) -> tuple[Image.Image, str]:
    """A 16-bit, 32-bit integer or float greyscale image as 8-bit L, counted by what it was (``16bit``,
    ``32bit``, ``float``). Scaled by the range its values use: 16-bit, and integers up to 65535, as 16
    bits (65535 -> 255); values up to 255 as they are; floats within [0, 1] as fractions (1.0 -> 255);
    anything larger by its maximum. Negatives and NaN become 0."""
    what = "16bit" if im.mode.startswith("I;16") else "float" if im.mode == "F" else "32bit"
    arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    if what == "16bit" or (what == "32bit" and 255.0 < top <= 65535.0):
        scale = 255.0 / 65535.0
    elif what == "float" and 0.0 < top <= 1.0:
        scale = 255.0
    elif top > 255.0:
        scale = 255.0 / top
    else:
        scale = 1.0
    arr = np.clip(arr * scale if scale != 1.0 else arr, 0, 255)
    return Image.fromarray(np.round(arr).astype(np.uint8), mode="L"), what


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite a transparent image on white: transparent pixels become white, not black."""
    rgba = im.convert("RGBA")
    base = Image.new("RGB", rgba.size, _WHITE)
    base.paste(rgba, mask=rgba.getchannel("A"))
    return base


def _encode(im: Image.Image, source_format: str) -> tuple[bytes, str]:
    """Re-encode: JPEG stays JPEG (quality 95), everything else becomes lossless PNG."""
    buf = io.BytesIO()
    if source_format == "JPEG" and im.mode in _KEPT_MODES:
        im.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "JPEG"
    im.save(buf, format="PNG")
    return buf.getvalue(), "PNG"


_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
                b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def unsupported_format(data: bytes) -> str:
    """The name of an image format Pillow cannot open here that ``data`` looks like ("" when none)."""
    head = data[:512]
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "JPEG XL"
    text = head.lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG"
    if head.startswith(b"%PDF"):
        return "PDF"
    return ""


def _verify_chunks(data: bytes) -> None:
    """PNG: every chunk's CRC, which a full decode does not check (Pillow's ``load`` skips IDAT CRCs,
    and libpng-based readers such as ``torchvision.io.decode_png`` fail hard on them)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        with Image.open(io.BytesIO(data)) as im:
            im.verify()


def check_image(record: dict[str, Any], max_pixels: int, min_side: int,
                max_short_caption_chars: int = MAX_SHORT_CAPTION_CHARS, near_hashes: bool = False) -> dict[str, Any]:
    """Decode once; store an image every reader sees the same way, set width/height/ext, or mark the record.

    The size limit is checked from the header, before any pixel is decoded (decompression bombs).
    EXIF orientation is applied to the stored pixels (so boxes and pixels agree); CMYK, 16-bit,
    palette and alpha images become RGB (alpha composited on white); an animated image keeps its
    first frame; greyscale (L) is kept. Untouched JPEG/PNG/WebP bytes are stored as they came.
    A PNG's chunk CRCs are verified too (a bad one is ``corrupt_image``). Records already marked
    dead or filtered by the reader pass through untouched.
    Each conversion is counted as ``converted:<what>`` in the shard stats. ``near_hashes``: the
    near-duplicate hash and thumbnail (``transforms.dedup``) are taken from this decode, so no
    later stage decodes the image again for them.
    """
    if Field.DEAD in record or Field.FILTERED in record:
        return record
    clip_short_caption(record, max_short_caption_chars)
    data = record.get(Field.IMAGE_BYTES, b"")
    if not data:
        return mark_dead(record, STAGE, "empty_file")
    Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit below, before decoding pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a library in the same process may have turned it on
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height, fmt = _decode_and_store(record, im, data, max_pixels, near_hashes)
    except SampleError as e:
        return mark_dead(record, STAGE, e.reason, e.detail)
    except Image.UnidentifiedImageError as e:
        known = unsupported_format(data)
        if known:  # an image, in a format we do not decode (an iPhone HEIC named .jpg): filtered, not corrupt
            return mark_filtered(record, STAGE, "unsupported_format", f"{known} (no decoder)")
        return mark_dead(record, STAGE, "corrupt_image", f"not an image: {e}")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"
        return mark_dead(record, STAGE, reason, f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - e.g. ultralytics patches Image.open and tries pi_heif on unknown bytes
        return mark_dead(record, STAGE, "corrupt_image", f"{type(e).__name__}: {e}")
    record["width"], record["height"], record[Field.EXT] = width, height, _FORMAT_EXT[fmt]
    if min(width, height) < min_side:
        return mark_filtered(record, STAGE, "too_small", f"{width}x{height} below --min-side {min_side}")
    return record


def _decode_and_store(record: dict[str, Any], im: Image.Image, data: bytes, max_pixels: int,
                      near_hashes: bool) -> tuple[int, int, str]:
    """The one full decode of an opened image (see :func:`check_image`): the size checked from the header
    first (``too_large``, raised), chunk CRCs verified, then the first frame, RGB or 8-bit grey and EXIF
    orientation; a converted image is re-encoded into the record, each conversion counted. Returns the
    stored image's width, height and format."""
    width, height = im.size
    if width * height > max_pixels:
        raise SampleError("too_large", f"{width}x{height} exceeds --max-pixels {max_pixels}")
    _verify_chunks(data)
    fmt = im.format
    conversions = []
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
        conversions.append("first_frame")
    im.load()
    out = im
    if out.mode not in _KEPT_MODES:
        out, what = _to_rgb(out)
        conversions.append(what)
    transpose = _EXIF_TRANSPOSE.get(im.getexif().get(_EXIF_ORIENTATION, 1))
    if transpose is not None:
        out = out.transpose(transpose)
        conversions.append("exif_orientation")
    if fmt not in _FORMAT_EXT:
        conversions.append(f"format_{str(fmt).lower()}")
    if conversions:
        record.pop(Field.SOURCE, None)  # the stored bytes are no longer the source file's
        record[Field.IMAGE_BYTES], fmt = _encode(out, fmt)
        width, height = out.size
        for what in conversions:
            bump(record, f"converted:{what}")
    if near_hashes:
        record[Field.DHASH], record[Field.THUMB] = dhash(out), thumbnail(out)
    return width, height, fmt
