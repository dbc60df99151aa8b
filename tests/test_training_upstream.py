"""Upstream FG-CLIP (360CVGroup/FG-CLIP v1.0) equivalence and interchange.

Features against a reference of upstream's maths (tests/upstream_reference.py) on the same random
weights; checkpoints in upstream's layout in and out of ``finehard train`` and ``finehard convert``;
FG-OVD lines in the format of upstream's ``data/fgovd/*.jsonl``.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

import upstream_reference as ref
from pipeline.cli import main as finehard
from training.model import extend_positions, tiny_clip_config
from training.weights import load_fgclip, read_weights
from training.tokenizer import SimpleWordTokenizer
from training_fixtures import IMAGE_SIZE, UPSTREAM_TEMPS, make_shards, write_upstream_checkpoint

ORI = "text_model.embeddings.position_embedding_ori.weight"
RES = "text_model.embeddings.position_embedding_res.weight"
CONFIG = tiny_clip_config()
EOS = CONFIG.text_config.eos_token_id


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("upstream") / "fg-clip-tiny")
    return path, write_upstream_checkpoint(path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("shards")), n=8, per_shard=8)


def _long_texts():
    """Three long-path texts (5, 130 and 248 tokens) padded to 248 with EOS as upstream's tokenizer does."""
    torch.manual_seed(0)
    ids = torch.randint(1, 4000, (3, 248))
    mask = torch.zeros_like(ids)
    for i, n in enumerate((5, 130, 248)):
        ids[i, n - 1:] = EOS
        mask[i, :n] = 1
    return ids, mask


def test_features_equal_upstream_reference(upstream):
    path, sd = upstream
    m = load_fgclip(path).eval()
    ids, mask = _long_texts()
    short_ids, short_mask = ids[:, :77].clone(), mask[:, :77].clone()
    short_ids[:, 76] = EOS
    pix = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    boxes = [[0, 0.1, 0.2, 0.6, 0.9], [1, 0.0, 0.0, 1.0, 1.0], [1, 0.3, 0.3, 0.4, 0.5], [0, 0.5, 0.5, 0.75, 0.75]]
    with torch.no_grad():
        long = m.encode_text(ids * mask, mask, long=True)  # ours: padding trimmed, pooled at the last real token
        short = m.encode_text(short_ids * short_mask, short_mask)
        glob, dense = m.encode_image(pix, dense=True)
        regions = m.region_features(dense, torch.tensor(boxes))
    ref_glob, ref_dense = ref.image_features(sd, CONFIG, pix)
    assert torch.allclose(long, ref.text_features(sd, CONFIG, ids, EOS, long=True), atol=1e-5)
    assert torch.allclose(short, ref.text_features(sd, CONFIG, short_ids, EOS, long=False), atol=1e-5)
    assert torch.allclose(glob, ref_glob, atol=1e-5)
    assert torch.allclose(dense, ref_dense, atol=1e-5)
    assert torch.allclose(regions, ref.region_features(ref_dense, boxes), atol=1e-5)


def test_upstream_checkpoint_is_continued_not_rebuilt(upstream):
    path, sd = upstream
    m = load_fgclip(path)
    assert m.source_layout == "upstream"
    assert torch.equal(m.long_position_embedding[:20], sd[ORI][:20])  # upstream reads rows < 20 from ori
    assert torch.equal(m.long_position_embedding[20:], sd[RES][20:])  # and the rest from res
    rebuilt = extend_positions(sd["text_model.embeddings.position_embedding.weight"], 20)
    assert (m.long_position_embedding - rebuilt).abs().max() > 0.01
    assert torch.equal(m.long_text_projection.weight, sd["text_filip_projection.weight"])
    assert not torch.equal(m.long_text_projection.weight, m.clip.text_projection.weight)
    assert m.clip.logit_scale.item() == pytest.approx(UPSTREAM_TEMPS["logit_scale"])
    assert m.regional_logit_scale.item() == pytest.approx(UPSTREAM_TEMPS["logit_scale_finegraind"])
    assert m.hard_logit_scale.item() == pytest.approx(UPSTREAM_TEMPS["logit_scale_hardneg"])


