"""Local runs in waves (pipeline/waves.py): same bytes as one pass, nothing lost, resumable, reads skipped."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import pathlib
import shutil

import pytest
from PIL import Image

from conftest import read_shards, run_pipeline
from pipeline.waves import merge_stage_metrics, plan_waves
from shards.write import ShardRange, shard_of

PER_SHARD = 4
WAVE = 8


def output_bytes(out: pathlib.Path) -> dict[str, str]:
    """Every file a run leaves for its users (shards, markers, dead-letter and filtered lists, counts)."""
    skip = {"summary.json", "run.json"}  # wall time; run.json is compared apart (it has no per-run values)
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name not in skip and ".finehard.lock" not in p.name}


def _wave_of(key: str, waves: list[ShardRange]) -> int:
    return next(i for i, w in enumerate(waves) if w(key))


@pytest.fixture(scope="module")
def dup_folder(tmp_path_factory: pytest.TempPathFactory, scenes_dir: pathlib.Path) -> pathlib.Path:
    """12 scenes, an exact and a near copy of one of them in another wave than it, a broken image, a text file."""
    src = tmp_path_factory.mktemp("dups")
    shutil.copytree(scenes_dir, src, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.jsonl"))
    (src / "broken.jpg").write_bytes((scenes_dir / "scene_03_000001.jpg").read_bytes()[:300])
    (src / "notes.txt").write_text("not an image")
    files = 12 + 2 + 2  # scenes, broken + notes, the two copies
    shards = math.ceil(files / PER_SHARD)
    waves = plan_waves(shards, files, WAVE)
    original = "scene_03_000004"
    # names for the copies that land in another wave than the original: the decision must cross waves
    names = (f"zz_copy_{i}" for i in range(1000) if _wave_of(f"zz_copy_{i}", waves) != _wave_of(original, waves))
    shutil.copy(src / f"{original}.jpg", src / f"{next(names)}.jpg")
    im = Image.open(src / f"{original}.jpg").convert("RGB")
    im.resize((im.width // 2, im.height // 2)).save(src / f"{next(names)}.jpg", quality=70)
    assert len(list(src.iterdir())) == files
    return src


def test_plan_waves_covers_every_shard_once() -> None:
    waves = plan_waves(10, 100, 30)
    assert len(waves) == 4
    assert [s for w in waves for s in w.shards()] == list(range(10))
    keys = [f"k{i}" for i in range(200)]
    assert all(sum(w(k) for w in waves) == 1 for k in keys)  # every key in exactly one wave
    assert plan_waves(10, 100, 0) == []  # off
    assert plan_waves(10, 100, 100) == []  # fits in one
    assert plan_waves(10, None, 30) == []  # size unknown: one pass
    assert plan_waves(1, 100, 30) == []  # one shard cannot be split
    assert len(plan_waves(3, 100, 10)) == 3  # never more waves than shards


def test_merge_stage_metrics_sums_waves() -> None:
    merged = merge_stage_metrics([{"recaption": {"samples": 3, "model_seconds": 1.0, "batches": 1,
                                                 "samples_per_model_second": 3.0}},
                                  {"recaption": {"samples": 5, "model_seconds": 1.0, "batches": 2,
                                                 "samples_per_model_second": 5.0}}])
    assert merged == {"recaption": {"samples": 8, "model_seconds": 2.0, "batches": 3, "samples_per_model_second": 4.0}}


@pytest.mark.parametrize("near", ["6", "-1"])
def test_waves_write_the_bytes_of_one_pass(tmp_path: pathlib.Path, dup_folder: pathlib.Path, near: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    flags = ("--samples-per-shard", str(PER_SHARD), "--near-dup-threshold", near)
    one = run_pipeline(dup_folder, tmp_path / "one", *flags, "--wave-samples", "0")
    with caplog.at_level(logging.INFO, logger="finehard"):
        waved = run_pipeline(dup_folder, tmp_path / "waves", *flags, "--wave-samples", str(WAVE))
    assert sum("wave " in r.getMessage() and "shards" in r.getMessage() for r in caplog.records) == 2
    assert waved["reconciled"] and one["reconciled"]
    # the duplicates were found across waves: the copies are filtered exactly as in one pass
    assert waved["filtered_by_reason"]["dedup:duplicate"] == (2 if near == "6" else 1)
    assert {k: waved[k] for k in ("read", "written", "dead_lettered", "filtered", "filtered_by_reason",
                                  "dead_lettered_by_reason", "counters")} == \
        {k: one[k] for k in ("read", "written", "dead_lettered", "filtered", "filtered_by_reason",
                             "dead_lettered_by_reason", "counters")}
    assert output_bytes(tmp_path / "waves") == output_bytes(tmp_path / "one")
    assert json.loads((tmp_path / "waves" / "run.json").read_text()) == \
        json.loads((tmp_path / "one" / "run.json").read_text())
    assert not (tmp_path / "waves" / ".waves").exists()  # the hash rows are removed
    assert set(waved["stage_metrics"]) == set(one["stage_metrics"])
    assert {s: m["samples"] for s, m in waved["stage_metrics"].items()} == \
        {s: m["samples"] for s, m in one["stage_metrics"].items()}


def test_waves_on_a_manifest_without_dedup(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    flags = ("--samples-per-shard", "2", "--no-dedup")
    one = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "one", *flags, "--wave-samples", "0")
    waved = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "waves", *flags, "--wave-samples", "4")
    assert waved["written"] == one["written"] == 12 and waved["reconciled"]
    assert output_bytes(tmp_path / "waves") == output_bytes(tmp_path / "one")


def test_a_wave_that_loses_its_records_is_not_reconciled(tmp_path: pathlib.Path, dup_folder: pathlib.Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: waves that leave a shard out are seen in the summary, not trusted."""
    import pipeline.run

    real = pipeline.run.plan_waves
    monkeypatch.setattr(pipeline.run, "plan_waves", lambda *a: real(*a)[1:])  # the first wave never runs
    summary = run_pipeline(dup_folder, tmp_path / "out", "--samples-per-shard", str(PER_SHARD),
                           "--wave-samples", str(WAVE))
    assert summary["read"] == 16 and summary["accounted"] < 16 and summary["reconciled"] is False


