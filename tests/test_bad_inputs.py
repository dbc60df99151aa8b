"""The bad-input corpus through the real pipeline: every file is written, dead-lettered or filtered by name."""
from __future__ import annotations

import io
import json
import pathlib

import pytest
from PIL import Image

from bad_inputs import (BLUE, HEIC_HEAD, LONG_CAPTION_CHARS, RED, FifoGuard, ImageServer, bad_crc_png, body, fails_first,
                        jpeg, own_shard_json, png, redirect, slow, unsized, write_bad_corpus, write_malicious_tar,
                        write_tar)
from conftest import dead_letters, read_shards, run_pipeline
from core.record import make_key, validate_record
from inputs.check import MAX_SHORT_CAPTION_CHARS


def _key(case) -> str:
    return make_key(case.key) if case.key else case.name.rsplit(".", 1)[0]


def _letters(out: pathlib.Path, folder: str) -> dict[str, dict]:
    lines = [json.loads(x) for p in sorted((out / folder).glob("*.jsonl")) for x in p.read_text().splitlines()]
    return {x["key"]: x for x in lines}


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bad")
    cases = write_bad_corpus(root / "in")
    out = root / "out"
    # Several cases are the same tiny solid-colour picture in different containers on purpose; duplicate
    # removal (tested in test_stages.py) would keep only one of them, so it is off here.
    summary = run_pipeline(root / "in" / "manifest.jsonl", out, "--samples-per-shard", "8", "--no-dedup")
    return cases, out, summary


def test_every_bad_input_has_its_named_outcome(corpus_run) -> None:
    cases, out, summary = corpus_run
    assert summary["read"] == len(cases) and summary["reconciled"]
    samples = {s["__key__"]: s for s in read_shards(out)}
    dead, filtered = _letters(out, "deadletter"), _letters(out, "filtered")
    for case in cases:
        key = _key(case)
        if case.outcome == "written":
            assert key in samples, (case.name, dead.get(key))
            s = samples[key]
            rec = s["record"]
            assert validate_record(rec) == [], (case.name, validate_record(rec))
            assert case.ext in s, (case.name, sorted(s))
            image = Image.open(io.BytesIO(s[case.ext]))
            assert image.size == (rec["width"], rec["height"]) == case.size, case.name
            assert image.mode in ("RGB", "L"), (case.name, image.mode)
        else:
            letters = dead if case.outcome == "dead" else filtered
            assert key in letters, (case.name, sorted(letters))
            assert (letters[key]["stage"], letters[key]["reason"]) == ("read", case.reason), letters[key]
            assert letters[key]["f_path"].endswith(case.name)
    written = sum(c.outcome == "written" for c in cases)
    assert summary["written"] == written == len(samples)
    expected_dead = {}
    for c in cases:
        if c.outcome == "dead":
            expected_dead[f"read:{c.reason}"] = expected_dead.get(f"read:{c.reason}", 0) + 1
    assert summary["dead_lettered_by_reason"] == expected_dead
    expected_filtered: dict[str, int] = {}
    for c in cases:
        if c.outcome == "filtered":
            expected_filtered[f"read:{c.reason}"] = expected_filtered.get(f"read:{c.reason}", 0) + 1
    assert summary["filtered_by_reason"] == expected_filtered
    for c in cases:
        for what in c.conversions:
            assert summary["counters"].get(f"converted:{what}", 0) >= 1, what


