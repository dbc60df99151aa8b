"""Shard loading: batch layout, stage-1 shards, broken samples, URI forms, tokenizers."""
import io
import json
import os

import pytest
import torch
import webdataset as wds
from PIL import Image

from training.data import Collate, expand_shards, iterate_examples, make_loader, short_text
from training.synthetic_shards import attribute_negatives, write_synthetic_shards
from training.tokenizer import SimpleWordTokenizer, load_tokenizer
from training_fixtures import IMAGE_SIZE, make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("shards")), n=24, per_shard=8)


def test_batch_layout_and_region_cap(shards):
    batch = next(iter(make_loader(shards, SimpleWordTokenizer(), 6, IMAGE_SIZE, shuffle_buffer=0)))
    assert batch["pixel_values"].shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["boxes"].shape == (6, 4, 4) and batch["box_valid"].shape == (6, 4)
    n = int(batch["box_valid"].sum())
    assert batch["region_boxes"].shape == (n, 5) and batch["region_text_index"].shape == (n,)
    assert torch.equal(batch["boxes"][batch["box_valid"]], batch["region_boxes"][:, 1:])
    assert batch["hard_text_index"].shape == (batch["hard_index"].shape[0], 11)
    u = batch["expr_ids"].shape[0]  # distinct texts, each tokenised once
    assert u <= n + 11 * batch["hard_index"].shape[0] and int(batch["hard_text_index"].max()) < u
    b = batch["region_boxes"][:, 1:]
    assert bool(((b >= 0) & (b <= 1)).all()) and bool((b[:, 2] > b[:, 0]).all())


def test_hard_texts_are_positive_then_ten_attribute_swaps(shards):
    ex = next(iter_examples_with_regions(shards))
    reg = ex["regions"][0]
    assert len(reg["negs"]) == 10 and reg["short"] not in reg["negs"]
    shape = reg["short"].split()[-1]
    assert all(n.split()[-1] == shape for n in reg["negs"])


def iter_examples_with_regions(shards):
    return (e for e in iterate_examples(shards, IMAGE_SIZE) if e["regions"])


def test_more_than_four_regions_are_capped(tmp_path):
    neg = {str(i): f"a thing {i}" for i in range(10)}
    regions = [{"bbox": [0.1 * i, 0.1, 0.1 * i + 0.05, 0.2, 0.9], "short_expr": f"thing {i}", "long_expr": "x",
                "flag_short_neg": 1, "short_expr_negs": neg} for i in range(6)]
    _write_one(tmp_path / "s.tar", "k0", regions)
    ex = list(iterate_examples(str(tmp_path / "s.tar"), IMAGE_SIZE))
    assert len(ex[0]["regions"]) == 4


def _write_one(path, key, regions, image_ext="jpg", json_bytes=None, image_bytes=None):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG" if image_ext == "png" else "JPEG")
    rec = {"key": key, "f_path": "x", "caption": "a red picture", "short_caption": "", "width": 40, "height": 30,
           "provenance": {}}
    if regions is not None:
        rec["bbox_info"] = regions
    with wds.TarWriter(str(path)) as tw:
        tw.write({"__key__": key, image_ext: image_bytes if image_bytes is not None else buf.getvalue(),
                  "json": json_bytes if json_bytes is not None else json.dumps(rec).encode(),
                  "txt": b"a red picture"})


def test_stage1_shards_without_bbox_info_are_accepted(tmp_path):
    write_synthetic_shards(str(tmp_path), 6, per_shard=6, with_regions=False)
    batch = next(iter(make_loader(str(tmp_path), SimpleWordTokenizer(), 3, IMAGE_SIZE, shuffle_buffer=0)))
    assert batch["region_boxes"].shape == (0, 5) and batch["hard_index"].shape == (0,)
    assert not batch["box_valid"].any()
    _write_one(tmp_path / "empty.tar", "e0", [])
    assert list(iterate_examples(str(tmp_path / "empty.tar"), IMAGE_SIZE))[0]["regions"] == []


