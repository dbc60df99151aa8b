"""Which copy duplicate removal keeps: the first in input order by default (not the smallest key),
or the largest with --dedup-keep largest; the filtered list names the key kept."""
from __future__ import annotations

import json
import pathlib
import shutil

from PIL import Image

from conftest import read_shards, run_pipeline


def _filtered(out: pathlib.Path) -> dict[str, str]:
    return {l["key"]: l["detail"] for p in sorted((out / "filtered").glob("*.jsonl"))
            for l in map(json.loads, p.read_text().splitlines())}


def _kept(out: pathlib.Path) -> set[str]:
    return {s["__key__"] for s in read_shards(out)}


def test_a_folder_keeps_the_original_not_its_copy_whatever_their_keys(scenes_dir: pathlib.Path,
                                                                     tmp_path: pathlib.Path) -> None:
    from core.record import make_key

    # a name whose key sorts after its copy's key ("holiday_photo_N_<hash>" > "holiday_photo_N_copy_<hash>"):
    # the smallest key kept the copy
    def key(stem: str) -> str:  # inputs.folders: a folder file's key hashes its path under the folder
        return make_key(stem, f"/{stem}.jpg")

    name = next(f"holiday photo {i}" for i in range(100) if key(f"holiday photo {i}") > key(f"holiday photo {i} (copy)"))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(scenes_dir / "scene_03_000004.jpg", src / f"{name}.jpg")
    shutil.copy(scenes_dir / "scene_03_000004.jpg", src / f"{name} (copy).jpg")
    shutil.copy(scenes_dir / "scene_03_000005.jpg", src / "other.jpg")
    summary = run_pipeline(src, tmp_path / "out", "--stages", "ingest")
    assert summary["filtered_by_reason"] == {"dedup:duplicate": 1}
    kept, filtered = _kept(tmp_path / "out") - {"other"}, _filtered(tmp_path / "out")
    assert len(kept) == 1 and len(filtered) == 1 and "other" in _kept(tmp_path / "out")
    original, copy = kept.pop(), next(iter(filtered))
    assert (original, copy) == (key(name), key(f"{name} (copy)"))
    assert copy < original  # the smallest key kept the copy
    assert filtered[copy] == f"exact duplicate of {original}"


def test_a_manifest_keeps_its_first_row_and_largest_keeps_the_most_pixels(scenes_dir: pathlib.Path,
                                                                         tmp_path: pathlib.Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    big = Image.open(scenes_dir / "scene_03_000004.jpg")
    big.convert("RGB").resize((big.width // 2, big.height // 2)).save(src / "small.jpg", quality=90)
    shutil.copy(scenes_dir / "scene_03_000004.jpg", src / "big.jpg")
    shutil.copy(scenes_dir / "scene_03_000004.jpg", src / "big_again.jpg")
    rows = [{"url": "small.jpg", "key": "zebra"}, {"url": "big.jpg", "key": "mango"},
            {"url": "big_again.jpg", "key": "apple"}]
    (src / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = run_pipeline(src / "m.jsonl", tmp_path / "first", "--stages", "ingest")
    assert first["filtered_by_reason"] == {"dedup:duplicate": 2}
    assert _kept(tmp_path / "first") == {"zebra"}  # row 0, although "apple" is the smallest key
    got = _filtered(tmp_path / "first")  # both name the kept row (apple's earliest match is zebra's resized copy)
    assert all(d.startswith("near duplicate (dHash distance ") and d.endswith(") of zebra") for d in got.values())
    largest = run_pipeline(src / "m.jsonl", tmp_path / "largest", "--stages", "ingest", "--dedup-keep", "largest")
    assert _kept(tmp_path / "largest") == {"mango"}  # the larger image; of the two equal ones the first row
    got = _filtered(tmp_path / "largest")
    assert got["apple"] == "exact duplicate of mango" and got["zebra"].endswith(") of mango")


def test_waves_keep_the_same_copies_as_one_pass(scenes_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rows = []
    for i in range(12):  # each scene twice; the second row of a pair has the smaller key
        scene = sorted(scenes_dir.glob("*.jpg"))[i]
        rows += [{"url": str(scene), "key": f"z{i:02d}"}, {"url": str(scene), "key": f"a{i:02d}"}]
    (src / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = run_pipeline(src / "m.jsonl", tmp_path / "one", "--stages", "ingest", "--samples-per-shard", "4")
    waves = run_pipeline(src / "m.jsonl", tmp_path / "waves", "--stages", "ingest", "--samples-per-shard", "4",
                         "--wave-samples", "8")
    assert one["filtered"] == waves["filtered"] == 12
    assert _kept(tmp_path / "one") == _kept(tmp_path / "waves") == {f"z{i:02d}" for i in range(12)}
    for p in sorted((tmp_path / "one").glob("shard-*.tar")) + sorted((tmp_path / "one" / "filtered").glob("*")):
        assert (tmp_path / "waves" / p.relative_to(tmp_path / "one")).read_bytes() == p.read_bytes()


def test_the_detail_of_a_near_copy_with_the_same_dhash_says_near() -> None:
    from stages.dedup import EXACT, NEAR, duplicate_detail

    decisions = {"b": ((1,), "a", NEAR, 0), "c": ((2,), "b", EXACT, 0)}
    assert duplicate_detail("b", decisions) == "near duplicate (dHash distance 0) of a"
    assert duplicate_detail("c", decisions) == "exact duplicate of b, itself a duplicate of a (kept)"


def test_a_near_copy_with_the_same_dhash_but_other_bytes_is_not_called_an_exact_duplicate() -> None:
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from core.record import Field

    thumb = bytes(range(256)) * 3
    records = [{"key": "a", Field.SHA256: "s1", Field.DHASH: 0x1234 << 200, Field.THUMB: thumb},
               {"key": "b", Field.SHA256: "s2", Field.DHASH: 0x1234 << 200, Field.THUMB: thumb}]  # re-encoded copy
    from transforms.dedup import DropDuplicates

    with beam.Pipeline() as p:
        out = (p | beam.Create(records) | DropDuplicates(6)
               | beam.Map(lambda r: (r["key"], r.get(Field.FILTERED, {}).get("detail"))))
        assert_that(out, equal_to([("a", None), ("b", "near duplicate (dHash distance 0) of a")]))
