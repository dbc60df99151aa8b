"""``finehard stats`` and ``finehard preview`` over a real pipeline output."""
from __future__ import annotations

import base64
import io
import json
import pathlib
from html.parser import HTMLParser

import pytest
from PIL import Image

from conftest import read_shards, run_pipeline
from shards.preview import preview_main
from shards.stats import stats_main


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory, scenes_dir: pathlib.Path) -> pathlib.Path:
    root = tmp_path_factory.mktemp("report")
    manifest = root / "m.jsonl"
    lines = (scenes_dir / "manifest.jsonl").read_text().splitlines()
    lines = [json.dumps({**json.loads(x), "url": str(scenes_dir / json.loads(x)["url"])}) for x in lines]
    (root / "broken.jpg").write_bytes(b"plain text, not an image")
    lines.append(json.dumps({"url": str(root / "broken.jpg"), "caption": "broken"}))
    manifest.write_text("\n".join(lines) + "\n")
    run_pipeline(manifest, root / "out", "--samples-per-shard", "5")
    return root / "out"


def test_stats_report_counts_and_histogram(run_out: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    assert stats_main([str(run_out), "--write"]) == 0
    text = capsys.readouterr().out
    report = json.loads((run_out / "stats_report.json").read_text())
    summary = json.loads((run_out / "summary.json").read_text())
    samples = read_shards(run_out)
    assert report["read"] == summary["read"] == 13 and report["written"] == len(samples) == 12
    assert report["reconciled"] and report["dead_lettered_by_stage"] == {"read": {"corrupt_image": 1}}
    hist = {}
    for s in samples:
        n = str(len(s["record"]["bbox_info"]))
        hist[n] = hist.get(n, 0) + 1
    assert report["regions_per_image"] == hist and sum(hist.values()) == 12
    assert report["regions"] == sum(len(s["record"]["bbox_info"]) for s in samples) > 0
    assert report["negatives_valid_rate"] == 1.0 and report["stub_samples"] == 12
    assert "read:corrupt_image" in text and "reconciled" in text and "STUB" in text


def test_stats_on_a_folder_without_shards_fails_clearly(tmp_path: pathlib.Path, capsys) -> None:
    assert stats_main([str(tmp_path)]) == 2
    assert "no shard stats" in capsys.readouterr().err


class _PageParser(HTMLParser):
    """Collects per-sample boxes, captions, expressions and negatives from the preview page."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: dict[str, dict] = {}
        self.current: dict | None = None
        self.field: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        cls = a.get("class", "")
        if tag == "section" and cls == "sample":
            self.current = {"rects": [], "labels": [], "caption": "", "short": "", "negatives": [],
                            "stub": False, "img": None, "viewbox": None, "exprs": []}
            self.samples[a["data-key"]] = self.current
        elif self.current is None:
            return
        elif tag == "img":
            self.current["img"] = a["src"]
        elif tag == "svg":
            self.current["viewbox"] = a["viewbox"]
        elif tag == "g" and cls == "region":
            self.current["labels"].append(a["data-short-expr"])
        elif tag == "rect":
            self.current["rects"].append(tuple(float(a[k]) for k in ("x", "y", "width", "height")))
        elif tag == "span" and "badge" in cls and "stub" in cls:
            self.current["stub"] = True
        elif tag == "ol" and cls == "negatives":
            self.current["negatives"].append([])
        elif tag == "li" and self.current["negatives"]:
            self.field = "neg"
        elif cls in ("caption", "short-caption", "short-expr"):
            self.field = cls

    def handle_data(self, data: str) -> None:
        if self.current is None or self.field is None:
            return
        if self.field == "neg":
            self.current["negatives"][-1].append(data)
        elif self.field == "caption":
            self.current["caption"] += data
        elif self.field == "short-caption":
            self.current["short"] += data
        elif self.field == "short-expr":
            self.current["exprs"].append(data)
        self.field = None


def test_preview_page_shows_boxes_captions_and_negatives(run_out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    page = tmp_path / "preview.html"
    assert preview_main([str(run_out), "--out", str(page), "--n", "5"]) == 0
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    parser = _PageParser()
    parser.feed(text)
    samples = {s["__key__"]: s for s in read_shards(run_out)}
    assert len(parser.samples) == 5
    for key, shown in parser.samples.items():
        rec = samples[key]["record"]
        w, h = rec["width"], rec["height"]
        assert shown["viewbox"] == f"0 0 {w} {h}"
        assert shown["caption"] == rec["caption"] and shown["short"] == rec["short_caption"]
        assert shown["labels"] == shown["exprs"] == [r["short_expr"] for r in rec["bbox_info"]]
        for (x, y, bw, bh), region in zip(shown["rects"], rec["bbox_info"], strict=True):
            x1, y1, x2, y2, _ = region["bbox"]
            assert (x, y, bw, bh) == pytest.approx((x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h), abs=0.06)
        assert shown["negatives"] == [[r["short_expr_negs"][str(i)] for i in range(10)] for r in rec["bbox_info"]]
        assert shown["stub"] is True  # stub engines made this data: the page says so
        mime, b64 = shown["img"].split(",", 1)
        assert mime.startswith("data:image/")
        assert Image.open(io.BytesIO(base64.b64decode(b64))).size == (w, h)


def test_preview_without_stub_has_no_badge() -> None:
    from shards.preview import sample_card

    rec = {"key": "k", "caption": "c", "short_caption": "s", "width": 10, "height": 10, "bbox_info": [],
           "provenance": {"caption": {"engine": "vllm", "stub": False}}}
    assert "badge" not in sample_card({"key": "k", "record": rec})
    rec["provenance"]["bbox_info"] = {"engine": "stub", "stub": True}
    assert "badge stub" in sample_card({"key": "k", "record": rec})


def test_progress_line_and_logger(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from shards.progress import progress_line
    from transforms.progress import LogProgress

    assert progress_line(120, 40.0, 500) == "120/500 samples (24.0%), 3.0/s, ETA 2m07s"
    assert progress_line(7, 2.0) == "7 samples, 3.5/s"
    ticks = iter(range(0, 1000, 5))  # a fake clock: 5 s per element

    with caplog.at_level(logging.INFO, logger="finehard.progress"):
        with beam.Pipeline(runner=FnApiRunner()) as p:  # not the DirectRunner: it tries Prism first
            items = p | beam.Create(list(range(6)))
            total = items | beam.combiners.Count.Globally()
            out = items | beam.ParDo(LogProgress(every_s=10, clock=lambda: float(next(ticks))),
                                     total=beam.pvalue.AsSingleton(total))
            assert_that(out, equal_to(list(range(6))))  # a pass-through
    lines = [r.getMessage() for r in caplog.records if r.name == "finehard.progress"]
    assert lines and lines[-1].startswith("progress: 6/6 samples (100.0%)")


def test_throughput_when_the_run_recorded_its_wall_time(run_out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import shutil

    from shards.stats import build_stats

    out = tmp_path / "out"
    shutil.copytree(run_out, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_seconds"] > 0  # `finehard shards` times itself
    assert build_stats(str(out))["samples_per_second"] == round(summary["read"] / summary["wall_seconds"], 3)
    untimed = {k: v for k, v in summary.items() if k != "wall_seconds"}
    (out / "summary.json").write_text(json.dumps(untimed))
    assert build_stats(str(out))["samples_per_second"] is None  # no timing data: no made-up rate
    (out / "summary.json").write_text(json.dumps({**summary, "wall_seconds": 6.5}))
    report = build_stats(str(out))
    assert report["wall_seconds"] == 6.5 and report["samples_per_second"] == round(13 / 6.5, 3)


def test_per_stage_throughput_comes_from_the_runners_metrics(run_out: pathlib.Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from shards.stats import build_stats

    stages = build_stats(str(run_out))["stages"]
    assert list(stages) == ["recaption", "expressions", "detect", "negatives"]  # the chain's order
    for name, m in stages.items():
        # 13 read, 1 dead-lettered while reading: 12 reach every model stage.
        # full batches from the first: --batch-size 8 -> 2 batches of the 12; negatives take 16 and spaCy 64 -> 1
        assert m["samples"] == 12 and m["batches"] == {"expressions": 1, "negatives": 1}.get(name, 2), (name, m)
        assert m["model_seconds"] > 0 and m["samples_per_model_second"] == round(12 / m["model_seconds"], 1)
    assert stats_main([str(run_out), "--write"]) == 0
    text = capsys.readouterr().out
    positions = [text.index(f"stage {name}") for name in stages]
    assert positions == sorted(positions)
    assert json.loads((run_out / "stats_report.json").read_text())["stages"] == stages
    assert json.loads((run_out / "summary.json").read_text())["stage_metrics"] == stages
