"""The shards `finehard shards` emits are what `finehard train` consumes: stage 2 trains on them."""
from __future__ import annotations

import json
import pathlib

from conftest import run_pipeline
from training_fixtures import IMAGE_SIZE, write_model_config

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "sample"


def test_stage2_trains_on_pipeline_shards(tmp_path: pathlib.Path) -> None:
    from transformers import CLIPModel

    from pipeline.cli import main

    shards = tmp_path / "shards"
    summary = run_pipeline(SAMPLE / "manifest.jsonl", shards, "--samples-per-shard", "8")
    assert summary["written"] == 28
    out = tmp_path / "train"
    cfg = write_model_config(str(tmp_path / "tiny_clip.json"))
    code = main(["train", "--stage", "2", "--model-config", cfg, "--shards", str(shards), "--output", str(out),
                 "--steps", "2", "--batch-size", "4", "--image-size", str(IMAGE_SIZE), "--workers", "0",
                 "--warmup-steps", "1", "--log-every", "1", "--shuffle-buffer", "8"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # Pipeline shards carry regions with 10 negatives, so the hard and regional terms are live.
    assert all(r["hard"] > 0 and r["regional"] > 0 for r in rows), rows
    assert CLIPModel.from_pretrained(out / "final").config.vision_config.image_size == IMAGE_SIZE


def test_stage1_trains_on_stage1_shards(tmp_path: pathlib.Path) -> None:
    from pipeline.cli import main

    shards = tmp_path / "shards"
    summary = run_pipeline(SAMPLE / "manifest.jsonl", shards, "--samples-per-shard", "8", "--stages", "recaption")
    assert summary["written"] == 28 and summary["regions"] == 0
    out = tmp_path / "train"
    cfg = write_model_config(str(tmp_path / "tiny_clip.json"))
    assert main(["train", "--stage", "1", "--model-config", cfg, "--shards", str(shards), "--output", str(out),
                 "--steps", "2", "--batch-size", "4", "--image-size", str(IMAGE_SIZE), "--workers", "0",
                 "--warmup-steps", "1", "--log-every", "1", "--shuffle-buffer", "8"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
