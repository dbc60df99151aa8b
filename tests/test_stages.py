"""Choosing stages: stage-1 data, re-runs over our own shards, reused captions, duplicate removal."""
from __future__ import annotations

import io
import json
import pathlib
import shutil

from PIL import Image

from conftest import read_shards, run_pipeline, shard_hashes

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "sample"


def test_stage1_run_gives_captions_and_no_regions(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "s1", "--stages", "recaption")
    assert summary["written"] == 12 and summary["reconciled"]
    for s in read_shards(tmp_path / "s1"):
        rec = s["record"]
        assert rec["caption"] and rec["short_caption"] and rec["bbox_info"] == []
        assert set(rec["provenance"]) == {"caption", "version"}
        assert rec["provenance"]["caption"]["stub"] is True and len(rec["provenance"]["caption"]["run"]) == 16


def test_negatives_only_rerun_over_shards_changes_only_negatives(tmp_path: pathlib.Path) -> None:
    first = tmp_path / "first"
    run_pipeline(SAMPLE / "manifest.jsonl", first, "--samples-per-shard", "8")
    shards_glob = str(first / "shard-*.tar")
    again_a = run_pipeline(shards_glob, tmp_path / "a", "--stages", "negatives", "--negatives", "rules",
                           "--samples-per-shard", "8")
    run_pipeline(shards_glob, tmp_path / "b", "--stages", "negatives", "--negatives", "rules",
                 "--samples-per-shard", "8")
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")  # the re-run is deterministic too
    assert again_a["written"] == 28 and again_a["reconciled"]

    before = {s["__key__"]: s for s in read_shards(first)}
    after = {s["__key__"]: s for s in read_shards(tmp_path / "a")}
    assert before.keys() == after.keys()
    changed_negatives = 0
    for key, old in before.items():
        new = after[key]
        img = next(e for e in ("jpg", "png") if e in old)
        assert new[img] == old[img] and new["txt"] == old["txt"]
        o, n = old["record"], new["record"]
        for field in ("key", "f_path", "caption", "short_caption", "width", "height"):
            assert n[field] == o[field]
        for field in ("caption", "bbox_info", "expressions"):
            assert n["provenance"][field] == o["provenance"][field]  # produced by the first run, kept
        assert n["provenance"]["negatives"]["engine"] == "rules"
        assert n["provenance"]["negatives"]["run"] != o["provenance"]["negatives"]["run"]
        assert [r["bbox"] for r in n["bbox_info"]] == [r["bbox"] for r in o["bbox_info"]]
        assert [r["short_expr"] for r in n["bbox_info"]] == [r["short_expr"] for r in o["bbox_info"]]
        for r_old, r_new in zip(o["bbox_info"], n["bbox_info"]):
            assert r_new["flag_short_neg"] == 1 and len(r_new["short_expr_negs"]) == 10
            changed_negatives += r_new["short_expr_negs"] != r_old["short_expr_negs"]
    assert changed_negatives > 0


def test_reuse_captions_from_a_manifest_column(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    rows = [json.loads(l) for l in (scenes_dir / "manifest.jsonl").read_text().splitlines()][:4]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"url": str(scenes_dir / r["url"]), "caption": r["caption"],
                                            "long_caption": f"A written caption number {i} about a red circle."})
                                + "\n" for i, r in enumerate(rows)))
    run_pipeline(manifest, tmp_path / "out", "--reuse-captions")
    recs = [s["record"] for s in read_shards(tmp_path / "out")]
    assert sorted(r["caption"] for r in recs) == [f"A written caption number {i} about a red circle." for i in range(4)]
    assert all(r["provenance"]["caption"]["engine"] == "input" for r in recs)
    assert all("_input_caption" not in r and "input_long_caption" not in r for r in recs)


