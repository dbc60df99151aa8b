"""YOLO-World engine wiring: random-init yolov8s-worldv2 from its yaml, text features set directly, offline.

Random weights give near-zero scores, so these tests lower ``min_conf`` to 0 to get raw detections
and assert their structure, the mapping back to original pixels and per-image expression indices,
and that a batched call equals one call per image. The "text encoder" is a deterministic stand-in
(hashed random unit vectors of CLIP's 512 dims); a random-init Hugging Face CLIP text model saved
to disk checks the real local-path loader.
"""
from __future__ import annotations

import hashlib
import io
import json
import pathlib
import string

import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from core.engines import EngineSpec  # noqa: E402
from stages.detect import DETECTORS, apply_detector
from stages.engines.yolo_world import NO_TEXT_ENCODER, YoloWorldDetector, undo_pil_patch


class HashTextEncoder:
    """Stand-in for CLIP's text tower: a fixed random unit vector per text (seeded by its hash)."""

    dim = 512
    name = "hash-test-encoder"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> "torch.Tensor":
        self.calls.append(list(texts))
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            v = torch.randn(self.dim, generator=g)
            rows.append(v / v.norm())
        return torch.stack(rows)


@pytest.fixture(scope="module")
def world_weights(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from ultralytics import YOLOWorld

    undo_pil_patch()  # as the engine does (test_loading_the_detector_leaves_pillow_telling_non_images)
    torch.manual_seed(0)
    model = YOLOWorld("yolov8s-worldv2.yaml")
    path = tmp_path_factory.mktemp("yw") / "yolov8s-worldv2-random.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def detector(world_weights: pathlib.Path) -> YoloWorldDetector:
    return YoloWorldDetector(EngineSpec("yolo-world", str(world_weights)), text_encoder=HashTextEncoder(),
                             min_conf=0.0, imgsz=320, max_det=20)


def images() -> list[Image.Image]:
    a = Image.new("RGB", (200, 100), (200, 30, 30))
    a.paste((20, 20, 220), (120, 20, 180, 80))
    return [a, Image.new("RGB", (90, 160), (30, 180, 40))]


def test_a_batch_gives_boxes_in_original_pixels_for_each_images_own_expressions(detector: YoloWorldDetector) -> None:
    ims = images()
    exprs = [["a red wall", "a blue square"], ["a green field"]]
    out = detector.detect(ims, exprs)
    assert len(out) == 2
    for im, dets, ex in zip(ims, out, exprs):
        assert 0 < len(dets) <= 20
        for (x1, y1, x2, y2), score, idx in dets:
            assert 0 <= idx < len(ex)  # never a padded class of another image
            assert 0 <= x1 <= x2 <= im.width and 0 <= y1 <= y2 <= im.height
            assert 0.0 <= score <= 1.0
    assert detector.model.set_classes.__name__ == "_refuse_set_classes"


def test_batched_call_equals_one_call_per_image(detector: YoloWorldDetector) -> None:
    ims = images()
    exprs = [["a red wall", "a blue square", "a tree"], ["a green field"]]
    batched = detector.detect(ims, exprs)
    single = [detector.detect([im], [ex])[0] for im, ex in zip(ims, exprs)]
    for b, s in zip(batched, single):
        assert [i for _, _, i in b] == [i for _, _, i in s]
        assert torch.allclose(torch.tensor([list(x) + [sc] for x, sc, _ in b]),
                              torch.tensor([list(x) + [sc] for x, sc, _ in s]), atol=1e-3)


def test_text_features_are_cached_per_expression(world_weights: pathlib.Path) -> None:
    enc = HashTextEncoder()
    det = YoloWorldDetector(EngineSpec("yolo-world", str(world_weights)), text_encoder=enc, imgsz=160)
    ims = images()
    det.detect(ims, [["a dog", "a cat"], ["a dog"]])
    det.detect(ims, [["a cat"], ["a dog", "a bird"]])
    assert enc.calls == [["a dog", "a cat"], ["a bird"]]


def test_an_image_without_expressions_gets_no_boxes_and_random_weights_find_nothing_at_default_conf(
        world_weights: pathlib.Path) -> None:
    det = YoloWorldDetector(EngineSpec("yolo-world", str(world_weights)), text_encoder=HashTextEncoder(), imgsz=160)
    assert det.detect(images(), [[], ["a green field"]]) == [[], []]


def test_without_a_text_encoder_it_fails_fast_saying_what_to_pass(world_weights: pathlib.Path) -> None:
    with pytest.raises(ValueError) as e:
        YoloWorldDetector(EngineSpec("yolo-world", str(world_weights)))
    assert str(e.value) == NO_TEXT_ENCODER
    assert "#text=" in NO_TEXT_ENCODER and "--detector-text-encoder" in NO_TEXT_ENCODER


def _tiny_clip_text_model(folder: pathlib.Path, projection_dim: int = 512) -> pathlib.Path:
    """A random-init CLIP text tower and a letters-only CLIP tokenizer, saved like a hub folder."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=projection_dim,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    out = folder / "clip"
    CLIPTextModelWithProjection(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_local_hf_clip_text_model_path_is_the_text_encoder_via_the_registry(
        world_weights: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ultralytics.nn.tasks import WorldModel

    def no_download(*_: object, **__: object) -> None:
        raise AssertionError("ultralytics' CLIP text model must never be built")
    monkeypatch.setattr(WorldModel, "get_text_pe", no_download)
    clip = _tiny_clip_text_model(tmp_path)
    spec = DETECTORS.resolve(f"yolo-world:{world_weights}?imgsz=160&min_conf=0#text={clip}")
    det = DETECTORS.build(spec)
    assert det.provenance["text_encoder"] == str(clip) and det.provenance["stub"] is False
    out = det.detect(images(), [["a red wall"], ["a green field", "grass"]])
    assert all(0 <= i < n for dets, n in zip(out, (1, 2)) for _, _, i in dets) and all(out)


def test_a_text_encoder_of_the_wrong_width_is_refused(world_weights: pathlib.Path, tmp_path: pathlib.Path) -> None:
    clip = _tiny_clip_text_model(tmp_path, projection_dim=64)
    with pytest.raises(ValueError, match="64-d features"):
        YoloWorldDetector(EngineSpec("yolo-world", str(world_weights)), text_encoder=str(clip))


def test_apply_detector_turns_engine_output_into_regions(detector: YoloWorldDetector) -> None:
    buf = io.BytesIO()
    images()[0].save(buf, format="PNG")
    rec = {"key": "k", "image_bytes": buf.getvalue(), "width": 200, "height": 100,
           "_expressions": [{"short_expr": "a red wall", "long_expr": "a red wall behind"},
                            {"short_expr": "a blue square", "long_expr": "a blue square on the right"}]}
    [out] = apply_detector(detector, [rec], conf=0.0, iou=0.5, max_regions=3)
    assert "_dead" not in out and 1 <= len(out["bbox_info"]) <= 3
    for r in out["bbox_info"]:
        assert len(r["bbox"]) == 5 and all(0.0 <= v <= 1.0 for v in r["bbox"])
        assert r["short_expr"] in ("a red wall", "a blue square")
    assert out["provenance"]["bbox_info"]["engine"] == "yolo-world"


def test_the_shards_command_runs_with_the_yolo_world_spec(world_weights: pathlib.Path, scenes_dir: pathlib.Path,
                                                         tmp_path: pathlib.Path) -> None:
    """End to end through Beam's shared-model path (a GPU engine's model lives in one process per machine)."""
    import tarfile

    from conftest import run_pipeline

    clip = _tiny_clip_text_model(tmp_path)
    summary = run_pipeline(scenes_dir / "manifest.jsonl", tmp_path / "out",
                           "--detector", f"yolo-world:{world_weights}?imgsz=160#text={clip}")
    assert summary["read"] == summary["written"] == 12 and summary["dead_lettered"] == 0
    assert summary["regions"] == 0  # random weights: nothing reaches confidence 0.4
    with tarfile.open(next((tmp_path / "out").glob("*.tar"))) as t:
        rec = json.loads(t.extractfile(next(m for m in t.getmembers() if m.name.endswith(".json"))).read())
    assert rec["provenance"]["bbox_info"]["engine"] == "yolo-world" and rec["provenance"]["bbox_info"]["conf"] == 0.4


def test_weights_on_an_fsspec_uri_are_fetched_to_a_local_file(world_weights: pathlib.Path) -> None:
    import fsspec

    with fsspec.open("memory://finehard-test/yolo-world-random.pt", "wb") as f:
        f.write(world_weights.read_bytes())
    det = YoloWorldDetector(EngineSpec("yolo-world", "memory://finehard-test/yolo-world-random.pt"),
                            text_encoder=HashTextEncoder(), imgsz=160, min_conf=0.0)
    assert det.provenance["model"] == "memory://finehard-test/yolo-world-random.pt"
    assert all(det.detect(images(), [["a red wall"], ["a green field"]]))


def test_validate_checks_a_spec_at_launch_without_loading_anything(world_weights: pathlib.Path,
                                                                   tmp_path: pathlib.Path) -> None:
    from stages.engines.yolo_world import validate

    with pytest.raises(ValueError, match="CLIP text encoder"):
        validate(DETECTORS.resolve(f"yolo-world:{world_weights}"))
    with pytest.raises(ValueError, match="no YOLO-World weights file"):
        validate(DETECTORS.resolve(f"yolo-world:{tmp_path}/missing.pt#text={tmp_path}"))
    with pytest.raises(ValueError, match="no CLIP text model folder"):
        validate(DETECTORS.resolve(f"yolo-world:{world_weights}"), text_encoder=str(tmp_path / "nope"))
    validate(DETECTORS.resolve(f"yolo-world:{world_weights}"), text_encoder=str(tmp_path))  # flag form
    validate(DETECTORS.resolve(f"yolo-world:{world_weights}#text={tmp_path}"))  # spec form


def test_loading_the_detector_leaves_pillow_telling_non_images(world_weights: pathlib.Path) -> None:
    """ultralytics patches PIL.Image.open to pip-install pi-heif on the first non-image and then raise
    ModuleNotFoundError; after the engine loads, a text file is still an UnidentifiedImageError (the
    readers filter it as unsupported_format) and nothing is installed."""
    import ultralytics.utils.checks as checks
    from ultralytics.utils import patches

    Image.open = patches.image_open  # as importing ultralytics leaves it
    patches._pil_plugins_registered = False
    YoloWorldDetector(EngineSpec("yolo-world", str(world_weights)), text_encoder=HashTextEncoder(), imgsz=160)
    installs: list[object] = []
    saved = checks.check_requirements
    checks.check_requirements = lambda *a, **k: installs.append(a)
    try:
        with pytest.raises(Image.UnidentifiedImageError):
            Image.open(io.BytesIO(b"not a caption: no image is called notes"))
    finally:
        checks.check_requirements = saved
    assert installs == []
