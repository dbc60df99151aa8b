"""WebDataset loading of FineHARD shards into FG-CLIP batches.

Batch layout (``collate``): ``pixel_values`` (B,3,S,S) uint8 (the model normalises on its device); ``long_ids/long_mask``; ``short_ids/short_mask``
of ``"a photo of " + short_caption`` as upstream FG-CLIP builds it (an empty short caption is replaced
by the long caption, so the text is ``"a photo of " + caption`` truncated to the short length);
``boxes`` (B,R,4) normalised xyxy and ``box_valid`` (B,R) with R = max_regions (the first R regions
of a record are used); ``region_boxes`` (N,5) = batch index + box for the valid regions in row-major
order; ``expr_ids/expr_mask`` (U,L) the batch's distinct region texts, each tokenised once
(short path); ``region_text_index`` (N,) picks each region's text (short or long expression at random);
``hard_index`` (H,) indexes regions with ``flag_short_neg == 1`` and exactly 10 negatives and
``hard_text_index`` (H,11) picks [short_expr, neg0..neg9] from ``expr_ids``. Encoding each distinct
text once gives the same features as encoding every copy, for a fraction of the text-tower work.
``skipped_regions`` counts the regions dropped for a degenerate box or an empty expression.
"""
from __future__ import annotations

import functools
import glob as globlib
import logging
import json
import math
import os
import random
import tarfile
from typing import IO, Any, Iterable, Iterator, Sequence

import fsspec
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from core.files import local_path, member_name_problem, open_regular_local, unsafe_member_problem
from core.record import IMAGE_EXTS, NUM_NEGATIVES
from core.terminal import printable
from training.tokenizer import tokenize

log = logging.getLogger(__name__)
SHORT_PREFIX = "a photo of "  # upstream train_fgclip.py: caption_short = "a photo of " + short_caption
SHARD_STATS_SUFFIX = "_stats.json"  # the pipeline's per-shard sidecar (shard-00003_stats.json, "written")


def short_text(short_caption: str, caption: str) -> str:
    """The short-path text of a sample: the prefix plus the short caption, or the long caption when it is empty."""
    return SHORT_PREFIX + (short_caption if short_caption.strip() else caption)


def expand_shards(uri: str | Sequence[str]) -> list[str]:
    """Shard URLs from brace lists (``a-{000..009}.tar``), fsspec globs, folders, or ``::``/list joins."""
    parts = [uri] if isinstance(uri, str) else list(uri)
    urls: list[str] = []
    for part in parts:
        for u in wds.shardlists.expand_urls(part):
            if os.path.isdir(u):
                urls.extend(sorted(globlib.glob(os.path.join(u, "*.tar"))))
            elif any(c in u for c in "*?["):
                fs, _, paths = fsspec.get_fs_token_paths(u)
                proto = u.split("://", 1)[0] + "://" if "://" in u else ""
                urls.extend(sorted(p if not proto or p.startswith(proto) else proto + p for p in paths))
            elif "://" not in u and not u.startswith("pipe:") and not os.path.exists(u):
                raise FileNotFoundError(f"shard {u!r} does not exist; pass --shards an existing .tar, folder, glob or URI")
            else:
                urls.append(u)
    if not urls:
        raise FileNotFoundError(f"no shards match {uri!r}; pass --shards a .tar path, glob, folder or brace list")
    return urls


def safe_member(fname: str) -> bool:
    """Whether a shard member's name may be used (``core.files.member_name_problem``, the curation
    reader's rule: a shard from elsewhere is untrusted); an unsafe one is skipped and logged."""
    problem = member_name_problem(fname)
    if problem:
        log.warning("skipped shard member %s: %s", printable(repr(fname)), problem)
    return problem is None


def _open_shard(url: str) -> IO[bytes]:
    """A shard opened for reading: ``pipe:`` commands, a local regular file (a FIFO or a device is
    refused, as the curation reader refuses them), or any fsspec URI."""
    if url.startswith("pipe:"):
        return wds.gopen(url)
    path = local_path(url)
    return open_regular_local(path) if path is not None else fsspec.open(url, "rb").open()


