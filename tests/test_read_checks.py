"""check_image limits and conversions, alt-text limits and tar member checks, one function at a time."""
from __future__ import annotations

import io
import tarfile

import pytest
from PIL import Image

from bad_inputs import bomb_png
from inputs.check import check_image, clip_short_caption
from core.files import unsafe_member_problem


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


# Issue #16: the reader's and checker's building blocks, one at a time.


def test_png_with_a_flipped_idat_crc_is_corrupt() -> None:
    from bad_inputs import bad_crc_png, png

    with Image.open(io.BytesIO(bad_crc_png())) as im:
        im.load()  # what made it slip through: Pillow decodes it without complaint
    rec = check_image(_rec(bad_crc_png()), max_pixels=10**8, min_side=8)
    assert rec["_dead"]["reason"] == "corrupt_image" and "IDAT" in rec["_dead"]["detail"]
    assert "_dead" not in check_image(_rec(png()), max_pixels=10**8, min_side=8)


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_an_empty_input_is_refused_before_listing(blank: str) -> None:
    from inputs.units import InputError, list_units

    with pytest.raises(InputError, match=r"^--input is empty; give a folder, glob, manifest or tar$"):
        list_units(blank)


def test_manifest_lines_split_only_at_newline_and_long_lines_are_bounded() -> None:
    from inputs.lines import _lines

    data = '{"a": "x\u2028y\u2029z\x85w\x0cv"}\r\n\n'.encode("utf-8") + b"z" * 100 + b"\n{}"
    lines = list(_lines(io.BytesIO(data), limit=50))
    assert lines[0] == ('{"a": "x\u2028y\u2029z\x85w\x0cv"}\r\n'.encode("utf-8"), False)
    assert lines[1:] == [(b"\n", False), (b"", True), (b"{}", False)]


@pytest.mark.parametrize("uri,proto,local", [
    ("/data/a::b.jpg", None, "/data/a::b.jpg"), ("a::b.jpg", None, "a::b.jpg"), ("file:///x/y.jpg", "file", "/x/y.jpg"),
    ("gs://b/x.jpg", "gs", None), ("HTTPS://h/x.jpg", "https", None), ("simplecache::gs://b/x", "simplecache::gs", None),
    ("dir/x://y.jpg", None, "dir/x://y.jpg")])
def test_protocols_are_read_without_url_chaining(uri: str, proto, local) -> None:
    from core.files import local_path, protocol_of

    assert protocol_of(uri) == proto and local_path(uri) == local


def test_unsupported_schemes_are_refused_without_a_connection() -> None:
    from core.record import SampleError
    from inputs.opening import read_limited

    for uri in ("ftp://127.0.0.1/x.jpg", "data://image/png;base64,AAAA", "nosuch://h/x.jpg"):
        with pytest.raises(SampleError) as e:
            read_limited(uri, 1000)
        assert e.value.reason == "unsupported_scheme"


def test_text_is_made_valid_and_keys_of_valid_names_do_not_change() -> None:
    from core.record import make_key, valid_text
    from inputs.records import valid_record

    assert make_key("a b") == "a_b_" + __import__("hashlib").sha1(b"a b").hexdigest()[:10]
    assert make_key("x\udcff").isascii() and make_key("x\udcff") != make_key("x\udcfe")
    assert valid_text("caf\udce9", escape=True) == "caf\\xe9" and valid_text("a\ud83db") == "a\ufffdb"
    rec = valid_record({"key": "k", "f_path": "/p/\udcff.jpg", "short_caption": "x\ud800",
                        "_input_record": {"bbox_info": [{"short_expr": "\udc80"}]}, "image_bytes": b"\xff"})
    assert rec["f_path"] == "/p/\\xff.jpg" and rec["short_caption"] == "x\ufffd"
    assert rec["_input_record"]["bbox_info"][0]["short_expr"] == "\ufffd"
    assert rec["_stats"] == {"unicode_repaired": 3} and rec["image_bytes"] == b"\xff"


def test_oversized_and_non_regular_files_are_never_read_whole(tmp_path) -> None:
    import os

    from bad_inputs import FifoGuard
    from core.record import SampleError
    from inputs.opening import read_limited

    (tmp_path / "f").write_bytes(b"x" * 11)
    assert read_limited(str(tmp_path / "f"), 11) == b"x" * 11
    with pytest.raises(SampleError, match="file_too_large"):
        read_limited(str(tmp_path / "f"), 10)
    os.mkfifo(tmp_path / "p")
    with FifoGuard(tmp_path / "p"), pytest.raises(SampleError, match="not_a_regular_file"):
        read_limited(str(tmp_path / "p"), 10)
    with pytest.raises(SampleError, match="not_a_regular_file"):
        read_limited("/dev/zero", 10)
    with pytest.raises(SampleError, match="not_a_regular_file"):
        read_limited(str(tmp_path), 10)


