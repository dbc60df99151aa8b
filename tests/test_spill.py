"""Image bytes parked in a spill folder between reading and writing (core/spill.py)."""
from __future__ import annotations

import pathlib

import fsspec
import pytest

from conftest import read_shards, run_pipeline, shard_hashes
from core.record import Field, SampleError
from core.spill import SpillDir, image_bytes, spill_image

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


def test_a_launcher_stopped_on_a_distributed_runner_keeps_the_spill_folder_its_job_may_still_read(
        tmp_path: pathlib.Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with SpillDir(str(tmp_path), local_runner=False) as remote:
            raise KeyboardInterrupt  # Ctrl-C in wait_until_finish: Dataflow/Flink go on without the launcher
    assert pathlib.Path(remote.root).is_dir()
    with pytest.raises(KeyboardInterrupt):
        with SpillDir(str(tmp_path), local_runner=True) as local:
            raise KeyboardInterrupt  # a local run stops with its launcher: nothing will read the folder
    assert not pathlib.Path(local.root).exists()
    with SpillDir(str(tmp_path), local_runner=False) as done:
        pass  # the job ended (wait_until_finish returned)
    assert not pathlib.Path(done.root).exists()


@pytest.fixture
def records_at_the_writer(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The records the shard writer gets, after the group by shard (the writer runs in this process:
    the FnApiRunner, and the PortableRunner's LOOPBACK worker)."""
    import transforms.write as write

    seen: list[dict] = []
    real = write.write_shard

    def spy(output, shard_id, num_shards, items, run_info):
        items = list(items)
        seen.extend(items)
        return real(output, shard_id, num_shards, items, run_info)

    monkeypatch.setattr(write, "write_shard", spy)
    return seen


def test_records_reach_the_writer_without_their_bytes(tmp_path: pathlib.Path, scenes_dir: pathlib.Path,
                                                      records_at_the_writer: list[dict]) -> None:
    """The point of spilling: what crosses stage boundaries (here the group by shard) is small."""
    seen = records_at_the_writer
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

    from shards.write import write_shard

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


def test_a_changed_source_with_an_undecodable_name_is_dead_lettered_with_the_name_escaped(
        tmp_path: pathlib.Path) -> None:
    """The writer marks it dead as every stage does (``core.outcomes.mark_dead``): the detail names the
    file with its undecodable byte written out, so the dead-letter list can be written (was: the shard failed)."""
    import json

    from core.record import valid_text
    from shards.write import write_shard

    records = []
    for key in ("k1", "k\udcff"):  # the second file's name holds the byte 0xff, which is not UTF-8
        src = tmp_path / f"{key}.jpg"
        src.write_bytes(b"\xff\xd8 " + key.encode("utf-8", "surrogateescape"))
        records.append(spill_image({"key": valid_text(key, escape=True).replace("\\", "_"),
                                    "f_path": valid_text(str(src), escape=True), "image_bytes": src.read_bytes(),
                                    Field.SOURCE: str(src), "caption": "c", Field.SHARD: (0, 1)}, str(tmp_path)))
    (tmp_path / "k\udcff.jpg").write_bytes(b"replaced meanwhile")
    out = tmp_path / "out"
    stats = write_shard(str(out), 0, 1, records, {"config_hash": "x"})
    assert stats["written"] == 1 and stats["dead_lettered_by_reason"] == {"write:source_changed": 1}
    [letter] = [json.loads(line) for line in (out / "deadletter" / "shard-00000.jsonl").read_text().splitlines()]
    assert letter["detail"] == f"{tmp_path}/k\\xff.jpg changed since it was read and checked"


# ------------------------------------------------------------------ re-read from the source (issue #15: small shuffles)

PORTABLE = ("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK")  # a distributed runner


def write_tar(path: pathlib.Path, members: dict[str, bytes], mode: str = "w") -> pathlib.Path:
    import io
    import tarfile

    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def scene_members(scenes_dir: pathlib.Path, n: int) -> dict[str, bytes]:
    """img2dataset layout: ``000000.jpg`` + ``000000.txt`` per scene."""
    members = {}
    for i, jpg in enumerate(sorted(scenes_dir.glob("*.jpg"))[:n]):
        members[f"{i:06d}.jpg"] = jpg.read_bytes()
        members[f"{i:06d}.txt"] = f"scene {i}".encode()
    return members


def test_what_names_a_source_that_can_be_read_again() -> None:
    from inputs.opening import source_of

    assert source_of("/data/a.jpg") == "/data/a.jpg" and source_of("rel/a::b.jpg") == "rel/a::b.jpg"
    assert source_of("file:///data/a.jpg") == "/data/a.jpg"
    assert source_of("gs://bucket/a.jpg") == "gs://bucket/a.jpg"
    assert source_of("https://example.com/a.jpg") is None  # a second download costs as much as carrying the bytes
    assert source_of("/data/\udcff.jpg") is None  # the name is repaired later: it would no longer name the file
    assert source_of("file://x://y.jpg") is None  # names the local "x://y.jpg", which would read as a URI


def test_files_given_by_fsspec_and_file_uris_are_read_again_from_there(tmp_path: pathlib.Path,
                                                                       scenes_dir: pathlib.Path) -> None:
    import json
    import uuid

    from inputs.reader import read_unit
    from inputs.units import list_units

    fs = fsspec.filesystem("memory")
    folder = f"/reread-{uuid.uuid4().hex[:8]}"
    jpgs = sorted(scenes_dir.glob("*.jpg"))[:3]
    for jpg in jpgs[:2]:
        fs.pipe(f"{folder}/{jpg.name}", jpg.read_bytes())
    local = tmp_path / jpgs[2].name
    local.write_bytes(jpgs[2].read_bytes())
    manifest = tmp_path / "m.jsonl"
    uris = [f"memory://{folder}/{jpg.name}" for jpg in jpgs[:2]] + [f"file://{local}"]
    manifest.write_text("".join(json.dumps({"url": u}) + "\n" for u in uris))
    try:
        records = [r for u in list_units(str(manifest)) for r in read_unit(u)]
        assert [r[Field.SOURCE] for r in records] == uris[:2] + [str(local)]
        for rec, jpg in zip(records, jpgs):
            spill_image(rec, None)  # no spill folder (a distributed runner): the bytes are dropped all the same
            assert "image_bytes" not in rec and SPILL not in rec
            assert image_bytes(rec) == jpg.read_bytes()
        fs.pipe(f"{folder}/{jpgs[0].name}", b"\xff\xd8 rewritten meanwhile")
        fs.rm(f"{folder}/{jpgs[1].name}")
        local.write_bytes(jpgs[0].read_bytes())
        for rec, why in zip(records, ("changed since it was read", "can no longer be read", "changed since")):
            with pytest.raises(SampleError, match=why) as err:
                image_bytes(rec)
            assert err.value.reason == "source_changed"
    finally:
        fs.rm(folder, recursive=True)


def test_a_member_of_an_uncompressed_tar_is_read_again_by_its_byte_range(tmp_path: pathlib.Path,
                                                                          scenes_dir: pathlib.Path) -> None:
    import uuid

    from inputs.reader import read_unit
    from inputs.units import ReadUnit

    members = scene_members(scenes_dir, 3)
    for ext in ("jpg", "txt"):  # a long name: an extra header block before the member's bytes
        members[f"{'x' * 120}/000002.{ext}"] = members.pop(f"000002.{ext}")
    local = write_tar(tmp_path / "part.tar", members)
    fs = fsspec.filesystem("memory")
    remote = f"/tars-{uuid.uuid4().hex[:8]}/part.tar"
    fs.pipe(remote, local.read_bytes())
    try:
        for uri, source in ((str(local), str(local)), (f"memory://{remote}", f"memory://{remote}")):
            records = list(read_unit(ReadUnit("tar", uri.rsplit("/", 1)[0], (uri,))))
            assert len(records) == 3
            for rec in records:
                stored = rec["image_bytes"]
                where, offset, size = rec[Field.SOURCE]
                assert where == source and size == len(stored) and offset % 512 == 0
                spill_image(rec, None)
                assert "image_bytes" not in rec and image_bytes(rec) == stored
    finally:
        fs.rm(remote.rsplit("/", 1)[0], recursive=True)
    gz = write_tar(tmp_path / "part.tar.gz", members, "w:gz")  # offsets are in the unzipped stream: no range read
    records = list(read_unit(ReadUnit("tar", str(tmp_path), (str(gz),))))
    assert len(records) == 3 and not any(Field.SOURCE in r for r in records)
    assert all("image_bytes" in spill_image(r, None) for r in records)  # no spill folder: they keep their bytes
    (tmp_path / "spill").mkdir()
    spilled = spill_image(records[0], str(tmp_path / "spill"))
    assert SPILL in spilled and image_bytes(spilled) == members["000000.jpg"]


def test_a_tar_rewritten_after_reading_dead_letters_its_changed_member_and_the_shard_is_written_without_it(
        tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    import json

    from inputs.reader import read_unit
    from inputs.units import ReadUnit
    from shards.write import write_shard

    members = scene_members(scenes_dir, 3)
    tar = write_tar(tmp_path / "part.tar", members)
    records = []
    for rec in read_unit(ReadUnit("tar", str(tmp_path), (str(tar),))):
        rec.update({"caption": "c", Field.SHARD: (0, 1)})
        records.append(spill_image(rec, None))
    changed = bytearray(members["000001.jpg"])
    changed[-10:] = b"\x00" * 10  # same size, so every other member stays where it was
    write_tar(tar, {**members, "000001.jpg": bytes(changed)})
    out = tmp_path / "out"
    stats = write_shard(str(out), 0, 1, records, {"config_hash": "x"})
    assert stats["written"] == 2 and stats["dead_lettered_by_reason"] == {"write:source_changed": 1}
    letters = [json.loads(line) for line in (out / "deadletter" / "shard-00000.jsonl").read_text().splitlines()]
    assert [x["key"] for x in letters] == ["000001"] and "part.tar (bytes " in letters[0]["detail"]
    assert [s["__key__"] for s in read_shards(out)] == ["000000", "000002"]
    assert [s["jpg"] for s in read_shards(out)] == [members["000000.jpg"], members["000002.jpg"]]


@pytest.mark.parametrize("kind", ["files", "tar"])
def test_on_a_distributed_runner_re_readable_records_cross_the_shuffles_without_their_bytes(
        kind: str, tmp_path: pathlib.Path, scenes_dir: pathlib.Path, records_at_the_writer: list[dict]) -> None:
    seen = records_at_the_writer
    source = scenes_dir / "manifest.jsonl" if kind == "files" else \
        write_tar(tmp_path / "part.tar", scene_members(scenes_dir, 12))
    local = run_pipeline(source, tmp_path / "local", "--samples-per-shard", "4", "--spill-dir", "none")
    assert len(seen) == 12 and all("image_bytes" in r for r in seen)  # the control: there they ride along
    seen.clear()
    distributed = run_pipeline(source, tmp_path / "distributed", "--samples-per-shard", "4", *PORTABLE)
    assert distributed["written"] == local["written"] == 12 and distributed["reconciled"] is True
    assert len(seen) == 12 and not any("image_bytes" in r or SPILL in r for r in seen)
    assert all(isinstance(r[Field.SOURCE], str if kind == "files" else tuple) for r in seen)
    assert shard_hashes(tmp_path / "distributed") == shard_hashes(tmp_path / "local")


def test_on_a_distributed_runner_a_compressed_tar_spills_to_the_spill_dir_given_else_carries_its_bytes(
        tmp_path: pathlib.Path, scenes_dir: pathlib.Path, records_at_the_writer: list[dict]) -> None:
    import uuid

    seen = records_at_the_writer
    gz = write_tar(tmp_path / "part.tar.gz", scene_members(scenes_dir, 12), "w:gz")
    local = run_pipeline(gz, tmp_path / "local", "--samples-per-shard", "4")
    seen.clear()
    run_pipeline(gz, tmp_path / "carried", "--samples-per-shard", "4", *PORTABLE)
    assert len(seen) == 12 and all("image_bytes" in r and Field.SOURCE not in r for r in seen)
    seen.clear()
    bucket = f"/spill-{uuid.uuid4().hex[:8]}"  # stands in for --spill-dir gs://bucket/tmp
    spilled = run_pipeline(gz, tmp_path / "spilled", "--samples-per-shard", "4", "--spill-dir", f"memory://{bucket}",
                           *PORTABLE)
    assert spilled["written"] == local["written"] == 12
    assert len(seen) == 12 and all("image_bytes" not in r and r[SPILL].startswith(f"memory://{bucket}/")
                                   for r in seen)
    assert fsspec.filesystem("memory").find(bucket) == []  # the run removed what it spilled
    assert shard_hashes(tmp_path / "spilled") == shard_hashes(tmp_path / "carried") == shard_hashes(tmp_path / "local")
