"""A manifest's bytes as lines of text, and the parts a large manifest is cut into (``inputs.units.split_unit``)."""
from __future__ import annotations

import io
from typing import IO, Iterator

from inputs.opening import open_input

MAX_MANIFEST_LINE_BYTES = 64 * 1024 * 1024  # a longer jsonl line is a bad_manifest_row, read no further
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _lines(f: IO[bytes], limit: int) -> Iterator[tuple[bytes, bool]]:
    """``(line, too_long)`` per ``\\n``-separated line, holding at most ``limit`` bytes of one line.

    Only ``\\n`` ends a line (``str.splitlines`` would also split at U+2028 inside a caption), and a
    line longer than ``limit`` (a link to ``/dev/zero``, a broken file) is skipped, not kept.
    """
    buf, scan, skipping = bytearray(), 0, False
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            if buf and not skipping:
                yield bytes(buf), False
            return
        buf += chunk
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                scan = len(buf)
                if len(buf) > limit:
                    if not skipping:
                        yield b"", True
                    skipping, scan = True, 0
                    del buf[:]
                break
            line = bytes(buf[:nl + 1])
            del buf[:nl + 1]
            scan = 0
            if skipping:
                skipping = False
                continue
            yield (b"", True) if len(line) > limit + 1 else (line, False)


class _Prefixed:
    """``prefix`` then the rest of ``f``: a stream whose first bytes were already read."""

    def __init__(self, prefix: bytes, f: IO[bytes]):
        self.prefix, self.f = prefix, f

    def read(self, n: int = -1) -> bytes:
        if not self.prefix:
            return self.f.read(n)
        if n is None or n < 0:
            out, self.prefix = self.prefix + self.f.read(), b""
            return out
        out, self.prefix = self.prefix[:n], self.prefix[n:]
        return out + (self.f.read(n - len(out)) if len(out) < n else b"")


def _decode(data: bytes) -> tuple[str, bool]:
    """UTF-8 text; undecodable bytes kept as lone surrogates (made valid later). Second: it was invalid."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True


class _Span:
    """At most ``size`` bytes of ``f`` (a part of a manifest that starts at a line start)."""

    def __init__(self, f: IO[bytes], size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        want = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(want) if want > 0 else b""
        self.left -= len(data)
        return data


def _parquet_parts(uri: str, rows_per_unit: int) -> list[tuple[tuple[int, int], int]]:
    """``((first row group, end row group), first row)`` of each part of about ``rows_per_unit`` rows of a
    parquet file, from its metadata."""
    import pyarrow.parquet as pq

    parts: list[tuple[tuple[int, int], int]] = []
    with open_input(uri) as f:
        meta = pq.ParquetFile(f if f.seekable() else io.BytesIO(f.read())).metadata
    start_group, rows, first = 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= rows_per_unit or g == meta.num_row_groups - 1:
            parts.append(((start_group, g + 1), first))
            start_group, first, rows = g + 1, first + rows, 0
    return parts


def _jsonl_parts(uri: str, rows_per_unit: int) -> list[tuple[tuple[int, int], int]]:
    """``((start byte, end byte), first row)`` of each part of about ``rows_per_unit`` rows of a UTF-8 jsonl
    file, cut at line starts (one sequential scan of its bytes, no parsing); none for a UTF-16 file."""
    parts: list[tuple[tuple[int, int], int]] = []
    with open_input(uri) as f:
        if f.read(2) in UTF16_BOMS:
            return []
        f.seek(0)
        pos = start = first = rows = 0
        for line, _ in _lines(f, MAX_MANIFEST_LINE_BYTES):
            body = line[len(UTF8_BOM):] if pos == 0 and line.startswith(UTF8_BOM) else line
            pos += len(line)
            if _decode(body)[0].strip():  # the reader's own test of a blank line
                rows += 1
            if rows >= rows_per_unit:
                parts.append(((start, pos), first))
                start, first, rows = pos, first + rows, 0
        if pos > start:
            parts.append(((start, pos), first))
    return parts
