"""Nothing lost, round 3, the input side: hidden and scattered tar members, in-place rewrites, slow
servers, lying sidecars, deep folders, a changed read split, reused captions, unsafe redirects and
float images. Each case ends read, dead-lettered or filtered by name, or refused in one line."""
from __future__ import annotations

import json
import pathlib

import pytest

from bad_inputs import jpeg, write_tar
from conftest import read_shards, run_pipeline


def _letters(out: pathlib.Path, folder: str) -> dict[str, dict]:
    lines = [json.loads(x) for p in sorted((out / folder).glob("*.jsonl")) for x in p.read_text().splitlines()]
    return {x["key"]: x for x in lines}


def _colors(n: int) -> list[tuple[int, int, int]]:
    return [(20 + 40 * i, 200 - 30 * i, (90 * i) % 256) for i in range(n)]


# --- tar members ---------------------------------------------------------------------------------

def _hidden_and_scattered_tar(path: pathlib.Path) -> None:
    c = _colors(7)
    write_tar(path, [(".first.jpg", jpeg(c[0])), (".first.txt", b"a hidden sample"), ("a.jpg", jpeg(c[1])),
                     (".hidden.jpg", jpeg(c[2])), ("sub/.x.jpg", jpeg(c[3])),
                     ("b.jpg", jpeg(c[4])), ("c.jpg", jpeg(c[5])), ("b.txt", b"far from b.jpg"),
                     (".DS_Store", b"\0\0\0\1Bud1")])


def test_tar_members_named_with_a_leading_dot_are_samples_with_sane_keys_and_counted(tmp_path: pathlib.Path) -> None:
    _hidden_and_scattered_tar(tmp_path / "in.tar")
    summary = run_pipeline(tmp_path / "in.tar", tmp_path / "out", "--no-dedup")
    samples = {s["__key__"]: s["record"] for s in read_shards(tmp_path / "out")}
    dead = _letters(tmp_path / "out", "deadletter")
    # .first, a, .hidden, sub/.x, b, c written; b.txt (after c) and .DS_Store dead-lettered by name
    assert summary["read"] == 8 and summary["written"] == 6 and summary["reconciled"] is True, summary
    by_path = {r["f_path"].rsplit("#", 1)[1]: (k, r) for k, r in samples.items()}
    assert sorted(by_path) == [".first", ".hidden", "a", "b", "c", "sub/.x"]
    assert by_path[".first"][1]["short_caption"] == "a hidden sample"
    assert by_path[".first"][0].startswith("first_") and by_path["sub/.x"][0].startswith("x_")
    assert by_path[".hidden"][0].startswith("hidden_")
    assert not any(k.startswith("k_") for k in list(samples) + list(dead))  # never the hash of an empty name
    assert sorted(d["reason"] for d in dead.values()) == ["no_image_member", "split_sample"]
    split = next(d for d in dead.values() if d["reason"] == "split_sample")
    assert "b.txt" in split["detail"] and "together" in split["detail"]