def test_exact_and_near_duplicates_are_filtered_with_their_reference(tmp_path: pathlib.Path,
                                                                    scenes_dir: pathlib.Path) -> None:
    src = tmp_path / "in"
    shutil.copytree(scenes_dir, src, ignore=shutil.ignore_patterns("*.jsonl"))
    original = src / "scene_03_000004.jpg"
    shutil.copy(original, src / "zz_exact_copy.jpg")
    im = Image.open(original)
    small = im.convert("RGB").resize((im.width // 2, im.height // 2))
    small.save(src / "zz_resized_copy.jpg", quality=70)
    summary = run_pipeline(src, tmp_path / "out")
    assert summary["read"] == 14 and summary["written"] == 12 and summary["filtered"] == 2 and summary["reconciled"]
    assert summary["filtered_by_reason"] == {"dedup:duplicate": 2}
    lines = [json.loads(l) for p in sorted((tmp_path / "out" / "filtered").glob("*.jsonl"))
             for l in p.read_text().splitlines()]
    by_key = {l["key"]: l for l in lines}
    assert set(by_key) == {"zz_exact_copy", "zz_resized_copy"}
    assert by_key["zz_exact_copy"]["detail"] == "exact duplicate of scene_03_000004"
    assert by_key["zz_resized_copy"]["detail"].startswith("near duplicate")
    assert by_key["zz_resized_copy"]["detail"].endswith("of scene_03_000004")
    kept = {s["__key__"] for s in read_shards(tmp_path / "out")}
    assert "scene_03_000004" in kept and not kept & set(by_key)
    # No false positives among the distinct scenes: every one of them was written.
    assert len(kept) == 12
    assert Image.open(io.BytesIO(next(s for s in read_shards(tmp_path / "out")
                                      if s["__key__"] == "scene_03_000004")["jpg"])).size == im.size
    exact_only = run_pipeline(src, tmp_path / "exact", "--near-dup-threshold", "-1")
    assert exact_only["written"] == 13 and exact_only["filtered_by_reason"] == {"dedup:duplicate": 1}
    assert "zz_resized_copy" in {s["__key__"] for s in read_shards(tmp_path / "exact")}


def test_unknown_stage_fails_fast(tmp_path: pathlib.Path, scenes_dir: pathlib.Path) -> None:
    import pytest

    from pipeline.stages import UsageError

    with pytest.raises(UsageError, match="unknown stage 'boxs'"):
        run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "o", "--stages", "boxs")


def test_nearly_blank_pictures_with_different_objects_are_not_duplicates(tmp_path: pathlib.Path) -> None:
    """dHash puts such pairs a few bits apart; the colour thumbnail check keeps them both."""
    from PIL import ImageDraw

    from core.images import dhash

    src = tmp_path / "in"
    src.mkdir()
    for name, colour, x in (("a_pink", (230, 90, 200), 130), ("b_yellow", (240, 220, 40), 136)):
        im = Image.new("RGB", (384, 288), (245, 235, 225))
        ImageDraw.Draw(im).polygon([(x, 260), (x + 40, 260), (x + 20, 235)], fill=colour)
        im.save(src / f"{name}.jpg", quality=90)
    a, b = (dhash(Image.open(src / f"{n}.jpg")) for n in ("a_pink", "b_yellow"))
    assert bin(a ^ b).count("1") <= 6  # within the default threshold: dHash alone would drop one
    original = Image.open(src / "a_pink.jpg")
    original.resize((192, 144)).save(src / "c_pink_resized.jpg", quality=70)
    summary = run_pipeline(src, tmp_path / "out")
    assert summary["written"] == 2 and summary["filtered_by_reason"] == {"dedup:duplicate": 1}
    assert {s["__key__"] for s in read_shards(tmp_path / "out")} == {"a_pink", "b_yellow"}


def test_ingest_runs_no_model_and_its_shards_feed_a_later_model_run(tmp_path: pathlib.Path,
                                                                    scenes_dir: pathlib.Path) -> None:
    ingested = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "ingest", "--stages", "ingest")
    assert ingested["written"] == 12 and ingested["reconciled"] is True
    assert ingested["stage_metrics"] == {}  # no model stage ran
    records = [s["record"] for s in read_shards(tmp_path / "ingest")]
    assert all(r["caption"] == "" and r["bbox_info"] == [] and "caption" not in r.get("provenance", {})
               for r in records)
    later = run_pipeline(str(tmp_path / "ingest" / "shard-*.tar"), tmp_path / "models", "--no-dedup")
    assert later["written"] == 12 and later["regions"] > 0 and later["reconciled"] is True