def test_png_images_and_empty_short_caption_fall_back(tmp_path):
    _write_one(tmp_path / "p.tar", "p0", None, image_ext="png")
    ex = list(iterate_examples(str(tmp_path / "p.tar"), IMAGE_SIZE))
    assert ex[0]["pixel_values"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    tok = SimpleWordTokenizer()
    batch = next(iter(make_loader(str(tmp_path / "p.tar"), tok, 1, IMAGE_SIZE, shuffle_buffer=0)))
    # short "" -> "a photo of " + the long caption on the short path
    assert torch.equal(batch["short_ids"], tok(["a photo of a red picture"])["input_ids"])


def test_short_caption_gets_upstreams_prefix(shards):
    tok = SimpleWordTokenizer()
    examples = [e for e, _ in zip(iterate_examples(shards, IMAGE_SIZE), range(3))]
    assert all(e["short_caption"] for e in examples)
    batch = Collate(tok, 248, 77, 4)(examples)
    expected = tok(["a photo of " + e["short_caption"] for e in examples], padding=True)["input_ids"]
    assert torch.equal(batch["short_ids"], expected)
    assert short_text("a cat", "a long caption") == "a photo of a cat"
    assert short_text("", "a long caption") == short_text("  ", "a long caption") == "a photo of a long caption"


def test_invalid_boxes_are_skipped_and_counted(tmp_path):
    neg = {str(i): f"a thing {i}" for i in range(10)}
    ok = {"bbox": [0.1, 0.1, 0.5, 0.5, 0.9], "short_expr": "a thing", "long_expr": "x", "flag_short_neg": 1,
          "short_expr_negs": neg}
    regions = [ok, dict(ok, bbox=[0.5, 0.1, 0.4, 0.5, 0.9]), dict(ok, bbox=[0.2, 0.3, 0.2, 0.6, 0.9]),
               dict(ok, short_expr="")]
    _write_one(tmp_path / "s.tar", "k0", regions)
    (ex,) = list(iterate_examples(str(tmp_path / "s.tar"), IMAGE_SIZE))
    assert len(ex["regions"]) == 1 and ex["skipped_regions"] == 3
    batch = Collate(SimpleWordTokenizer(), 248, 77, 4)([ex, ex])
    assert batch["skipped_regions"] == 6 and batch["region_boxes"].shape[0] == 2


def test_sample_count_from_pipeline_stats_or_tar_headers(tmp_path):
    from shards.markers import STATS_SUFFIX

    from training.data import SHARD_STATS_SUFFIX, count_samples, epoch_steps

    assert SHARD_STATS_SUFFIX == STATS_SUFFIX  # the pipeline's sidecar name
    paths = write_synthetic_shards(str(tmp_path), 10, per_shard=4)  # 4 + 4 + 2 samples
    assert count_samples(str(tmp_path)) == 10
    stats = paths[0][: -len(".tar")] + STATS_SUFFIX
    with open(stats, "w") as f:
        json.dump({"written": 3}, f)  # a sidecar wins over reading the tar
    assert count_samples(str(tmp_path)) == 9
    assert count_samples(f"pipe:cat {paths[1]}") == 4
    assert epoch_steps(10, 4) == 3 and epoch_steps(12, 4) == 3 and epoch_steps(12, 4, epochs=2) == 6


def test_broken_samples_are_skipped(tmp_path):
    good = tmp_path / "good.tar"
    _write_one(good, "g0", [])
    _write_one(tmp_path / "badimg.tar", "b0", [], image_bytes=b"not a jpeg")
    _write_one(tmp_path / "badjson.tar", "b1", [], json_bytes=b"{oops")
    (tmp_path / "trunc.tar").write_bytes(good.read_bytes()[:700])
    with pytest.warns(Warning):
        ex = list(iterate_examples(str(tmp_path), IMAGE_SIZE))
    assert [e["key"] for e in ex] == ["g0"]


def test_expand_shards_forms(tmp_path):
    write_synthetic_shards(str(tmp_path), 6, per_shard=2)
    names = sorted(os.listdir(tmp_path))
    assert expand_shards(str(tmp_path)) == [str(tmp_path / n) for n in names]
    assert expand_shards(str(tmp_path / "shard-00-*.tar")) == [str(tmp_path / n) for n in names]
    assert expand_shards(str(tmp_path / "shard-00-{000000..000001}.tar")) == [str(tmp_path / n) for n in names[:2]]
    assert expand_shards("file://" + str(tmp_path / "*.tar")) == ["file://" + str(tmp_path / n) for n in names]
    assert len(list(iterate_examples("file://" + str(tmp_path / "*.tar"), IMAGE_SIZE))) == 6
    with pytest.raises(FileNotFoundError, match="--shards"):
        expand_shards(str(tmp_path / "missing-*.tar"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_shards(str(tmp_path / "missing.tar"))


def test_endless_loader_cycles_small_shard_sets(shards):
    it = iter(make_loader(shards, SimpleWordTokenizer(), 10, IMAGE_SIZE, shuffle_buffer=4))
    assert [next(it)["pixel_values"].shape[0] for _ in range(5)] == [10] * 5  # 50 > 24 samples


def test_simple_tokenizer_layout_and_save(tmp_path):
    tok = SimpleWordTokenizer(4096)
    out = tok(["a red circle", "a big blue striped square"], padding=True, truncation=True, max_length=5)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 5) and ids[0, 0] == tok.bos_token_id
    assert ids[0, int(mask[0].sum()) - 1] == tok.eos_token_id and ids[1, 4] == tok.eos_token_id  # truncated
    tok.save_pretrained(str(tmp_path))
    assert isinstance(load_tokenizer(None, str(tmp_path)), SimpleWordTokenizer)


def test_real_clip_tokenizer_loads_from_local_path(tmp_path):
    from transformers import CLIPTokenizer
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):  # GPT-2 byte -> unicode table
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["re", "red</w>",
                                                                              "<|startoftext|>", "<|endoftext|>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(str(tmp_path / "tok"))
    tok = load_tokenizer(str(tmp_path / "tok"))
    out = tok(["red", "a red dog"], padding=True, truncation=True, max_length=77, return_tensors="pt")
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids[0, 1] == vocab["red</w>"]
    assert all(ids[i, int(mask[i].sum()) - 1] == vocab["<|endoftext|>"] for i in range(2))
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path / "nothing-here"))