def test_incomplete_upstream_checkpoint_is_refused_not_rebuilt(tmp_path, upstream):
    from safetensors.torch import save_file

    path, sd = upstream
    broken = tmp_path / "broken"
    broken.mkdir()
    save_file({k: v for k, v in sd.items() if k != RES}, str(broken / "model.safetensors"), metadata={"format": "pt"})
    (broken / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    with pytest.raises(ValueError, match="position_embedding_res"):
        load_fgclip(str(broken))


def _train(model, shards, out, *extra):
    return finehard(["train", "--stage", "2", "--model", model, "--shards", shards, "--output", out, "--steps", "1",
                     "--batch-size", "4", "--image-size", str(IMAGE_SIZE), "--workers", "0", "--warmup-steps", "0",
                     "--log-every", "1", "--shuffle-buffer", "0", "--log-level", "WARNING", *extra])


def test_upstream_checkpoint_trains_one_step_and_saves_upstream_layout(tmp_path, upstream, shards):
    path, sd = upstream
    out = str(tmp_path / "run")
    assert _train(path, shards, out, "--lr", "1e-4") == 0
    final = os.path.join(out, "final")
    saved = read_weights(final)
    assert set(saved) == ref.expected_upstream_keys(CONFIG)  # what upstream's FGCLIPModel holds, nothing missing
    long = torch.cat([saved[ORI][:20], saved[RES][20:]])
    loaded = torch.cat([sd[ORI][:20], sd[RES][20:]])
    moved = (long - loaded).abs()
    assert moved.max() < 1e-3 and moved.max() > 0  # one small step from the checkpoint's table ...
    rebuilt = extend_positions(sd["text_model.embeddings.position_embedding.weight"], 20)
    assert (long - rebuilt).abs().max() > 0.01  # ... not a table rebuilt from the 77 positions
    assert (saved["text_filip_projection.weight"] - sd["text_filip_projection.weight"]).abs().max() < 1e-3
    for key in ("logit_scale", "logit_scale_finegraind", "logit_scale_hardneg"):
        assert saved[key].item() == pytest.approx(UPSTREAM_TEMPS[key], abs=1e-3), key
    # the saved long-text features are upstream's formula on the saved tensors
    ids, mask = _long_texts()
    with torch.no_grad():
        ours = load_fgclip(final).eval().encode_text(ids * mask, mask, long=True)
    assert torch.allclose(ours, ref.text_features(saved, CONFIG, ids, EOS, long=True), atol=1e-5)
    clip, info = CLIPModel.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == {ORI, RES, "text_filip_projection.weight",
                                                                         "logit_scale_finegraind", "logit_scale_hardneg"}


def test_reset_temperatures_starts_them_from_logit_scale_as_upstream(tmp_path, upstream, shards):
    path, _ = upstream
    out = str(tmp_path / "run")
    assert _train(path, shards, out, "--lr", "0", "--reset-temperatures") == 0
    saved = read_weights(os.path.join(out, "final"), ["logit_scale", "logit_scale_finegraind", "logit_scale_hardneg"])
    assert saved["logit_scale_finegraind"].item() == saved["logit_scale_hardneg"].item() == pytest.approx(4.6052)


def test_convert_both_ways_keeps_every_tensor(tmp_path, upstream, capsys):
    path, sd = upstream
    proj, back = str(tmp_path / "project"), str(tmp_path / "back")
    assert finehard(["convert", path, proj]) == 0  # upstream -> project by default
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["to"] == "project"
    assert os.path.isfile(os.path.join(proj, "fgclip_extras.safetensors"))
    _, info = CLIPModel.from_pretrained(proj, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert finehard(["convert", proj, back, "--to", "upstream"]) == 0
    again = read_weights(back)
    assert set(again) == set(sd)
    for k, v in sd.items():
        if k == ORI:
            assert torch.equal(again[k][:20], v[:20])
        elif k == RES:
            assert torch.equal(again[k][20:], v[20:])
        else:
            assert torch.equal(again[k], v), k


def test_convert_keeps_dtype_and_builds_the_long_path_of_a_plain_clip(tmp_path, capsys):
    half = str(tmp_path / "bf16")
    sd = write_upstream_checkpoint(half, dtype=torch.bfloat16)
    assert finehard(["convert", half, str(tmp_path / "p")]) == 0
    assert read_weights(str(tmp_path / "p"), ["visual_projection.weight"])["visual_projection.weight"].dtype == torch.bfloat16
    assert finehard(["convert", str(tmp_path / "p"), str(tmp_path / "u"), "--to", "upstream"]) == 0
    back = read_weights(str(tmp_path / "u"))
    assert torch.equal(back["text_filip_projection.weight"], sd["text_filip_projection.weight"])
    torch.manual_seed(3)
    clip = CLIPModel(CONFIG)
    clip.save_pretrained(str(tmp_path / "openai-like"))
    assert finehard(["convert", str(tmp_path / "openai-like"), str(tmp_path / "up")]) == 0
    up = read_weights(str(tmp_path / "up"))
    table = extend_positions(clip.text_model.embeddings.position_embedding.weight.detach(), 20)
    assert torch.allclose(up[ORI], table) and torch.allclose(up[RES], table)  # upstream's --from_openai resize
    assert torch.equal(up["text_filip_projection.weight"], clip.text_projection.weight)
    assert up["logit_scale_finegraind"].item() == up["logit_scale_hardneg"].item() == clip.logit_scale.item()
    capsys.readouterr()
    assert finehard(["convert", half, half]) == 2
    assert "differ" in capsys.readouterr().err


# --- FG-OVD in upstream's format ----------------------------------------------------------------

def _upstream_fgovd(root, n_images=2):
    """A few lines shaped like upstream's data/fgovd/*.jsonl, with COCO-style relative image paths."""
    from core.synthetic import make_scene

    os.makedirs(os.path.join(root, "coco", "val2017"), exist_ok=True)
    lines = []
    for i in range(n_images):
        img, scene = make_scene(i, 11)
        rel = f"val2017/{i:012d}.jpg"
        img.save(os.path.join(root, "coco", rel))
        for j, o in enumerate(scene["objects"]):
            x1, y1, x2, y2 = o["box"]
            lines.append({"img_path": rel, "bbox": [x1, y1, x2 - x1, y2 - y1], "pos_expression": [o["expr"]],
                          "neg_expression": [f"a {c} {o['shape']}" for c in ("red", "blue", "green")],
                          "category_id": 0, "neg_category_ids": [1, 2, 3], "width": scene["width"],
                          "height": scene["height"], "image_id": i, "sent_id": len(lines), "test_type": "1_attributes"})
    path = os.path.join(root, "h_attributes_llava.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
    return path, lines


def _reference_fgovd_top1(sd, path, images, lines):
    """Upstream fgovd_eval.py's decision per line, on the reference maths: index 0 must score highest."""
    tok = SimpleWordTokenizer()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    right = 0
    for line in lines:
        img = Image.open(os.path.join(images, line["img_path"])).convert("RGB")
        w, h = img.size
        x = torch.from_numpy(np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float32))
        pix = ((x.permute(2, 0, 1) / 255 - mean) / std)[None]
        _, grid = ref.image_features(sd, CONFIG, pix)
        bx, by, bw, bh = line["bbox"]
        feat = ref.region_features(grid, [[0, bx / w, by / h, (bx + bw) / w, (by + bh) / h]])
        texts = line["pos_expression"] + line["neg_expression"]
        ids = tok(texts, padding="max_length", max_length=77)["input_ids"]
        scores = feat @ ref.text_features(sd, CONFIG, ids, EOS, long=False).t()
        right += int(scores.argmax().item() == 0)
    return right / len(lines)


def test_fgovd_upstream_format_parses_and_scores_as_upstream(tmp_path, upstream, capsys):
    from training.evaluate import load_fgovd

    path, sd = upstream
    fgovd, lines = _upstream_fgovd(str(tmp_path))
    images = str(tmp_path / "coco")
    entries, skipped = load_fgovd(fgovd, IMAGE_SIZE, images)
    assert skipped == 0 and len(entries) == 2 and sum(len(e["boxes"]) for e in entries) == len(lines)
    flat = [(b, c) for e in entries for b, c in zip(e["boxes"], e["candidates"])]
    for (box, cands), line in zip(flat, lines):
        x, y, bw, bh = line["bbox"]
        assert box == pytest.approx([x / line["width"], y / line["height"], (x + bw) / line["width"],
                                     (y + bh) / line["height"]])
        assert cands == line["pos_expression"] + line["neg_expression"]
    with pytest.raises(FileNotFoundError, match="--images"):
        load_fgovd(fgovd, IMAGE_SIZE)  # img_path is relative to the COCO root, not to the jsonl
    capsys.readouterr()
    assert finehard(["eval", "--model", path, "--fgovd", fgovd, "--images", images]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fgovd_boxes"] == len(lines)
    expected = _reference_fgovd_top1(sd, fgovd, images, lines)
    assert 0 < expected < 1  # the lines are not all right or all wrong, so the comparison means something
    assert res["fgovd_top1"] == pytest.approx(expected)
