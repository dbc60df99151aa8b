"""The bad-input corpus through the real pipeline: every file is written, dead-lettered or filtered by name."""
from __future__ import annotations

import io
import json
import pathlib

import pytest
from PIL import Image

from bad_inputs import LONG_CAPTION_CHARS, RED, write_bad_corpus, write_malicious_tar
from conftest import dead_letters, read_shards, run_pipeline
from core.record import make_key, validate_record
from transforms.check import MAX_SHORT_CAPTION_CHARS


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
    assert summary["filtered_by_reason"] == {"read:too_small": 1}
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