def test_a_tars_count_is_taken_from_its_members_not_from_the_records_the_grouping_made(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inputs.reader as reader
    from inputs.units import ReadUnit

    _hidden_and_scattered_tar(tmp_path / "in.tar")
    real = reader.READERS["tar"]

    def losing(*args):  # an injected bug: the grouping loses the tar's first sample
        records = real(*args)
        next(records)
        return (yield from records)

    monkeypatch.setitem(reader.READERS, "tar", losing)
    unit = ReadUnit("tar", str(tmp_path), (str(tmp_path / "in.tar"),))
    records = list(reader.read_and_count(unit, counts_root=str(tmp_path / "counts")))
    counted = [json.loads(p.read_text())["items"] for p in (tmp_path / "counts").glob("*.json")]
    assert len(records) == 7 and counted == [8]  # the summary then says NOT RECONCILED


# --- in-place rewrites ---------------------------------------------------------------------------

def test_an_image_rewritten_in_place_before_a_resume_is_refused_like_other_rewrites(
        scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import os
    import shutil

    from pipeline.stages import UsageError

    folder = tmp_path / "in"
    shutil.copytree(scenes_dir, folder, ignore=shutil.ignore_patterns("*.jsonl"))
    out = tmp_path / "o"
    run_pipeline(folder, out, "--samples-per-shard", "4")
    (out / "shard-00001_stats.json").unlink()  # as a run killed before this shard finished leaves it
    image = folder / "scene_03_000001.jpg"
    before = image.stat()
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same name, same size, other bytes, and the old mtime put back
    with open(image, "r+b") as f:
        f.write(data)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert image.stat().st_size == before.st_size and image.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(UsageError, match="--input changed .*the same 12 listed.*rewritten in place.*--overwrite"):
        run_pipeline(folder, out, "--samples-per-shard", "4")


def test_an_output_whose_fingerprint_predates_content_stamps_still_resumes(scenes_dir: pathlib.Path,
                                                                         tmp_path: pathlib.Path) -> None:
    out = tmp_path / "o"
    run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    run = json.loads((out / "run.json").read_text())
    del run["input_fingerprint"]["content"]  # what run.json of earlier versions holds
    (out / "run.json").write_text(json.dumps(run))
    (out / "shard-00001_stats.json").unlink()
    summary = run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    assert summary["read"] == summary["written"] == 12 and summary["reconciled"] is True


# --- slow servers ----------------------------------------------------------------------------------

class Trickle:
    """A route that sends its headers at once, then ``data`` a few bytes at a time with pauses: a
    server that would hold a client for ``len(data) / chunk * every`` seconds. ``cut_short`` is set
    when the client hung up before the last byte (``ended`` when the route is done either way)."""

    def __init__(self, data: bytes, chunk: int = 8, every: float = 0.05, sized: bool = True):
        import threading

        self.data, self.chunk, self.every, self.sized = data, chunk, every, sized
        self.cut_short, self.ended = False, threading.Event()

    def __call__(self, handler, hits: int) -> None:
        import time

        try:
            handler.send_response(200)
            if self.sized:
                handler.send_header("Content-Length", str(len(self.data)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.flush()
            for i in range(0, len(self.data), self.chunk):
                handler.wfile.write(self.data[i:i + self.chunk])
                handler.wfile.flush()
                time.sleep(self.every)
        except OSError:
            self.cut_short = True
        finally:
            handler.close_connection = True
            self.ended.set()


def test_a_server_that_trickles_bytes_is_cut_off_at_the_deadline_of_the_whole_transfer(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tarfile

    from bad_inputs import ImageServer
    from core.record import SampleError
    import inputs.opening as opening
    from inputs.reader import read_unit
    from inputs.units import ReadUnit

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(opening, "HTTP_TOTAL_TIMEOUT_S", 0.5)
    monkeypatch.setattr(opening, "HTTP_STREAM_TIMEOUT_S", 0.5)
    write_tar(tmp_path / "t.tar", [("000001.jpg", jpeg((200, 10, 10)))])
    image, manifest = Trickle(jpeg((10, 200, 10)) * 2), Trickle(b"\n" * 200 + b'{"url": "x.jpg"}\n', chunk=2)
    tar = Trickle((tmp_path / "t.tar").read_bytes(), chunk=16, sized=False)
    assert tarfile.is_tarfile(tmp_path / "t.tar")
    with ImageServer({"/slow.jpg": image, "/slow.jsonl": manifest, "/slow.tar": tar}) as server:
        with pytest.raises(SampleError) as e:
            opening.fetch_http(f"{server.url}/slow.jpg", 1 << 20)
        assert e.value.reason == "http_timeout" and "took over 0.5 s" in e.value.detail
        rows = list(read_unit(ReadUnit("manifest", server.url, (f"{server.url}/slow.jsonl",))))
        samples = list(read_unit(ReadUnit("tar", server.url, (f"{server.url}/slow.tar",))))
        for route in (image, manifest, tar):
            assert route.ended.wait(30)
    assert [r["_dead"]["reason"] for r in rows] == ["http_timeout"]  # the manifest, cut off: not its end
    assert [r["_dead"]["reason"] for r in samples] == ["http_timeout"]
    assert image.cut_short and manifest.cut_short and tar.cut_short  # the client hung up, not the server


# --- sidecars and listings -------------------------------------------------------------------------

def _tar_folder(folder: pathlib.Path, n: int, claimed: int) -> None:
    folder.mkdir()
    c = _colors(n)
    write_tar(folder / "00000.tar", [m for i in range(n) for m in ((f"{i:06d}.jpg", jpeg(c[i])),
                                                                    (f"{i:06d}.txt", b"alt %d" % i))])
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": claimed}))


def test_a_sizes_json_claiming_more_samples_than_the_tar_can_hold_is_not_used_to_plan(tmp_path: pathlib.Path) -> None:
    from pipeline.input_plan import plan_input

    _tar_folder(tmp_path / "lie", 10, 100_000_000)
    assert plan_input(str(tmp_path / "lie" / "*.tar")).size is None  # unknown: the run counts what it reads
    _tar_folder(tmp_path / "true", 10, 10)
    assert plan_input(str(tmp_path / "true" / "*.tar")).size == 10


def test_a_folder_of_tars_with_their_sizes_json_is_read_as_tars(tmp_path: pathlib.Path) -> None:
    _tar_folder(tmp_path / "in", 10, 100_000_000)
    summary = run_pipeline(tmp_path / "in", tmp_path / "out", "--no-dedup", "--wave-samples", "4")
    assert summary["written"] == 10 and summary["reconciled"] is True, summary
    assert summary["filtered_by_reason"] == {"read:skipped_file": 1}  # sizes.json: listed, not read as a manifest
    assert len(list((tmp_path / "out").glob("shard-*.tar"))) == 1


def test_a_folder_1500_levels_deep_is_listed_and_read(tmp_path: pathlib.Path) -> None:
    import os

    deep = str(tmp_path / "in")
    os.mkdir(deep)
    for _ in range(1500):  # os.makedirs itself recurses once per level
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    (tmp_path / "in" / "top.jpg").write_bytes(jpeg((1, 2, 3)))
    with open(os.path.join(deep, "bottom.jpg"), "wb") as f:
        f.write(jpeg((200, 100, 0)))
    try:
        summary = run_pipeline(tmp_path / "in", tmp_path / "out", "--stages", "ingest")
        assert summary["read"] == summary["written"] == 2 and summary["reconciled"] is True
    finally:  # bottom up: shutil.rmtree (pytest's clean-up of old runs too) recurses once per level
        os.remove(os.path.join(deep, "bottom.jpg"))
        while deep != str(tmp_path / "in"):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


# --- a changed read split --------------------------------------------------------------------------

def test_resuming_with_another_rows_per_read_unit_is_refused_as_a_config_change(scenes_dir: pathlib.Path,
                                                                               tmp_path: pathlib.Path) -> None:
    from pipeline.stages import UsageError

    out = tmp_path / "o"
    first = run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4", "--rows-per-read-unit", "4")
    assert first["read"] == 12 and len(list((out / "read_counts").glob("*.json"))) == 3
    with pytest.raises(UsageError, match=r"different configuration \(--rows-per-read-unit 4 then, 5 now\); "
                                         r"use a new --output, or --overwrite"):
        run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4", "--rows-per-read-unit", "5")
    again = run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4", "--rows-per-read-unit", "4")
    assert again["read"] == 12 and again["reconciled"] is True


# --- reused captions -------------------------------------------------------------------------------

def test_reused_captions_are_cleaned_and_limited_like_the_captioners(scenes_dir: pathlib.Path,
                                                                    tmp_path: pathlib.Path) -> None:
    rows = [json.loads(line) for line in (scenes_dir / "manifest.jsonl").read_text().splitlines()][:3]
    rows[0]["long_caption"] = "a red\x00 circle " * 400  # 5.6k characters, NULs inside
    rows[1]["long_caption"] = "word " * 260_000        # 1.3 MB: past spaCy's max_length (E088)
    rows[2]["long_caption"] = "a short one"
    for r in rows:
        r["url"] = str(scenes_dir / r["url"])
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_pipeline(tmp_path / "m.jsonl", tmp_path / "out", "--reuse-captions", "--max-caption-chars", "300")
    assert summary["written"] == 3 and summary["reconciled"] is True, summary["dead_lettered_by_reason"]
    captions = {s["record"]["f_path"]: s["record"]["caption"] for s in read_shards(tmp_path / "out")}
    assert [captions[r["url"]][:12] for r in rows] == ["a red circle", "word word wo",
                                                       "a short one"]
    assert all(len(c) <= 300 and "\x00" not in c for c in captions.values())
    assert summary["counters"]["caption_truncated"] == 2


# --- redirects and images --------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg"])
def test_a_redirect_to_another_scheme_is_an_unsafe_redirect(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from bad_inputs import ImageServer, redirect
    from core.record import SampleError
    from inputs.opening import fetch_http

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with ImageServer({"/x.jpg": redirect(target)}) as server:
        with pytest.raises(SampleError) as e:
            fetch_http(f"{server.url}/x.jpg", 1 << 20)
    assert e.value.reason == "unsafe_redirect" and target in e.value.detail


@pytest.mark.parametrize("mode, values, counter", [
    ("F", (0.0, 1.0), "converted:float"), ("F", (-5.0, 1000.0), "converted:float"),
    ("I", (0, 200), "converted:32bit"), ("I", (0, 70_000), "converted:32bit")])
def test_float_and_32_bit_images_are_scaled_to_8_bits_and_counted(mode: str, values: tuple, counter: str) -> None:
    import io

    import numpy as np
    from PIL import Image

    from inputs.check import check_image

    lo, hi = values
    arr = np.linspace(lo, hi, 32 * 24).reshape(24, 32).astype(np.float32 if mode == "F" else np.int32)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF")
    rec = check_image({"key": "k", "f_path": "k.tif", "image_bytes": buf.getvalue()}, 10**8, 8)
    assert rec["_stats"] == {counter: 1, "converted:format_tiff": 1}
    out = np.asarray(Image.open(io.BytesIO(rec["image_bytes"])))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == (200 if hi == 200 else 255)