def test_conversions_keep_pixels_and_boxes_in_agreement(corpus_run) -> None:
    _, out, _ = corpus_run
    samples = {s["__key__"]: s for s in read_shards(out)}

    def rgb(key: str, ext: str) -> Image.Image:
        return Image.open(io.BytesIO(samples[key][ext])).convert("RGB")

    # EXIF orientation 6: the stored pixels are upright, so the red top-left block moved to the top right.
    upright = rgb("exif_rotated", "jpg")
    assert upright.size == (30, 60)
    assert _near(upright.getpixel((25, 5)), RED) and _near(upright.getpixel((5, 5)), (255, 255, 255))
    # Alpha composited on white (not black); the opaque blue block kept.
    alpha = rgb("alpha", "png")
    assert alpha.getpixel((39, 29)) == (255, 255, 255) and alpha.getpixel((2, 2)) == (30, 30, 220)
    assert rgb("palette_transparent", "png").getpixel((31, 31)) == (255, 255, 255)
    # 16-bit full scale becomes 8-bit full scale, not clipped garbage.
    sixteen = Image.open(io.BytesIO(samples["sixteen"]["png"]))
    assert sixteen.getpixel((2, 2)) == 255 and sixteen.getpixel((30, 20)) == 0
    # Animated GIF: the first frame (red), stored as a still PNG.
    assert rgb("animated", "png").getpixel((15, 15)) == RED
    assert getattr(Image.open(io.BytesIO(samples["animated"]["png"])), "n_frames", 1) == 1
    # Greyscale is kept as stored (readers convert to RGB on load).
    assert Image.open(io.BytesIO(samples["grey"]["jpg"])).mode == "L"
    assert _near(rgb("cmyk", "jpg").getpixel((2, 2)), RED)


def test_captions_and_keys_survive(corpus_run) -> None:
    cases, out, _ = corpus_run
    samples = {s["__key__"]: s["record"] for s in read_shards(out)}
    unicode_case = next(c for c in cases if c.name == "unicode.jpg")
    assert samples["unicode"]["short_caption"] == unicode_case.caption
    long_cap = samples["long_caption"]["short_caption"]
    assert 0 < len(long_cap) <= MAX_SHORT_CAPTION_CHARS < LONG_CAPTION_CHARS
    assert long_cap.endswith("word")  # cut at a word boundary
    dotted = next(c for c in cases if c.key)
    key = make_key(dotted.key)
    assert key in samples and "." not in key and "/" not in key
    assert samples[key]["key"] == key