def test_a_killed_run_resumes_wave_by_wave(tmp_path: pathlib.Path, dup_folder: pathlib.Path,
                                           monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import pipeline.run

    flags = ("--samples-per-shard", str(PER_SHARD), "--wave-samples", str(WAVE))
    real, built = pipeline.run.build_pipeline, []

    def dies_in_second_wave(p, args, done, *a, wave=None, **kw):  # noqa: ANN001, ANN202
        built.append(wave)
        if len(built) == 2:
            raise KeyboardInterrupt("killed")
        return real(p, args, done, *a, wave=wave, **kw)

    monkeypatch.setattr(pipeline.run, "build_pipeline", dies_in_second_wave)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(dup_folder, tmp_path / "out", *flags)
    first = built[0]
    assert sorted(int(p.name[6:11]) for p in (tmp_path / "out").glob("shard-*_stats.json")) == list(first.shards())
    built.clear()
    with caplog.at_level(logging.INFO, logger="finehard"):
        monkeypatch.setattr(pipeline.run, "build_pipeline", lambda *a, **kw: built.append(kw["wave"]) or real(*a, **kw))
        summary = run_pipeline(dup_folder, tmp_path / "out", *flags)
    assert first not in built and len(built) == 1  # the complete wave is not read again
    assert any("complete, skipped" in r.getMessage() for r in caplog.records)
    assert summary["reconciled"] and summary["filtered_by_reason"]["dedup:duplicate"] == 2
    monkeypatch.undo()
    run_pipeline(dup_folder, tmp_path / "one", "--samples-per-shard", str(PER_SHARD), "--wave-samples", "0")
    assert output_bytes(tmp_path / "out") == output_bytes(tmp_path / "one")
    assert len(read_shards(tmp_path / "out")) == summary["written"]


def test_a_wave_reads_only_its_images(tmp_path: pathlib.Path, scenes_dir: pathlib.Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Other waves' images are counted but not read: time stays linear in the input, not in waves x input."""
    import inputs.folders as folders
    import inputs.opening as opening
    import inputs.records as records
    from inputs.reader import read_and_count
    from inputs.units import list_units

    reads = []
    real = opening.read_limited
    for module in (records, folders):  # every reader that reads an image or its sidecar calls it there
        monkeypatch.setattr(module, "read_limited", lambda uri, *a, **kw: reads.append(uri) or real(uri, *a, **kw))
    wave = ShardRange(0, 2, 6)
    units = list_units(str(scenes_dir)) + list_units(str(scenes_dir / "manifest.jsonl"))
    units = [u for u in units if u.kind in ("files", "manifest")]
    assert [u.kind for u in units] == ["files", "manifest"]
    for unit in units:
        reads.clear()
        counts = tmp_path / unit.kind
        got = list(read_and_count(unit, counts_root=str(counts), want=wave))
        assert got and all(wave(r["key"]) for r in got)
        assert all(r.get("image_bytes") or r.get("_dead") for r in got)
        assert len(reads) == len(got) < 12  # only the wave's images were read
        (count,) = counts.glob("*.json")
        assert json.loads(count.read_text())["items"] == 12  # the unit's count is the whole unit's
        assert sorted(reads) == sorted(r["f_path"] for r in got)
        assert {shard_of(r["key"], 6) for r in got} <= {0, 1}


def test_duplicates_of_takes_the_decisions_of_drop_duplicates() -> None:
    """Hundreds of planted exact and near duplicates (and near misses): the launcher's dict version and the
    Beam transform (DropDuplicates over records that carry their hashes) mark the same keys, the same way."""
    import random

    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from core.record import Field
    from stages.dedup import EXACT, duplicate_detail, duplicates_of, rank
    from transforms.dedup import DropDuplicates

    rnd = random.Random(7)
    rows = []
    for i in range(150):
        h, thumb, sha = rnd.getrandbits(256), bytes(rnd.getrandbits(8) for _ in range(768)), f"sha{i}"
        rows.append((f"k{i:03d}", sha, h, thumb))
        for j in range(rnd.choice([0, 0, 1, 2])):  # copies: some exact, some a few bits away, some with another thumb
            flips = rnd.choice([0, 0, 2, 5, 9])
            h2 = h
            for b in rnd.sample(range(256), flips):
                h2 ^= 1 << b
            thumb2 = thumb if rnd.random() < 0.8 else bytes(255 - t for t in thumb)
            # some near copies have the same dHash (distance 0) but other bytes: near, not exact
            same_bytes = flips == 0 and rnd.random() < 0.7
            rows.append((f"c{i:03d}_{j}_{rnd.getrandbits(16):x}", sha if same_bytes else f"sha{i}_{j}", h2, thumb2))
    rnd.shuffle(rows)
    # input order: where each row stands (unit, item), unrelated to the keys; pixels for --dedup-keep largest
    records = [{"key": k, Field.SHA256: s, Field.DHASH: h, Field.THUMB: t, Field.ORDER: (n // 7, n % 7, ""),
                "width": rnd.choice([10, 20]), "height": 10} for n, (k, s, h, t) in enumerate(rows)]
    for keep in ("first", "largest"):
        for threshold in (6, -1):
            hash_rows = [(r["key"], r[Field.SHA256], r[Field.DHASH], r[Field.THUMB], rank(r, keep)) for r in records]
            ours = duplicates_of(lambda: iter(hash_rows), threshold)

            def marked(rec: dict) -> tuple:
                return rec["key"], rec.get(Field.FILTERED, {}).get("detail")

            with beam.Pipeline() as p:
                out = (p | beam.Create([dict(r) for r in records]) | DropDuplicates(threshold, keep=keep)
                       | beam.Map(marked) | beam.Filter(lambda kv: kv[1] is not None))
                assert_that(out, equal_to([(key, duplicate_detail(key, ours)) for key in ours]))
            near = sum(how != EXACT for _, _, how, _ in ours.values())
            assert len(ours) - near > 10 and (near > 20 if threshold >= 0 else near == 0)
            by_key = {r["key"]: r for r in records}
            for key, (ref_rank, ref, how, dist) in ours.items():  # the reference always ranks before
                assert ref_rank == rank(by_key[ref], keep) < rank(by_key[key], keep)
                assert (how == EXACT) == (by_key[key][Field.SHA256] == by_key[ref][Field.SHA256])
            if threshold >= 0:  # a near copy with dHash distance 0 is still described as near
                assert any(how != EXACT and d == 0 for _, _, how, d in ours.values())


def test_negative_wave_samples_fail_fast(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="--wave-samples must be >= 0"):
        run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "o", "--wave-samples", "-1")
    assert not (tmp_path / "o").exists()