def open_streams(data: Iterable[dict[str, Any]], handler=wds.warn_and_continue) -> Iterator[dict[str, Any]]:
    """Open each ``{"url": ...}`` with fsspec (local paths, any fsspec protocol) or ``pipe:`` commands."""
    for sample in data:
        url = sample["url"]
        try:
            stream = _open_shard(url)
            sample.update(stream=stream)
            yield sample
        except Exception as exn:  # noqa: BLE001 - the handler decides
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            break


class ShardCycle(wds.PipelineStage):
    """Shards in a seeded order that is reshuffled every epoch; ``epochs=None`` repeats forever."""

    def __init__(self, urls: list[str], seed: int = 0, shuffle: bool = True, epochs: int | None = None) -> None:
        self.urls, self.seed, self.shuffle, self.epochs = list(urls), seed, shuffle, epochs

    def run(self) -> Iterator[dict[str, str]]:
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            order = list(self.urls)
            if self.shuffle:
                random.Random(self.seed * 1000003 + epoch).shuffle(order)
            for u in order:
                yield {"url": u}
            epoch += 1


def index_samples(urls: Sequence[str]) -> list[tuple[int, str, tuple[tuple[str, int, int], ...]]]:
    """Every sample of ``urls`` as ``(url index, key, ((member suffix, data offset, size), ...))``, from tar headers.

    For ``shuffle: full``: samples are then read by seeking to their members, in any order.
    """
    out = []
    for u, url in enumerate(urls):
        if url.startswith("pipe:"):
            raise ValueError(f"shuffle full needs seekable shards; {url!r} is a pipe (use shuffle stream)")
        members: dict[str, list[tuple[str, int, int]]] = {}
        with _open_shard(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for ti in tar:
                if not ti.isfile() or not safe_member(ti.name):
                    continue
                base = os.path.basename(ti.name)
                key, _, suffix = base.partition(".")
                members.setdefault(os.path.join(os.path.dirname(ti.name), key), []).append(
                    (suffix.lower(), ti.offset_data, ti.size))
        out.extend((u, key, tuple(m)) for key, m in members.items() if any(s in IMAGE_EXTS for s, _, _ in m))
    return out


class FullReshuffle(wds.PipelineStage):
    """Every sample in a new random order each epoch, the same order on every rank, each rank (and loader
    worker) taking every k-th sample of it: the map-style ``DistributedSampler`` scheme of upstream's HF
    Trainer, on tar shards (members read by offset). ``epochs=None`` repeats forever."""

    def __init__(self, urls: list[str], seed: int = 0, epochs: int | None = None, split: bool = True) -> None:
        self.urls, self.seed, self.epochs, self.split = list(urls), seed, epochs, split
        self.index = index_samples(self.urls)

    def run(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info() if self.split else (0, 1, 0, 1)
        part, parts = rank * workers + worker, world * workers
        files: dict[int, Any] = {}
        try:
            epoch = 0
            while self.epochs is None or epoch < self.epochs:
                order = list(range(len(self.index)))
                random.Random(self.seed * 1000003 + epoch).shuffle(order)
                for i in order[part::parts]:
                    u, key, members = self.index[i]
                    if u not in files:
                        if len(files) >= 8:
                            files.pop(next(iter(files))).close()
                        files[u] = _open_shard(self.urls[u])
                    sample: dict[str, Any] = {"__key__": key, "__url__": self.urls[u]}
                    for suffix, offset, size in members:
                        files[u].seek(offset)
                        sample[suffix] = files[u].read(size)
                    yield sample
                epoch += 1
        finally:
            for f in files.values():
                f.close()


def _norm_box(box: Sequence[float]) -> list[float] | None:
    x1, y1, x2, y2 = (min(1.0, max(0.0, float(v))) for v in box[:4])
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


def _negatives(raw: Any) -> list[str]:
    """``{"0": neg0, ..., "9": neg9}`` (or a list) -> the negatives in index order."""
    if isinstance(raw, dict):
        keys = sorted(raw, key=lambda k: (0, int(k)) if str(k).isdigit() else (1, str(k)))
        return [str(raw[k]) for k in keys]
    return [str(n) for n in raw or []]


def to_example(sample: dict[str, Any], image_size: int, max_regions: int) -> dict[str, Any]:
    """A decoded WebDataset sample -> image tensor, captions and up to ``max_regions`` regions."""
    image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    if image is None:
        raise ValueError(f"sample {sample.get('__key__')} has no image member")
    rec = sample.get("json") or {}
    if not isinstance(rec, dict):
        raise ValueError(f"sample {sample.get('__key__')}: json member is not an object")
    caption = rec.get("caption") or sample.get("txt") or ""
    if not caption:
        raise ValueError(f"sample {sample.get('__key__')} has no caption")
    image = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # normalised on the device
    regions, skipped = [], 0
    for r in rec.get("bbox_info") or []:
        box = _norm_box(r.get("bbox", []))
        if box is None or not r.get("short_expr"):
            skipped += 1
            continue
        negs = _negatives(r.get("short_expr_negs"))
        hard = int(r.get("flag_short_neg", 0)) == 1 and len(negs) == NUM_NEGATIVES
        regions.append({"box": box, "short": r["short_expr"], "long": r.get("long_expr") or r["short_expr"],
                        "negs": negs if hard else []})
        if len(regions) == max_regions:
            break
    return {"key": sample.get("__key__", rec.get("key", "")), "pixel_values": pixels,
            "caption": caption, "short_caption": rec.get("short_caption") or "", "regions": regions,
            "skipped_regions": skipped}


class Collate:
    """Examples -> a padded, tokenised batch (see the module docstring for the layout)."""

    def __init__(self, tokenizer: Any, long_len: int = 248, short_len: int = 77, max_regions: int = 4,
                 seed: int = 0, region_texts: bool = True) -> None:
        self.tokenizer, self.long_len, self.short_len, self.max_regions = tokenizer, long_len, short_len, max_regions
        self.region_texts = region_texts  # stage 1 skips tokenising region texts it does not use
        self.rng = random.Random(seed)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        b, r = len(examples), self.max_regions
        long_ids, long_mask = tokenize(self.tokenizer, [e["caption"] for e in examples], self.long_len)
        short_ids, short_mask = tokenize(self.tokenizer, [short_text(e["short_caption"], e["caption"]) for e in examples],
                                         self.short_len)
        boxes, valid = torch.zeros(b, r, 4), torch.zeros(b, r, dtype=torch.bool)
        region_boxes, region_text_index, hard_index, hard_text_index = [], [], [], []
        texts: dict[str, int] = {}
        for i, e in enumerate(examples):
            for j, reg in enumerate(e["regions"][:r]):
                boxes[i, j] = torch.tensor(reg["box"])
                valid[i, j] = True
                if reg["negs"]:
                    hard_index.append(len(region_boxes))
                    hard_text_index.append([texts.setdefault(t, len(texts)) for t in [reg["short"]] + reg["negs"]])
                region_boxes.append([float(i)] + reg["box"])
                chosen = reg["short"] if self.rng.random() < 0.5 else reg["long"]
                region_text_index.append(texts.setdefault(chosen, len(texts)))
        batch: dict[str, Any] = {
            "keys": [e["key"] for e in examples],
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "long_ids": long_ids, "long_mask": long_mask, "short_ids": short_ids, "short_mask": short_mask,
            "boxes": boxes, "box_valid": valid,
            "region_boxes": torch.tensor(region_boxes, dtype=torch.float32).reshape(-1, 5),
            "region_text_index": torch.tensor(region_text_index, dtype=torch.long),
            "hard_index": torch.tensor(hard_index, dtype=torch.long),
            "hard_text_index": torch.tensor(hard_text_index, dtype=torch.long).reshape(-1, NUM_NEGATIVES + 1),
            "skipped_regions": sum(e.get("skipped_regions", 0) for e in examples),
        }
        batch["expr_texts"] = list(texts)
        if texts and self.region_texts:
            batch["expr_ids"], batch["expr_mask"] = tokenize(self.tokenizer, list(texts), self.short_len)
        else:
            batch["expr_ids"] = batch["expr_mask"] = torch.zeros((0, 2), dtype=torch.long)
        return batch


def move_batch(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Tensors of ``batch`` on ``device`` (non-tensors untouched)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def sample_pipeline(urls: list[str], image_size: int, max_regions: int, shuffle_buffer: int = 0, seed: int = 0,
                    epochs: int | None = None, split: bool = True, shuffle: str = "stream",
                    order_seed: int | None = None) -> wds.DataPipeline:
    """Shards -> decoded examples; broken tars/samples are logged and skipped (``warn_and_continue``).

    ``shuffle``: ``stream`` reshuffles the shard order every epoch and mixes samples in a
    ``shuffle_buffer`` (0: neither); ``full`` reshuffles every sample every epoch (:class:`FullReshuffle`).
    ``order_seed`` (default ``seed``) orders shards/samples and must be the same on every rank so that
    the ranks' shares do not overlap; ``seed`` seeds the per-rank buffer.
    """
    handler = wds.warn_and_continue
    order_seed = seed if order_seed is None else order_seed
    if shuffle not in ("stream", "full"):
        raise ValueError(f"shuffle must be stream or full, got {shuffle!r}")
    if shuffle == "full":
        stages: list[Any] = [FullReshuffle(urls, seed=order_seed, epochs=epochs, split=split)]
    else:
        stages = [ShardCycle(urls, seed=order_seed, shuffle=shuffle_buffer > 0, epochs=epochs)]
        if split:
            stages += [wds.split_by_node, wds.split_by_worker]
        stages += [functools.partial(open_streams, handler=handler),
                   functools.partial(tar_file_expander, handler=handler, select_files=safe_member),
                   functools.partial(group_by_keys, handler=handler)]
        if shuffle_buffer > 0:
            stages.append(wds.shuffle(shuffle_buffer, seed=seed))
    stages += [wds.decode("pil", handler=handler),
               wds.map(functools.partial(to_example, image_size=image_size, max_regions=max_regions), handler=handler)]
    return wds.DataPipeline(*stages)


def make_loader(shards: str | Sequence[str], tokenizer: Any, batch_size: int, image_size: int, max_regions: int = 4,
                long_len: int = 248, short_len: int = 77, shuffle_buffer: int = 1000, workers: int = 0,
                seed: int = 0, epochs: int | None = None, region_texts: bool = True, shuffle: str = "stream",
                order_seed: int | None = None) -> Iterable[dict[str, Any]]:
    """An endless (``epochs=None``) iterable of training batches, split by node and worker (see :func:`sample_pipeline`)."""
    urls = expand_shards(shards)
    pipe = sample_pipeline(urls, image_size, max_regions, shuffle_buffer, seed, epochs, shuffle=shuffle,
                           order_seed=order_seed)
    pipe.append(wds.batched(batch_size, collation_fn=Collate(tokenizer, long_len, short_len, max_regions, seed, region_texts),
                            partial=epochs is not None))
    if workers <= 0:
        return pipe
    return wds.WebLoader(pipe, batch_size=None, num_workers=workers, persistent_workers=True)


def iterate_examples(shards: str | Sequence[str], image_size: int, max_regions: int = 4) -> Iterator[dict[str, Any]]:
    """Every example of ``shards`` once, in order, on this process (for evaluation)."""
    yield from sample_pipeline(expand_shards(shards), image_size, max_regions, 0, 0, epochs=1, split=False)


def _stats_count(url: str) -> int | None:
    """``written`` from the pipeline's ``<shard>_stats.json`` next to a ``.tar``, if there is one."""
    if not url.endswith(".tar") or url.startswith("pipe:"):
        return None
    try:
        with fsspec.open(url[: -len(".tar")] + SHARD_STATS_SUFFIX, "rt", encoding="utf-8") as f:
            return int(json.load(f)["written"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tar_count(url: str) -> int:
    """Samples (distinct keys with an image member) in one tar, reading member headers only."""
    keys = set()
    stream = _open_shard(url)
    with stream, tarfile.open(fileobj=stream, mode="r|" if url.startswith("pipe:") else "r:") as tar:
        for ti in tar:
            if unsafe_member_problem(ti):
                continue
            base = os.path.basename(ti.name)
            key, _, ext = base.partition(".")
            if ext.lower() in IMAGE_EXTS:
                keys.add(os.path.join(os.path.dirname(ti.name), key))
    return len(keys)


def count_samples(shards: str | Sequence[str]) -> int:
    """Samples in ``shards``: the pipeline's per-shard stats when present, else tar headers."""
    total = 0
    for url in expand_shards(shards):
        n = _stats_count(url)
        total += _tar_count(url) if n is None else n
    return total


def epoch_steps(samples: int, global_batch: int, epochs: int = 1) -> int:
    """Optimiser steps for ``epochs`` passes over ``samples`` at ``global_batch`` (a last partial batch counts)."""
    return max(1, epochs * math.ceil(samples / global_batch))
