"""Recaption in a Beam TestPipeline: stub engine, and an engine that fails one sample."""
from __future__ import annotations

import io
import json
import pathlib
import tarfile
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from conftest import run_pipeline
from fake_openai_server import FakeOpenAIServer, completion
from core.engines import Captioner, EngineEntry, EngineSpec, stub_provenance
from core.record import SampleError
from stages.caption import CAPTIONERS
from transforms.recaption import Recaption


class PickyCaptioner(Captioner):
    """Captions every image except pure-red ones (a per-sample failure), with a configurable suffix."""

    def __init__(self, spec: EngineSpec, suffix: str = "", **_: Any):
        self.provenance = stub_provenance("picky-captioner", suffix=suffix)
        self.suffix = suffix

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        return [SampleError("refused", "red image") if im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
                else f"In this image, a {im.width}px wide picture{self.suffix}." for im in images]


def build_picky(spec: EngineSpec, **options: Any) -> PickyCaptioner:
    return PickyCaptioner(spec, **options)


def make_records() -> list[dict[str, Any]]:
    out = []
    for i, colour in enumerate(["blue", "red", "green"]):
        buf = io.BytesIO()
        Image.new("RGB", (20 + i, 10), colour).save(buf, format="PNG")
        out.append({"key": f"k{i}", "image_bytes": buf.getvalue(), "short_caption": f"alt {i}",
                    "width": 20 + i, "height": 10})
    return out


def summary(rec: dict[str, Any]) -> tuple:
    dead = rec.get("_dead")
    return (rec["key"], rec.get("caption"), rec["short_caption"], dead and (dead["stage"], dead["reason"]))


def test_recaption_with_the_stub_engine_captions_every_record() -> None:
    with BeamTestPipeline() as p:
        out = (p | beam.Create(make_records()) | Recaption(EngineSpec("stub"), batch_size=2)
               | beam.Map(lambda r: (r["key"], bool(r.get("caption")), r["provenance"]["caption"]["stub"],
                                     "_dead" in r)))
        assert_that(out, equal_to([(f"k{i}", True, True, False) for i in range(3)]))


def test_a_failing_sample_is_dead_lettered_with_its_reason_and_the_others_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CAPTIONERS.entries, "picky",
                        EngineEntry("test_recaption_pipeline:build_picky", False, False, "test engine"))
    spec = CAPTIONERS.resolve("picky")
    with BeamTestPipeline() as p:
        out = (p | beam.Create(make_records())
               | Recaption(spec, batch_size=3, engine_options={"suffix": " on a table"}) | beam.Map(summary))
        assert_that(out, equal_to([
            ("k0", "In this image, a 20px wide picture on a table.", "alt 0", None),
            ("k1", None, "alt 1", ("recaption", "refused")),
            ("k2", "In this image, a 22px wide picture on a table.", "alt 2", None),
        ]))


def test_the_shards_command_runs_with_the_openai_captioner_spec(scenes_dir: pathlib.Path,
                                                                 tmp_path: pathlib.Path) -> None:
    """End to end: ``--captioner openai:URL#MODEL`` against a fake server; captions land in the shards."""

    with FakeOpenAIServer(lambda req: (200, completion("The image shows a red circle above a blue square."))) as server:
        run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "out", "--samples-per-shard", "8",
                     "--captioner", f"openai:{server.url}?timeout=10#cogvlm2")
    assert len(server.requests) == 12
    captions = []
    for tar in sorted((tmp_path / "out").glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    rec = json.loads(t.extractfile(m).read())
                    captions.append((rec["caption"], rec["provenance"]["caption"]["engine"]))
    assert captions and set(captions) == {("A red circle above a blue square.", "openai")}


def test_only_in_process_gpu_captioners_carry_beams_accelerator_hint() -> None:
    hint = "type:nvidia-h100-80gb;count:1;install-nvidia-driver"

    def hints(spec: str) -> set[bytes]:
        p = beam.Pipeline()
        _ = p | beam.Create(make_records()) | Recaption(CAPTIONERS.resolve(spec), accelerator=hint)
        envs = p.to_runner_api().components.environments.values()
        return {v for env in envs for k, v in env.resource_hints.items() if "accelerator" in k}
    assert hints("vllm:/w/Qwen2-VL-7B-Instruct") == hints("transformers:/w/cogvlm2") == {hint.encode()}
    assert hints("openai:http://127.0.0.1:23333/v1#cogvlm2") == hints("stub") == set()
