"""Exports round-trip: shards -> FG-CLIP json list / FG-OVD jsonl -> read back and compared."""
from __future__ import annotations

import glob
import json
import os
import pathlib

import pytest
from PIL import Image

from conftest import read_shards, run_pipeline
from shards.export import export_fgclip_main, export_fgovd_main


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory, scenes_dir: pathlib.Path) -> pathlib.Path:
    out = tmp_path_factory.mktemp("export") / "out"
    run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    return out


def _upstream_stage2_items(data_path: str, image_folder: str) -> list[dict]:
    """What upstream FG-CLIP's LazySupervisedBboxDataset does with --data_path/--image_folder (v1.0), in short:
    a folder: json.load every *.json and *.jsonl; a .txt: json.load every listed file; then each item's image
    is os.path.join(image_folder, f_path.replace("grit-20m/data-12m/", ""))."""
    if data_path.endswith(".txt"):
        files = [line.rstrip() for line in open(data_path, encoding="utf-8")]
    else:
        files = glob.glob(os.path.join(data_path, "*.json")) + glob.glob(os.path.join(data_path, "*.jsonl"))
    items = []
    for f in files:
        items += json.load(open(f, "r", encoding="utf-8"))
    for item in items:
        path = os.path.join(image_folder, item["f_path"].replace("grit-20m/data-12m/", ""))
        item["_image_size"] = Image.open(path).convert("RGB").size
        for b in item["bbox_info"][:4]:
            assert not (b["bbox"][0] > b["bbox"][2] or b["bbox"][1] > b["bbox"][3])  # upstream raises on these
            if b["flag_short_neg"] == 1:
                assert len([b["short_expr"]] + list(b["short_expr_negs"].values())) == 11  # reshaped to 11 upstream
    return items


def test_fgclip_export_round_trip(run_out: pathlib.Path, tmp_path: pathlib.Path, monkeypatch) -> None:
    dest = tmp_path / "fgclip"
    assert export_fgclip_main([str(run_out), "--to", str(dest)]) == 0
    shard_names = sorted(p.stem for p in run_out.glob("shard-*.tar"))
    assert sorted(p.stem for p in (dest / "jsonfiles").glob("*.json")) == shard_names  # one JSON array per shard
    listed = (dest / "finehard_files.txt").read_text().split()
    assert listed == [str(dest / "jsonfiles" / f"{n}.json") for n in shard_names]
    shards = {s["__key__"]: s["record"] for s in read_shards(run_out)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths resolve from any working directory and any --image_folder
    for data_path in (str(dest / "jsonfiles"), str(dest / "finehard_files.txt")):
        items = _upstream_stage2_items(data_path, image_folder="unrelated/")
        assert len(items) == len(shards) == 12
        for item in items:
            rec = shards[item["key"]]
            assert pathlib.Path(item["f_path"]).is_absolute()
            assert item["_image_size"] == (item["width"], item["height"]) == (rec["width"], rec["height"])
            assert item["source_f_path"] == rec["f_path"]
            for field in ("caption", "short_caption", "bbox_info"):
                assert item[field] == rec[field]
        assert sum(len(i["bbox_info"]) for i in items) > 0


def test_fgclip_export_relative_paths(run_out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "rel"
    assert export_fgclip_main([str(run_out), "--to", str(dest), "--relative-paths"]) == 0
    items = _upstream_stage2_items(str(dest / "jsonfiles"), image_folder=str(dest))
    assert len(items) == 12 and all(i["f_path"].startswith("images/") for i in items)


def test_fgclip_export_streams_one_record_at_a_time(run_out: pathlib.Path, tmp_path: pathlib.Path,
                                                    monkeypatch) -> None:
    """Each record is serialised into its file before the next sample is read: nothing accumulates."""
    import types

    import shards.export as export

    events: list[str] = []
    real_iter = export.iter_samples

    def iter_samples(uris, *a, **k):
        for s in real_iter(uris, *a, **k):
            events.append("read")
            yield s

    def dumps(obj, *a, **k):
        events.append("write" if isinstance(obj, dict) else f"write {len(obj)}")
        return json.dumps(obj, *a, **k)

    monkeypatch.setattr(export, "iter_samples", iter_samples)
    monkeypatch.setattr(export, "json", types.SimpleNamespace(dumps=dumps))
    assert export.export_fgclip(str(run_out), str(tmp_path / "s"))["images"] == 12
    assert events == ["read", "write"] * 12


def test_fgovd_export_round_trip_from_held_out_shards(run_out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from training.evaluate import load_fgovd

    held_out = sorted(p.stem for p in run_out.glob("shard-*.tar"))[-1:]
    dest = tmp_path / "eval" / "fgovd.jsonl"
    assert export_fgovd_main([str(run_out), "--to", str(dest), "--shards", *held_out]) == 0
    lines = [json.loads(x) for x in dest.read_text(encoding="utf-8").splitlines()]
    held = {s["__key__"]: s["record"] for s in read_shards(run_out) if s["__url__"].endswith(held_out[0] + ".tar")}
    expected = [(k, r) for k, rec in held.items() for r in rec["bbox_info"] if r["flag_short_neg"] == 1]
    assert len(lines) == len(expected) > 0
    # exactly the fields of upstream's data/fgovd/*.jsonl, with its types
    upstream_fields = {"img_path", "bbox", "pos_expression", "neg_expression", "category_id", "neg_category_ids",
                       "width", "height", "image_id", "sent_id", "test_type"}
    assert all(set(line) == upstream_fields for line in lines)
    assert [line["sent_id"] for line in lines] == list(range(len(lines)))
    for line, (key, region) in zip(lines, expected):
        assert pathlib.PurePosixPath(line["img_path"]).stem == key  # nothing from the training shards
        rec = held[key]
        w, h = rec["width"], rec["height"]
        x, y, bw, bh = line["bbox"]
        assert [x / w, y / h, (x + bw) / w, (y + bh) / h] == pytest.approx(region["bbox"][:4], abs=0.01)
        assert 0 <= x and 0 <= y and x + bw <= w + 0.01 and y + bh <= h + 0.01
        assert line["pos_expression"] == [region["short_expr"]] and isinstance(line["image_id"], int)
        assert line["neg_expression"] == [region["short_expr_negs"][str(i)] for i in range(10)]
        assert len(set(line["neg_expression"])) == 10 and line["pos_expression"][0] not in line["neg_expression"]
        assert Image.open(dest.parent / line["img_path"]).size == (w, h)
    # read back the way `finehard eval --fgovd` reads upstream's files: same boxes and expressions
    entries, skipped = load_fgovd(str(dest), 64, images=str(dest.parent))
    assert skipped == 0
    boxes = [b for e in entries for b in e["boxes"]]
    texts = [c for e in entries for c in e["candidates"]]
    assert len(boxes) == len(expected)
    for box, cands, (_, region) in zip(boxes, texts, expected):
        assert box == pytest.approx(region["bbox"][:4], abs=0.01)
        assert cands == [region["short_expr"]] + [region["short_expr_negs"][str(i)] for i in range(10)]


def test_export_of_unknown_shard_fails_clearly(run_out: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    assert export_fgovd_main([str(run_out), "--to", str(tmp_path / "x.jsonl"), "--shards", "shard-09999"]) == 2
    assert "shard-09999" in capsys.readouterr().err