def _near(a: tuple, b: tuple, tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_malicious_tar_members_are_dead_lettered(tmp_path: pathlib.Path) -> None:
    good = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(good, format="JPEG")
    write_malicious_tar(tmp_path / "evil.tar", good.getvalue())
    out = tmp_path / "out"
    summary = run_pipeline(tmp_path / "evil.tar", out, "--no-dedup")  # the two safe members are one image
    assert summary["reconciled"] and summary["read"] == 5
    assert summary["written"] == 2
    letters = dead_letters(out)
    assert sorted(l["reason"] for l in letters) == ["unsafe_tar_member"] * 3
    details = " ".join(l["detail"] for l in letters)
    assert "path traversal" in details and "absolute path" in details and "link" in details
    keys = {s["__key__"] for s in read_shards(out)}
    assert keys == {"000000001", "000000004"}
    assert not (tmp_path / "etc").exists() and not pathlib.Path("/abs/y.jpg").exists()


# ---------------------------------------------------------------------------------------------------------------
# Issue #16, "Nothing lost, ever": each class of hostile input, generated here, through the real pipeline. Every
# item must come out written, dead-lettered or filtered with its named reason, and the run must finish reconciled.


def _outcomes(input_uri, out: pathlib.Path, *extra: str) -> tuple[dict, dict, dict, dict]:
    """Run the pipeline; (summary, written samples by key, dead letters by key, filtered by key)."""
    summary = run_pipeline(input_uri, out, *extra)
    assert summary["reconciled"], summary
    samples = {s["__key__"]: s for s in read_shards(out)}
    dead, filtered = _letters(out, "deadletter"), _letters(out, "filtered")
    assert summary["read"] == len(samples) + len(dead) + len(filtered), (summary, sorted(dead), sorted(filtered))
    return summary, samples, dead, filtered


def _reasons(letters: dict) -> list[str]:
    return sorted(x["reason"] for x in letters.values())


def _colors(n: int) -> list[tuple[int, int, int]]:
    return [(20 + 40 * i, 200 - 30 * i, (90 * i) % 256) for i in range(n)]


def test_rows_that_are_json_but_not_objects_are_dead_lettered(tmp_path: pathlib.Path) -> None:
    """Class 6: a jsonl line or a .json list item that is a list, string, number or null."""
    c = _colors(3)
    for i in range(3):
        (tmp_path / f"g{i}.jpg").write_bytes(jpeg(c[i]))
    lines = ['{"url": "g0.jpg", "caption": {"not": "text"}}', "[1, 2]", '"just a string"', "null", "42",
             '{"url": "g1.jpg", "caption": "kept"}', "{broken", '{"url": ["g0.jpg"]}', '{"url": {"x": 1}}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    summary, samples, dead, _ = _outcomes(tmp_path / "m.jsonl", tmp_path / "out1")
    assert set(samples) == {"g0", "g1"} and summary["read"] == 9
    assert samples["g0"]["record"]["short_caption"] == "" and samples["g1"]["record"]["short_caption"] == "kept"
    assert _reasons(dead) == ["bad_manifest_row"] * 7
    assert any("a JSON list, not an object" in d["detail"] for d in dead.values())
    assert any("not JSON" in d["detail"] for d in dead.values())

    (tmp_path / "list.json").write_text(json.dumps([{"url": "g2.jpg"}, 5, ["x"], None, "s"]))
    summary, samples, dead, _ = _outcomes(tmp_path / "list.json", tmp_path / "out2")
    assert set(samples) == {"g2"} and _reasons(dead) == ["bad_manifest_row"] * 4

    # A key the manifest repeats: both rows written (the second key gets a hash), counted.
    (tmp_path / "dup.jsonl").write_text(json.dumps({"url": "g0.jpg", "key": "same"}) + "\n"
                                        + json.dumps({"url": "g1.jpg", "key": "same"}) + "\n")
    summary, samples, dead, _ = _outcomes(tmp_path / "dup.jsonl", tmp_path / "out4")
    assert not dead and len(samples) == 2 and "same" in samples
    assert summary["counters"]["duplicate_input_key"] == 1

    (tmp_path / "broken.json").write_text('[{"url": "g0.jpg"}, {"url": ')
    summary, samples, dead, _ = _outcomes(tmp_path / "broken.json", tmp_path / "out3")
    assert not samples and _reasons(dead) == ["bad_manifest"]


def test_tar_sidecars_and_tampered_shards_are_dead_lettered(tmp_path: pathlib.Path) -> None:
    """Class 6: a sidecar .json that is a string/list/null/not json; a shard of ours with wrong field types."""
    c = _colors(10)
    members = [("a.jpg", jpeg(c[0])), ("a.json", b'"a string"'),
               ("b.jpg", jpeg(c[1])), ("b.json", b"[1, 2]"),
               ("c.jpg", jpeg(c[2])), ("c.json", b"null"),
               ("d.jpg", jpeg(c[3])), ("d.json", b"{not json"),
               ("e.jpg", jpeg(c[4])), ("e.json", b'{"url": "http://x/e.jpg", "caption": ["not", "text"]}'),
               # shards of ours, tampered: bbox_info of the wrong type, a region that is not an object, bad box
               ("f.jpg", jpeg(c[5])), ("f.json", own_shard_json("f", bbox_info="nope")),
               ("g.jpg", jpeg(c[6])), ("g.json", own_shard_json("g", bbox_info=["nope"])),
               ("h.jpg", jpeg(c[7])), ("h.json", own_shard_json("h", bbox_info=[{"bbox": "x"}])),
               ("i.jpg", jpeg(c[8])), ("i.json", own_shard_json("i", caption=7)),
               ("j.jpg", jpeg(c[9])), ("j.json", own_shard_json("j")),
               ("k.jpg", jpeg(c[0])), ("k.json", own_shard_json("k", provenance={"caption": "stub", "version": "1"})),
               ("l.jpg", jpeg(c[1])), ("l.json", own_shard_json("l", bbox_info=[
                   {"bbox": [0.1, 0.1, 0.5, 0.5, 0.9], "short_expr": "x", "long_expr": "x", "flag_short_neg": 1,
                    "short_expr_negs": {"0": "y"}}]))]
    write_tar(tmp_path / "in.tar", members)
    summary, samples, dead, _ = _outcomes(tmp_path / "in.tar", tmp_path / "out", "--no-dedup")
    assert set(samples) == {"e", "j"} and summary["read"] == 12
    assert samples["e"]["record"]["short_caption"] == ""  # a caption that is not text is not used
    assert {k: d["reason"] for k, d in dead.items()} == {
        "a": "bad_member_json", "b": "bad_member_json", "c": "bad_member_json", "d": "bad_member_json",
        "f": "bad_shard_record", "g": "bad_shard_record", "h": "bad_shard_record", "i": "bad_shard_record",
        "k": "bad_shard_record", "l": "bad_shard_record"}
    assert "bbox_info is a str" in dead["f"]["detail"] and "not an object" in dead["g"]["detail"]


def test_unicode_in_manifests_names_and_members_never_crashes(tmp_path: pathlib.Path) -> None:
    """Class 7: BOM, lone surrogates (JSON escapes), invalid UTF-8 bytes in a line and in file names, U+2028."""
    import os

    c = _colors(8)
    for i in range(4):
        (tmp_path / f"u{i}.jpg").write_bytes(jpeg(c[i]))
    bad_name = b"caf\xe9.jpg"  # latin-1 bytes: not UTF-8
    with open(os.path.join(os.fsencode(tmp_path), bad_name), "wb") as f:
        f.write(jpeg(c[4]))
    lines = [
        b'{"url": "u0.jpg", "caption": "first row after a BOM"}',
        b'{"url": "u1.jpg", "caption": "half an emoji \\ud83d here", "key": "k\\udcff-1"}',
        b'{"url": "u2.jpg", "caption": "latin-1 byte \xe9 in utf-8 text"}',
        b'{"url": "' + bad_name + b'", "caption": "file name with a byte that is not utf-8"}',
        '{"url": "u3.jpg", "caption": "line\u2028separator and paragraph\u2029separator are text"}'.encode("utf-8"),
    ]
    (tmp_path / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    summary, samples, dead, _ = _outcomes(tmp_path / "m.jsonl", tmp_path / "out", "--no-dedup")
    assert not dead and summary["written"] == 5, dead
    records = {s["record"]["f_path"].rsplit("/", 1)[-1]: s["record"] for s in samples.values()}
    assert records["u0.jpg"]["short_caption"] == "first row after a BOM"
    assert records["u1.jpg"]["short_caption"] == "half an emoji \ufffd here"
    assert records["u2.jpg"]["short_caption"] == "latin-1 byte \ufffd in utf-8 text"
    assert records["u3.jpg"]["short_caption"] == "line\u2028separator and paragraph\u2029separator are text"
    assert "caf\\xe9.jpg" in records  # the undecodable byte, written out
    assert summary["counters"]["unicode_repaired"] >= 4

    # The same manifest saved as UTF-16 (with its BOM), as Windows tools do.
    text = "\n".join([json.dumps({"url": "u0.jpg", "caption": "utf-16 café"}, ensure_ascii=False),
                      json.dumps({"url": "u1.jpg", "caption": "second"})])
    (tmp_path / "m16.jsonl").write_bytes(text.encode("utf-16"))
    summary, samples, dead, _ = _outcomes(tmp_path / "m16.jsonl", tmp_path / "out16", "--no-dedup")
    assert not dead and sorted(s["record"]["short_caption"] for s in samples.values()) == ["second", "utf-16 café"]

    # A folder whose file names are not UTF-8, and a tar whose member name is not either.
    folder = tmp_path / "folder"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"\xff\xfe.jpg"), "wb") as f:
        f.write(jpeg(c[5]))
    (folder / "plain.jpg").write_bytes(jpeg(c[6]))
    summary, samples, dead, _ = _outcomes(folder, tmp_path / "out2")
    assert not dead and len(samples) == 2 and "plain" in samples
    assert all(s["__key__"].isascii() for s in samples.values())
    write_tar(tmp_path / "u.tar", [("\udcff\udcfe.jpg", jpeg(c[7])), ("\udcff\udcfe.txt", b"caption \xff")])
    summary, samples, dead, _ = _outcomes(tmp_path / "u.tar", tmp_path / "out3")
    assert not dead and len(samples) == 1
    assert next(iter(samples.values()))["record"]["short_caption"] == "caption \ufffd"


def test_http_manifests_are_fetched_or_dead_lettered_per_sample(tmp_path: pathlib.Path, monkeypatch) -> None:
    """Class 8: http(s) rows are fetched (retries, bounded redirects, byte limit, user agent); other schemes refused."""
    import socket

    import inputs.opening as opening

    monkeypatch.setattr(opening, "HTTP_BACKOFF_S", 0.01)
    monkeypatch.setattr(opening, "HTTP_TIMEOUT_S", 2.0)  # the slow route answers after 3 s
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    c = _colors(4)
    limit = 20_000
    big = jpeg(c[3], size=(400, 400)) + b"\0" * limit
    routes = {"/ok.jpg": body(jpeg(c[0])), "/moved.jpg": redirect("/ok2.jpg"), "/ok2.jpg": body(jpeg(c[1])),
              "/flaky.jpg": fails_first(2, body(jpeg(c[2]))), "/loop.jpg": redirect("/loop.jpg"),
              "/big.jpg": body(big), "/big-unsized.jpg": unsized(big),
              "/to-ftp.jpg": redirect("ftp://127.0.0.1/x.jpg"), "/gone.jpg": body(b"gone", 410, "text/plain"),
              "/caf%C3%A9%20au%20lait.jpg": body(jpeg(BLUE)), "/slow.jpg": slow(3.0, body(jpeg(BLUE)))}
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with ImageServer(routes) as server:
        rows = [{"url": f"{server.url}{p}", "key": p.strip("/").split(".")[0]}
                for p in ("/ok.jpg", "/moved.jpg", "/flaky.jpg", "/loop.jpg", "/big.jpg", "/big-unsized.jpg",
                          "/to-ftp.jpg", "/gone.jpg", "/missing.jpg", "/slow.jpg")]
        rows += [{"url": f"{server.url}/café au lait.jpg", "key": "iri"},
                 {"url": "data:image/png;base64,iVBORw0KGgo=", "key": "data"},
                 {"url": "ftp://127.0.0.1/x.jpg", "key": "ftp"}, {"url": "gopher2://host/x.jpg", "key": "unknown"},
                 {"url": f"http://127.0.0.1:{closed}/x.jpg", "key": "refused"}]
        (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary, samples, dead, _ = _outcomes(tmp_path / "m.jsonl", tmp_path / "out", "--max-image-bytes", str(limit))
        # The manifest itself over http, rows relative to it.
        routes["/m1.jsonl"] = body(b'{"url": "ok.jpg", "key": "rel"}\n', content_type="application/jsonl")
        routes["/m2.jsonl"] = body(b'{"url": "ok2.jpg", "key": "rel2"}\n', content_type="application/jsonl")
        summary2, samples2, dead2, _ = _outcomes(f"{server.url}/m{{1,2}}.jsonl", tmp_path / "out2")
        # A tar streamed over http.
        tar_path = tmp_path / "t.tar"
        write_tar(tar_path, [("000001.jpg", jpeg(c[0])), ("000001.txt", b"over http")])
        routes["/t.tar"] = body(tar_path.read_bytes(), content_type="application/x-tar")
        _, samples3, dead3, _ = _outcomes(f"{server.url}/t.tar", tmp_path / "out3")
    assert not dead3 and samples3["000001"]["record"]["short_caption"] == "over http"
    assert set(samples) == {"ok", "moved", "flaky", "iri"}
    assert {k: d["reason"] for k, d in dead.items()} == {"data": "unsupported_scheme",
        "slow": "http_timeout", "loop": "too_many_redirects", "big": "file_too_large", "big-unsized": "file_too_large",
        "to-ftp": "unsafe_redirect", "gone": "http_error", "missing": "http_error",
        "ftp": "unsupported_scheme", "unknown": "unsupported_scheme", "refused": "fetch_failed"}
    assert "404" in dead["missing"]["detail"]
    assert server.hits["/flaky.jpg"] == 3 and server.hits["/gone.jpg"] == 1  # 503 retried, 410 not
    assert all(ua.startswith("finehard/") for ua in server.user_agents)
    assert set(samples2) == {"rel", "rel2"} and not dead2


def test_tar_members_group_by_full_path_and_clashes_are_dead_lettered(tmp_path: pathlib.Path) -> None:
    """Class 9: dirA/000001 and dirB/000001 are two samples; 000002.jpg + 000002.png is one sample and a clash."""
    c = _colors(7)
    write_tar(tmp_path / "in.tar", [
        ("dirA/000001.jpg", jpeg(c[0])), ("dirA/000001.txt", b"from A"),
        ("dirB/000001.jpg", jpeg(c[1])), ("dirB/000001.txt", b"from B"),
        ("000002.jpg", jpeg(c[2])), ("000002.png", png(c[3])), ("000002.txt", b"two"),
        ("000003.jpg", jpeg(c[4])), ("000003.JPG", jpeg(c[5])),
        ("000004.gif", _save_gif(c[6])),
        ("000002.webp", _save_webp(c[0])),  # not next to the other 000002 members: still a second image
    ])
    summary, samples, dead, _ = _outcomes(tmp_path / "in.tar", tmp_path / "out", "--no-dedup")
    assert summary["read"] == 8
    captions = {s["record"]["short_caption"] for s in samples.values()}
    assert {"from A", "from B", "two"} <= captions
    assert "000001" in samples and "000002" in samples and "000003" in samples and "000004" in samples
    assert len(samples) == 5
    assert _reasons(dead) == ["duplicate_image_member"] * 3
    details = " ".join(d["detail"] for d in dead.values())
    assert "000002.png" in details and "000003.JPG" in details and "000002.webp" in details


def _save_webp(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def _save_gif(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buf, format="GIF")
    return buf.getvalue()


def test_fifos_devices_and_oversized_files_are_dead_lettered_not_waited_on(tmp_path: pathlib.Path) -> None:
    """Class 10: a FIFO, a link to /dev/zero, a file and a gzipped tar member over --max-image-bytes."""
    import os

    limit = 50_000
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(jpeg())
    os.mkfifo(folder / "fifo.jpg")
    # A link to a device. /dev/null rather than /dev/zero: a regression then fails this test (empty_file) instead
    # of reading without end; /dev/zero itself is checked on read_limited in test_read_checks.py.
    os.symlink("/dev/null", folder / "zero.jpg")
    (folder / "big.jpg").write_bytes(jpeg(BLUE) + b"\0" * limit)
    with FifoGuard(folder / "fifo.jpg"):
        summary, samples, dead, _ = _outcomes(folder, tmp_path / "out", "--max-image-bytes", str(limit))
    assert set(samples) == {"good"}
    assert {k: d["reason"] for k, d in dead.items()} == {
        "fifo": "not_a_regular_file", "zero": "not_a_regular_file", "big": "file_too_large"}
    assert "FIFO" in dead["fifo"]["detail"] and "character device" in dead["zero"]["detail"]

    # A gzipped tar whose member inflates far beyond the limit (40 KB on disk), and a manifest that is a FIFO.
    write_tar(tmp_path / "bomb.tar.gz", [("000001.jpg", jpeg()), ("000002.jpg", b"\0" * (40 * limit))], mode="w:gz")
    assert (tmp_path / "bomb.tar.gz").stat().st_size < limit
    summary, samples, dead, _ = _outcomes(tmp_path / "bomb.tar.gz", tmp_path / "out2", "--max-image-bytes", str(limit))
    assert set(samples) == {"000001"} and {k: d["reason"] for k, d in dead.items()} == {"000002": "file_too_large"}
    os.mkfifo(tmp_path / "fifo.jsonl")
    with FifoGuard(tmp_path / "fifo.jsonl"):
        summary, samples, dead, _ = _outcomes(tmp_path / "fifo.jsonl", tmp_path / "out3")
    assert not samples and _reasons(dead) == ["not_a_regular_file"]


def test_same_stem_with_another_extension_gets_its_own_key(tmp_path: pathlib.Path) -> None:
    """Class 11: b.jpg + b.png, c.jpg + c.JPG in a folder or a manifest are all written; other keys unchanged."""
    c = _colors(6)
    folder = tmp_path / "in"
    folder.mkdir()
    files = {"b.jpg": jpeg(c[0]), "b.png": png(c[1]), "c.jpg": jpeg(c[2]), "c.JPG": jpeg(c[3]), "d.jpg": jpeg(c[4])}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    summary, samples, dead, _ = _outcomes(folder, tmp_path / "out")
    assert not dead and len(samples) == 5 and "d" in samples
    assert {s["record"]["f_path"].rsplit("/", 1)[-1] for s in samples.values()} == set(files)
    assert summary["counters"].get("converted:format_png") is None  # nothing else changed
    # A manifest: the same names, two URLs ending in the same file name, and one path listed twice.
    (folder / "sub").mkdir()
    (folder / "sub" / "b.jpg").write_bytes(jpeg(c[5]))
    rows = ["b.jpg", "b.png", "sub/b.jpg", "c.jpg", "c.JPG", "d.jpg", "d.jpg"]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"url": f"in/{r}"}) + "\n" for r in rows))
    summary, samples, dead, _ = _outcomes(tmp_path / "m.jsonl", tmp_path / "out2", "--no-dedup")
    assert not dead and len(samples) == 7
    paths = sorted(s["record"]["f_path"].split("/in/", 1)[1] for s in samples.values())
    assert paths == sorted(rows)
    assert make_key("in/b", str(tmp_path / "in/b.jpg")) in samples  # the first row keeps the key it always had


