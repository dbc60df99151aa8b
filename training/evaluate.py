"""Evaluation: FG-OVD-style region accuracy (RoIAlign features vs positive + negatives) and image-text R@1."""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from training.data import iterate_examples, short_text
from training.model import FGCLIP
from training.tokenizer import tokenize


def image_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """uint8 (3,S,S) tensor of ``image`` resized without crop (the model normalises it)."""
    image = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


@torch.no_grad()
def encode_texts(model: FGCLIP, tokenizer: Any, texts: Sequence[str], device: torch.device | str, long: bool = False,
                 max_len: int | None = None, batch_size: int = 256) -> torch.Tensor:
    """Normalised features of ``texts`` on the short (77) or long (248) path."""
    max_len = max_len or (model.long_len if long else model.short_len)
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, texts[i:i + batch_size], max_len)
        out.append(model.encode_text(ids.to(device), mask.to(device), long=long).float())
    return torch.cat(out) if out else torch.zeros(0, model.clip.config.projection_dim, device=device)


@torch.no_grad()
def region_accuracy(model: FGCLIP, tokenizer: Any, entries: Iterable[dict[str, Any]], device: torch.device | str,
                    batch_images: int = 32) -> float:
    """Top-1 accuracy: each box's RoIAlign feature must score its ``labels[j]`` candidate highest.

    ``entries``: dicts with ``pixel_values`` (3,S,S), ``boxes`` (normalised xyxy list), ``candidates``
    (one list of texts per box) and ``labels`` (index of the right text per box).
    """
    model.eval()
    cache: dict[str, torch.Tensor] = {}
    correct = total = 0
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal correct, total
        pix = torch.stack([e["pixel_values"] for e in chunk]).to(device)
        rows = [[i] + list(map(float, b)) for i, e in enumerate(chunk) for b in e["boxes"]]
        if not rows:
            return
        _, dense = model.encode_image(pix, dense=True)
        feats = model.region_features(dense, torch.tensor(rows, dtype=torch.float32)).float()
        cands = [c for e in chunk for c in e["candidates"]]
        labels = [lab for e in chunk for lab in e["labels"]]
        missing = sorted({t for c in cands for t in c if t not in cache})
        if missing:
            for t, f in zip(missing, encode_texts(model, tokenizer, missing, device)):
                cache[t] = f
        for f, c, lab in zip(feats, cands, labels):
            scores = torch.stack([cache[t] for t in c]) @ f
            correct += int(int(scores.argmax()) == lab)
            total += 1

    for e in entries:
        chunk.append(e)
        if len(chunk) == batch_images:
            flush()
            chunk = []
    if chunk:
        flush()
    return correct / total if total else float("nan")


def fgovd_candidates(rec: dict[str, Any]) -> list[str]:
    """Texts of one FG-OVD line, the right one first: ``pos_expression`` then ``neg_expression``.

    Upstream's files (``data/fgovd/*.jsonl``) hold both as lists (``pos_expression`` has one text) and
    its ``fgovd_eval.py`` counts a box right when index 0 scores highest; a plain string is accepted too.
    """
    pos, neg = rec["pos_expression"], rec["neg_expression"]
    pos = [pos] if isinstance(pos, str) else [str(t) for t in pos]
    neg = [neg] if isinstance(neg, str) else [str(t) for t in neg]
    if not pos or not neg:
        raise ValueError("FG-OVD line needs a pos_expression and at least one neg_expression")
    return pos + neg


def resolve_image(img_path: str, root: str) -> str:
    """``img_path`` as is when absolute, else joined to ``root`` (upstream: --image-folder + img_path)."""
    path = img_path if os.path.isabs(img_path) else os.path.join(root, img_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FG-OVD image {path!r} not found; pass --images the folder img_path is relative to "
                                "(the COCO root for upstream's files)")
    return path


def load_fgovd(path: str, image_size: int, images: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """FG-OVD jsonl -> (entries for :func:`region_accuracy`, number of lines skipped for an empty box).

    Lines: ``img_path`` (absolute, or relative to ``images``; default the jsonl's folder), ``bbox`` in
    pixels ``[x, y, w, h]`` of the image file, ``pos_expression`` and ``neg_expression`` (see
    :func:`fgovd_candidates`). Lines of the same image share one entry (decoded once).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FG-OVD file {path!r} not found; pass --fgovd a jsonl with img_path/bbox/pos_expression/neg_expression")
    root = images if images is not None else os.path.dirname(os.path.abspath(path))
    entries: dict[str, dict[str, Any]] = {}
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            candidates = fgovd_candidates(rec)
            img_path = resolve_image(str(rec["img_path"]), root)
            if img_path not in entries:
                with Image.open(img_path) as im:
                    w, h = im.size
                    entries[img_path] = {"pixel_values": image_tensor(im, image_size), "size": (w, h), "boxes": [],
                                         "candidates": [], "labels": []}
            e = entries[img_path]
            w, h = e["size"]
            x, y, bw, bh = map(float, rec["bbox"][:4])
            box = [max(0.0, x / w), max(0.0, y / h), min(1.0, (x + bw) / w), min(1.0, (y + bh) / h)]
            if box[2] <= box[0] or box[3] <= box[1]:
                skipped += 1
                continue
            e["boxes"].append(box)
            e["candidates"].append(candidates)
            e["labels"].append(0)
    return [e for e in entries.values() if e["boxes"]], skipped


@torch.no_grad()
def retrieval_r1(model: FGCLIP, tokenizer: Any, examples: Sequence[dict[str, Any]], device: torch.device | str,
                 batch_size: int = 64) -> dict[str, float]:
    """Image->text and text->image R@1 with long and with short captions (short: as trained, with the prefix)."""
    model.eval()
    imgs = []
    for i in range(0, len(examples), batch_size):
        pix = torch.stack([e["pixel_values"] for e in examples[i:i + batch_size]]).to(device)
        imgs.append(model.encode_image(pix)[0].float())
    img = torch.cat(imgs)
    target = torch.arange(len(examples), device=img.device)
    out = {}
    for name, long, texts in (("long", True, [e["caption"] for e in examples]),
                              ("short", False, [short_text(e["short_caption"], e["caption"]) for e in examples])):
        txt = encode_texts(model, tokenizer, texts, device, long=long)
        sim = img @ txt.t()
        out[f"i2t_r1_{name}"] = float((sim.argmax(1) == target).float().mean())
        out[f"t2i_r1_{name}"] = float((sim.argmax(0) == target).float().mean())
    return out


def shard_examples(shards: str, image_size: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Held-out examples from shards (in order, at most ``limit``)."""
    out = []
    for e in iterate_examples(shards, image_size):
        out.append(e)
        if limit and len(out) >= limit:
            break
    return out


def hard_negative_entries(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Region entries (positive + 10 negatives) from examples whose regions carry hard negatives."""
    out = []
    for e in examples:
        regs = [r for r in e["regions"] if r["negs"]]
        if regs:
            out.append({"pixel_values": e["pixel_values"], "boxes": [r["box"] for r in regs],
                        "candidates": [[r["short"]] + r["negs"] for r in regs], "labels": [0] * len(regs)})
    return out
