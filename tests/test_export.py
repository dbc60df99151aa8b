"""Exports round-trip: shards -> FG-CLIP json list / FG-OVD jsonl -> read back and compared."""
from __future__ import annotations

import json
import pathlib

import pytest
from PIL import Image

from conftest import read_shards, run_pipeline
from pipeline.export import export_fgclip_main, export_fgovd_main


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory, scenes_dir: pathlib.Path) -> pathlib.Path:
    out = tmp_path_factory.mktemp("export") / "out"
    run_pipeline(scenes_dir / "manifest.jsonl", out, "--samples-per-shard", "4")
    return out


def test_fgclip_export_round_trip(run_out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "fgclip"
    assert export_fgclip_main([str(run_out), "--to", str(dest)]) == 0
    items = json.loads((dest / "finehard.json").read_text(encoding="utf-8"))
    assert (dest / "finehard_files.txt").read_text().split() == [str(dest / "finehard.json")]
    shards = {s["__key__"]: s["record"] for s in read_shards(run_out)}
    assert len(items) == len(shards) == 12
    for item in items:
        rec = shards[item["key"]]
        assert not pathlib.Path(item["f_path"]).is_absolute()
        image = Image.open(dest / item["f_path"])  # relative to DIR, as the FG-CLIP loader joins it
        assert image.size == (item["width"], item["height"]) == (rec["width"], rec["height"])
        assert item["source_f_path"] == rec["f_path"]
        for field in ("caption", "short_caption", "bbox_info"):
            assert item[field] == rec[field]
    assert sum(len(i["bbox_info"]) for i in items) > 0


def test_fgovd_export_round_trip_from_held_out_shards(run_out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    held_out = sorted(p.stem for p in run_out.glob("shard-*.tar"))[-1:]
    dest = tmp_path / "eval" / "fgovd.jsonl"
    assert export_fgovd_main([str(run_out), "--to", str(dest), "--shards", *held_out]) == 0
    lines = [json.loads(x) for x in dest.read_text(encoding="utf-8").splitlines()]
    held = {s["__key__"]: s["record"] for s in read_shards(run_out) if s["__url__"].endswith(held_out[0] + ".tar")}
    expected = [(k, r) for k, rec in held.items() for r in rec["bbox_info"] if r["flag_short_neg"] == 1]
    assert len(lines) == len(expected) > 0
    assert {x["key"] for x in lines} <= set(held)  # nothing from the training shards
    for line in lines:
        rec = held[line["key"]]
        region = rec["bbox_info"][line["region"]]
        w, h = rec["width"], rec["height"]
        x, y, bw, bh = line["bbox"]
        assert [x / w, y / h, (x + bw) / w, (y + bh) / h] == pytest.approx(region["bbox"][:4], abs=0.01)
        assert 0 <= x and 0 <= y and x + bw <= w + 0.01 and y + bh <= h + 0.01
        assert line["pos_expression"] == region["short_expr"]
        assert line["neg_expression"] == [region["short_expr_negs"][str(i)] for i in range(10)]
        assert len(set(line["neg_expression"])) == 10 and line["pos_expression"] not in line["neg_expression"]
        assert Image.open(dest.parent / line["img_path"]).size == (w, h)


def test_export_of_unknown_shard_fails_clearly(run_out: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    assert export_fgovd_main([str(run_out), "--to", str(tmp_path / "x.jsonl"), "--shards", "shard-09999"]) == 2
    assert "shard-09999" in capsys.readouterr().err
