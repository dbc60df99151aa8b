"""Image bytes parked in a spill folder between reading and writing (transforms/spill.py)."""
from __future__ import annotations

import pathlib

import fsspec
import pytest

from conftest import read_shards, run_pipeline, shard_hashes
from core.record import Field, SampleError
from transforms.spill import SpillDir, image_bytes, spill_image

SPILL = Field.SPILL


def test_spilling_changes_nothing_in_the_shards_and_cleans_up(tmp_path: pathlib.Path,
                                                              scenes_dir: pathlib.Path) -> None:
    manifest = scenes_dir / "manifest.jsonl"
    kept = run_pipeline(manifest, tmp_path / "kept", "--spill-dir", "none", "--samples-per-shard", "4")
    auto = run_pipeline(manifest, tmp_path / "auto", "--samples-per-shard", "4")
    given = tmp_path / "spill"
    chosen = run_pipeline(manifest, tmp_path / "chosen", "--spill-dir", str(given), "--samples-per-shard", "4")
    assert kept["written"] == auto["written"] == chosen["written"] == 12
    assert shard_hashes(tmp_path / "kept") == shard_hashes(tmp_path / "auto") == shard_hashes(tmp_path / "chosen")
    assert not given.exists()  # the run made the folder, and removed it with its subfolder
    existing = tmp_path / "existing"
    existing.mkdir()
    run_pipeline(manifest, tmp_path / "again", "--spill-dir", str(existing), "--samples-per-shard", "4")
    assert existing.is_dir() and list(existing.iterdir()) == []  # a folder the user gave is kept, emptied


def test_spill_round_trip_and_dead_records(tmp_path: pathlib.Path) -> None:
    rec = spill_image({"key": "a", "f_path": "/x/a.jpg", "image_bytes": b"\xff\xd8 bytes"}, str(tmp_path))
    assert "image_bytes" not in rec and pathlib.Path(rec[SPILL]).parent == tmp_path
    assert image_bytes(rec) == b"\xff\xd8 bytes"
    again = spill_image({"key": "a", "f_path": "/x/a.jpg", "image_bytes": b"\xff\xd8 bytes"}, str(tmp_path))
    assert again[SPILL] == rec[SPILL] and len(list(tmp_path.iterdir())) == 1  # no temp files left behind
    other = spill_image({"key": "a", "f_path": "/x/a.jpg", "image_bytes": b"other"}, str(tmp_path))
    assert other[SPILL] != rec[SPILL] and image_bytes(other) == b"other"  # same key, other bytes: kept apart
    dead = spill_image({"key": "d", "image_bytes": b"broken", "_dead": {"stage": "read"}}, str(tmp_path))
    assert "image_bytes" not in dead and SPILL not in dead and len(list(tmp_path.iterdir())) == 2
    with pytest.raises(KeyError, match="'d'"):
        image_bytes(dead)


def test_spill_dir_choice_follows_the_runner(tmp_path: pathlib.Path) -> None:
    assert SpillDir("auto", local_runner=False).root is None
    assert SpillDir("none", local_runner=True).root is None
    with SpillDir("auto", local_runner=True) as spill:
        made = pathlib.Path(spill.root)
        assert made.is_dir()
    assert not made.exists()
    out = tmp_path / "out"  # a local output: the spill goes next to the shards, not to /tmp (often RAM)
    (out / ".spill-left-by-a-killed-run").mkdir(parents=True)
    with SpillDir("auto", local_runner=True, output=str(out)) as spill:
        assert pathlib.Path(spill.root).parent == out and pathlib.Path(spill.root).is_dir()
        assert [p.name for p in out.iterdir()] == [pathlib.Path(spill.root).name]  # the stale one is gone
    assert list(out.iterdir()) == []
    with SpillDir("auto", local_runner=True, output="memory://remote-out") as spill:
        assert not spill.root.startswith("memory://")  # a remote output: a local temp folder
    with SpillDir("memory://spilltest", local_runner=False) as spill:
        assert spill.root.startswith("memory:///spilltest/finehard-spill-")
        rec = spill_image({"key": "m", "f_path": "m", "image_bytes": b"abc"}, spill.root)
        assert rec[SPILL].startswith("memory://") and image_bytes(rec) == b"abc"
    assert not fsspec.filesystem("memory").exists("/spilltest/" + spill.root.rsplit("/", 1)[1])


def test_records_reach_the_writer_without_their_bytes(tmp_path: pathlib.Path, scenes_dir: pathlib.Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of spilling: what crosses stage boundaries (here the group by shard) is small."""
    import transforms.write as write

    seen: list[dict] = []
    real = write.write_shard

    def spy(output, shard_id, num_shards, items, run_info):
        items = list(items)
        seen.extend(items)
        return real(output, shard_id, num_shards, items, run_info)

    monkeypatch.setattr(write, "write_shard", spy)  # the in-process runner calls it in this process
    summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "out")
    assert summary["written"] == 12 and len(seen) == 12
    # local files are re-read from their source (hash-checked), nothing is copied to the spill folder
    assert all("image_bytes" not in r and r[Field.SOURCE] and SPILL not in r for r in seen)


def test_local_inputs_are_not_copied_to_the_spill_folder(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "in" / "a.jpg"
    src.parent.mkdir()
    src.write_bytes(b"\xff\xd8 the original bytes")
    spill = tmp_path / "spill"
    spill.mkdir()
    rec = spill_image({"key": "a", "f_path": str(src), "image_bytes": src.read_bytes(), Field.SOURCE: str(src)},
                      str(spill))
    assert list(spill.iterdir()) == [] and "image_bytes" not in rec and SPILL not in rec  # nothing written
    assert image_bytes(rec) == b"\xff\xd8 the original bytes"  # read again from the source, hash checked
    src.write_bytes(b"\xff\xd8 other bytes")
    with pytest.raises(SampleError, match="changed since it was read"):
        image_bytes(rec)


def test_a_source_that_changed_before_the_write_is_dead_lettered_and_the_shard_written_without_it(
        tmp_path: pathlib.Path) -> None:
    import json

    from transforms.write import write_shard

    records = []
    for key in ("k1", "k2", "k3"):
        src = tmp_path / f"{key}.jpg"
        src.write_bytes(f"\xff\xd8 {key}".encode("latin-1"))
        records.append(spill_image({"key": key, "f_path": str(src), "image_bytes": src.read_bytes(),
                                    Field.SOURCE: str(src), "caption": "c", Field.SHARD: (0, 1)}, str(tmp_path)))
    (tmp_path / "k2.jpg").write_bytes(b"replaced meanwhile")
    out = tmp_path / "out"
    stats = write_shard(str(out), 0, 1, records, {"config_hash": "x"})
    assert stats["written"] == 2 and stats["dead_lettered_by_reason"] == {"write:source_changed": 1}
    letters = [json.loads(line) for line in (out / "deadletter" / "shard-00000.jsonl").read_text().splitlines()]
    assert [x["key"] for x in letters] == ["k2"]
    assert [s["__key__"] for s in read_shards(out)] == ["k1", "k3"]
    assert not list(out.glob("*.inprogress"))