def test_every_file_of_a_folder_is_read_or_filtered_with_a_reason(tmp_path: pathlib.Path) -> None:
    """Class 12: .jfif, AVIF and extension-less images are read; HEIC, SVG, text, manifests and tars are filtered."""
    from PIL import features

    c = _colors(4)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "photo.jfif").write_bytes(jpeg(c[0]))
    (folder / "noext").write_bytes(jpeg(c[1]))
    (folder / "good.jpg").write_bytes(jpeg(c[2]))
    (folder / "image.heic").write_bytes(HEIC_HEAD)
    (folder / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    (folder / "README").write_text("not an image\n")
    (folder / "sub" / "manifest.jsonl").write_text('{"url": "good.jpg"}\n')
    write_tar(folder / "x.tar", [("1.jpg", jpeg())])
    expected_written = {"photo", "noext", "good"}
    if features.check("avif"):
        buf = io.BytesIO()
        Image.new("RGB", (32, 24), c[3]).save(buf, format="AVIF")
        (folder / "pic.avif").write_bytes(buf.getvalue())
        expected_written.add("pic")
    summary, samples, dead, filtered = _outcomes(folder, tmp_path / "out")
    assert not dead and set(samples) == expected_written
    assert samples["photo"]["record"]["width"] == 32 and "jpg" in samples["photo"]
    by_name = {f["f_path"].rsplit("/", 1)[-1]: f["reason"] for f in filtered.values()}
    assert by_name == {"image.heic": "unsupported_format", "drawing.svg": "unsupported_format",
                       "README": "unsupported_format", "manifest.jsonl": "skipped_file", "x.tar": "skipped_file"}
    assert summary["filtered_by_reason"] == {"read:unsupported_format": 3, "read:skipped_file": 2}


def test_double_colon_in_local_names_is_a_file_name_not_a_url_chain(tmp_path: pathlib.Path) -> None:
    """Class 17: ``::`` in a local folder, file, manifest row or tar name is read literally."""
    c = _colors(3)
    folder = tmp_path / "in::put"
    folder.mkdir()
    (folder / "a::b.jpg").write_bytes(jpeg(c[0]))
    (folder / "plain.jpg").write_bytes(jpeg(c[1]))
    summary, samples, dead, _ = _outcomes(folder, tmp_path / "out")
    assert not dead and len(samples) == 2
    (tmp_path / "m::x.jsonl").write_text(json.dumps({"url": "in::put/a::b.jpg", "key": "row"}) + "\n")
    summary, samples, dead, _ = _outcomes(tmp_path / "m::x.jsonl", tmp_path / "out2")
    assert not dead and set(samples) == {"row"}
    write_tar(tmp_path / "t::u.tar", [("000001.jpg", jpeg(c[2]))])
    summary, samples, dead, _ = _outcomes(tmp_path / "t::u.tar", tmp_path / "out3")
    assert not dead and set(samples) == {"000001"}


def test_an_empty_input_is_refused(tmp_path: pathlib.Path) -> None:
    """Class 13: --input '' (or blank) would read the current folder."""
    from pipeline.stages import UsageError

    for blank in ("", "   "):
        with pytest.raises(UsageError, match="--input is empty; give a folder, glob, manifest or tar"):
            run_pipeline(blank, tmp_path / "out")


def test_png_with_a_bad_crc_is_dead_lettered(tmp_path: pathlib.Path) -> None:
    """Class 14: a PNG whose IDAT CRC is wrong decodes in Pillow but crashes libpng readers: never written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.png").write_bytes(bad_crc_png())
    (tmp_path / "in" / "ok.png").write_bytes(png())
    summary, samples, dead, _ = _outcomes(tmp_path / "in", tmp_path / "out")
    assert set(samples) == {"ok"} and {k: d["reason"] for k, d in dead.items()} == {"bad": "corrupt_image"}
    assert "CRC" in dead["bad"]["detail"] or "checksum" in dead["bad"]["detail"]


def test_parquet_rows_with_image_bytes_and_wrong_types(tmp_path: pathlib.Path) -> None:
    """Class 6 (parquet): a Hugging Face image cell ({bytes, path}) is read from the row; a row without any image
    is dead-lettered; nothing about a row's types fails the run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    c = _colors(2)
    table = pa.table({"image": [{"bytes": jpeg(c[0]), "path": "a.jpg"}, {"bytes": None, "path": None},
                                {"bytes": jpeg(c[1]), "path": None}],
                      "caption": ["first", "none", "third"]})
    pq.write_table(table, tmp_path / "hf.parquet")
    summary, samples, dead, _ = _outcomes(tmp_path / "hf.parquet", tmp_path / "out", "--no-dedup")
    assert sorted(s["record"]["short_caption"] for s in samples.values()) == ["first", "third"]
    assert _reasons(dead) == ["bad_manifest_row"]


def test_model_answers_with_lone_surrogates_are_made_valid(tmp_path: pathlib.Path) -> None:
    """Class 7 (model side): a captioner that answers half an emoji (a JSON "\\ud83d") must not fail the write."""
    from fake_openai_server import FakeOpenAIServer, completion

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg())
    with FakeOpenAIServer(lambda req: (200, completion("A red block \ud83d on white."))) as server:
        summary, samples, dead, _ = _outcomes(tmp_path / "in", tmp_path / "out",
                                              "--captioner", f"openai:{server.url}?timeout=10#m")
    assert not dead and samples["a"]["record"]["caption"] == "A red block \ufffd on white."
    assert summary["counters"]["unicode_repaired"] == 1
