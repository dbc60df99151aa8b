"""Shared helpers for the training tests: tiny shards, a tiny CLIP config, fixed batches, DDP workers."""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from training.config import TrainConfig
from training.data import Collate, iterate_examples
from training.model import FGCLIP, tiny_clip_config
from training.synthetic_shards import write_synthetic_shards
from training.tokenizer import SimpleWordTokenizer
from transformers import CLIPModel

IMAGE_SIZE = 64


def tiny_model(seed: int = 0, attn: str = "sdpa", **kw: Any) -> FGCLIP:
    """A seeded random-init FGCLIP (hidden 64, 2 layers, 64px images, 16px patches -> 4x4 grid)."""
    torch.manual_seed(seed)
    return FGCLIP(CLIPModel._from_config(tiny_clip_config(**kw), attn_implementation=attn))


def write_model_config(path: str) -> str:
    """Write the tiny CLIPConfig json for ``--model-config``."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tiny_clip_config().to_dict(), f)
    return path


def make_shards(root: str, n: int = 24, per_shard: int = 8, **kw: Any) -> str:
    """Synthetic FineHARD shards under ``root``; returns the folder."""
    write_synthetic_shards(root, n, per_shard=per_shard, **kw)
    return root


def fixed_batch(shard_dir: str, n: int = 8, seed: int = 0, drop_regions: tuple[int, ...] = (),
                drop_negs: bool = False) -> dict[str, Any]:
    """The first ``n`` examples of ``shard_dir`` collated in order (optionally without regions/negatives)."""
    examples = []
    for e in iterate_examples(shard_dir, IMAGE_SIZE):
        if len(examples) in drop_regions:
            e["regions"] = []
        if drop_negs:
            for r in e["regions"]:
                r["negs"] = []
        examples.append(e)
        if len(examples) == n:
            break
    return Collate(SimpleWordTokenizer(), 248, 77, 4, seed)(examples)


def tiny_train_config(stage: int = 1, **kw: Any) -> TrainConfig:
    """A TrainConfig for CPU tests: fp32, no warmup, constant lr, no clipping."""
    base = dict(stage=stage, lr=1e-3, weight_decay=0.0, warmup_steps=0, schedule="constant", steps=10,
                batch_size=4, image_size=IMAGE_SIZE, workers=0, shuffle_buffer=0, precision="fp32", grad_clip=0.0,
                w_regional=0.1 if stage == 2 else 0.0, w_hard=0.5 if stage == 2 else 0.0)
    base.update(kw)
    return TrainConfig(**base).validate()


def slice_batch(batch: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    """Images ``lo:hi`` of a collated batch, with region/hard tensors re-indexed."""
    out = {k: v[lo:hi] for k, v in batch.items() if k in ("keys", "pixel_values", "long_ids", "long_mask",
                                                          "short_ids", "short_mask", "boxes", "box_valid")}
    sel = (batch["region_boxes"][:, 0] >= lo) & (batch["region_boxes"][:, 0] < hi)
    idx = sel.nonzero().flatten()
    rb = batch["region_boxes"][idx].clone()
    rb[:, 0] -= lo
    out["region_boxes"] = rb
    out["region_text_index"] = batch["region_text_index"][idx]
    out["expr_ids"], out["expr_mask"] = batch["expr_ids"], batch["expr_mask"]  # all texts; indices select
    remap = {int(old): new for new, old in enumerate(idx)}
    keep = [i for i, h in enumerate(batch["hard_index"].tolist()) if h in remap]
    out["hard_index"] = torch.tensor([remap[batch["hard_index"][i].item()] for i in keep], dtype=torch.long)
    out["hard_text_index"] = batch["hard_text_index"][keep].reshape(-1, 11)
    return out


def ddp_worker(rank: int, world: int, port: int, stage: int, batch_path: str, out_dir: str) -> None:
    """One gloo rank: DDP step on its half of the saved global batch; writes loss and parameters."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.train import build_optimizer, train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        batch = torch.load(batch_path, weights_only=False)
        n = batch["pixel_values"].shape[0] // world
        local = slice_batch(batch, rank * n, (rank + 1) * n)
        cfg = tiny_train_config(stage)
        model = tiny_model()
        model.set_stage(stage)
        ddp = DistributedDataParallel(model)
        opt = build_optimizer(model, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        losses = train_step(ddp, local, opt, sched, cfg, torch.device("cpu"))
        torch.save({"losses": losses, "params": {k: v.detach().clone() for k, v in model.state_dict().items()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


UPSTREAM_TEMPS = {"logit_scale": 4.6052, "logit_scale_finegraind": 3.25, "logit_scale_hardneg": 3.75}


def write_upstream_checkpoint(path: str, seed: int = 7, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A tiny checkpoint folder in upstream FG-CLIP's layout (as ``FGCLIPModel.save_pretrained`` writes it).

    Built from the tiny config with random weights: the CLIPModel tensors plus 248-row
    ``position_embedding_ori``/``_res`` (random, different from each other and from any extension of
    the 77-row table), a random ``text_filip_projection`` and three distinct temperatures.
    Returns the state dict written.
    """
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    config = tiny_clip_config()
    clip = CLIPModel(config)
    sd = {k: v.detach().clone().contiguous() for k, v in clip.state_dict().items()}
    width = config.text_config.hidden_size
    sd["text_model.embeddings.position_embedding_ori.weight"] = torch.randn(248, width) * 0.02
    sd["text_model.embeddings.position_embedding_res.weight"] = torch.randn(248, width) * 0.02
    sd["text_filip_projection.weight"] = torch.randn(config.projection_dim, width) * width ** -0.5
    for k, v in UPSTREAM_TEMPS.items():
        sd[k] = torch.tensor(v)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    os.makedirs(path, exist_ok=True)
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg["architectures"] = ["FGCLIPModel"]
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return sd


def global_features(n: int = 8, dim: int = 16, seed: int = 3) -> dict[str, torch.Tensor]:
    """Seeded L2-normalised image/long/short features of a global batch of ``n`` (for the loss tests)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
            for k in ("image", "long_text", "short_text")}


def rank_local_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One gloo rank: the global loss of its rows both ways (rank-local and full matrix); writes losses and grads."""
    import torch.distributed as dist

    from training.losses import global_loss, mean_over_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        feats = global_features()
        n = feats["image"].shape[0] // world
        out: dict[str, Any] = {}
        for name, local in (("rank_local", True), ("full", False)):
            own = {k: v[rank * n:(rank + 1) * n].clone().requires_grad_(True) for k, v in feats.items()}
            scale = torch.nn.Parameter(torch.tensor(2.6593))
            loss = global_loss(own["image"], own["long_text"], own["short_text"], scale, rank_local=local)
            loss.backward()
            scale_grad = scale.grad.clone()
            dist.all_reduce(scale_grad)  # DDP averages parameter gradients over ranks
            out[name] = {"loss": float(loss), "reported": float(mean_over_ranks(loss)),
                         "grads": {k: v.grad.clone() for k, v in own.items()},
                         "scale_grad": float(scale_grad / world)}
        torch.save(out, os.path.join(out_dir, f"loss_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