def test_a_local_read_sizes_its_buffer_from_fstat_and_still_sees_a_file_that_grew(tmp_path, monkeypatch) -> None:
    """The read asks for the stat size + 1, not for ``--max-image-bytes`` (a 64 MiB buffer per image);
    a file that grew after its fstat (simulated: fstat reports fewer bytes) is read on, up to the limit."""
    import io as _io

    import inputs.opening as read_mod
    from core.record import SampleError

    asked: list[int] = []

    class Recording(_io.BytesIO):
        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            asked.append(n)
            return super().read(n)

    (tmp_path / "f").write_bytes(b"y" * 3000)
    real = read_mod._open_local
    assert read_mod.read_limited(str(tmp_path / "f"), 64 * 2**20) == b"y" * 3000

    def stale(path: str):  # fstat taken before the writer appended 2,000 bytes
        f, size = real(path)
        data = f.read()
        f.close()
        return Recording(data), size - 2000

    monkeypatch.setattr(read_mod, "_open_local", stale)
    asked.clear()
    assert read_mod.read_limited(str(tmp_path / "f"), 64 * 2**20) == b"y" * 3000
    assert asked[0] == 1001 and max(asked) < 64 * 2**20
    assert read_mod.read_limited(str(tmp_path / "f"), None) == b"y" * 3000
    with pytest.raises(SampleError, match="file_too_large"):
        read_mod.read_limited(str(tmp_path / "f"), 2500)


def test_key_clashes_are_found_across_read_units(tmp_path) -> None:
    from inputs.units import list_units

    for name in ("a.jpg", "b.jpg", "b.png", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    units = list_units(str(tmp_path), files_per_unit=1)  # b.jpg and b.png land in different units
    assert [u.uris[0].rsplit("/", 1)[-1] for u in units] == ["a.jpg", "b.jpg", "b.png", "c.jpg"]
    assert [bool(u.ext_keys) for u in units] == [False, True, True, False]


def test_tar_names_with_dot_slash_and_globs_over_folders(tmp_path) -> None:
    from bad_inputs import jpeg, write_tar
    from inputs.reader import read_unit
    from inputs.units import ReadUnit, list_units

    write_tar(tmp_path / "t.tar", [("./000001.jpg", jpeg()), ("000001.txt", b"one")])
    recs = list(read_unit(ReadUnit("tar", str(tmp_path), (str(tmp_path / "t.tar"),))))
    assert [(r["key"], r["short_caption"]) for r in recs] == [("000001", "one")]
    (tmp_path / "sub.jpg").mkdir()
    (tmp_path / "a.jpg").write_bytes(jpeg())
    units = list_units(str(tmp_path / "*.jpg"))
    assert [u.uris for u in units] == [(str(tmp_path / "a.jpg"),)]


def test_model_text_with_lone_surrogates_is_made_valid() -> None:
    from stages.negatives_validation import parse_answer

    assert parse_answer('["a red \\ud83d cup", "a blue cup"]') == ["a red \ufffd cup", "a blue cup"]


def test_images_are_checked_on_several_threads_in_order_with_a_bounded_look_ahead() -> None:
    """The read step decodes with a thread pool (Pillow and hashlib release the GIL): two checks
    must be able to run at the same time (a barrier of two passes only then), results keep the
    input's order, and no more than ``2 * threads`` records are read ahead of the one yielded."""
    import threading

    from inputs.reader import checked

    barrier = threading.Barrier(2, timeout=20)  # sequential checks would leave one waiting: BrokenBarrierError
    pulled: list[int] = []

    def source():
        for i in range(40):
            pulled.append(i)
            yield {"i": i}

    def check(rec: dict) -> dict:
        if rec["i"] < 2:
            barrier.wait()
        return {**rec, "checked": True}

    out = checked(source(), check, threads=2)
    first = next(out)
    assert first == {"i": 0, "checked": True} and len(pulled) <= 4
    rest = list(out)
    assert [r["i"] for r in [first, *rest]] == list(range(40)) and all(r["checked"] for r in rest)
    assert [r["i"] for r in checked(source(), check=lambda r: r, threads=1)] == list(range(40))


@pytest.mark.parametrize("name,flag", [("MAX_IMAGE_BYTES", "max_image_bytes"), ("ROWS_PER_UNIT", "rows_per_read_unit")])
def test_a_default_the_config_hash_compares_is_written_once_and_the_flag_default_is_that_very_constant(
        name: str, flag: str) -> None:
    """``pipeline.identity`` puts ``--max-image-bytes`` and ``--rows-per-read-unit`` into the config hash only
    when they differ from their default: a second copy of the value, changed without the first, would
    silently change every run's config hash (and break resume). The flag's default must be the
    ``core.record`` constant itself, and no other module may define one of its own."""
    import argparse
    import ast
    import pathlib

    import core.record
    from pipeline.options import add_curation_args

    parser = argparse.ArgumentParser()
    add_curation_args(parser)
    assert parser.get_default(flag) is getattr(core.record, name)
    root = pathlib.Path(__file__).resolve().parents[1]
    defined = []
    for folder in ("core", "prompts", "inputs", "stages", "shards", "transforms", "model_stubs", "training",
                   "pipeline", "bench", "tests"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                targets = (node.targets if isinstance(node, ast.Assign)
                           else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    defined.append(str(path.relative_to(root)))
    assert defined == ["core/record.py"], defined