def test_attribute_negatives_keep_shape_and_differ():
    import random

    obj = {"size": "small", "colour": "red", "pattern": "striped", "shape": "ring"}
    negs = attribute_negatives(obj, random.Random(0))
    assert len(set(negs)) == 10 and "a small red striped ring" not in negs
    assert all(n.endswith(" ring") for n in negs)


def test_pipe_urls_are_opened(tmp_path):
    write_synthetic_shards(str(tmp_path), 3, per_shard=3)
    (name,) = os.listdir(tmp_path)
    ex = list(iterate_examples(f"pipe:cat {tmp_path / name}", IMAGE_SIZE))
    assert len(ex) == 3


def test_negatives_follow_index_order_and_need_exactly_ten(tmp_path):
    negs = {str(i): f"neg {i}" for i in (3, 0, 9, 1, 2, 4, 5, 6, 7, 8)}
    regions = [{"bbox": [0.1, 0.1, 0.5, 0.5, 0.9], "short_expr": "a red thing", "long_expr": "a red thing here",
                "flag_short_neg": 1, "short_expr_negs": negs},
               {"bbox": [0.6, 0.6, 0.9, 0.9, 0.9], "short_expr": "a dog", "long_expr": "a dog",
                "flag_short_neg": 1, "short_expr_negs": {"0": "a cat"}},  # flag set but not 10: no hard term
               {"bbox": [0.6, 0.1, 0.9, 0.3, 0.9], "short_expr": "a cup", "long_expr": "a cup",
                "flag_short_neg": 0, "short_expr_negs": {}}]
    _write_one(tmp_path / "n.tar", "n0", regions)
    (ex,) = list(iterate_examples(str(tmp_path / "n.tar"), IMAGE_SIZE))
    assert ex["regions"][0]["negs"] == [f"neg {i}" for i in range(10)]
    assert ex["regions"][1]["negs"] == [] and ex["regions"][2]["negs"] == []


def test_loader_with_worker_processes(shards):
    loader = make_loader(shards, SimpleWordTokenizer(), 4, IMAGE_SIZE, shuffle_buffer=4, workers=1)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]
    assert all(b["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) for b in batches)
    assert batches[0]["pixel_values"].dtype == torch.uint8
