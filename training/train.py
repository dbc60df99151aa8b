"""The FG-CLIP training loop: optimiser, schedule, precision, DDP/DeepSpeed, checkpoints, final save."""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from training.config import CONFIG_DIR, ConfigError, TrainConfig, auto_workers
from training.data import count_samples, epoch_steps, make_loader, move_batch
from training.distributed import DistInfo, cleanup_distributed, enable_fast_matmul, init_distributed
from training.losses import LossWeights, fgclip_loss, mean_over_ranks
from training.model import unwrap
from training.weights import build_model, save_fgclip
from training.tokenizer import load_tokenizer

log = logging.getLogger(__name__)
CKPT_DIR = "checkpoints"


@dataclass
class RunOptions:
    """Where and how to run (everything that is not a hyper-parameter)."""
    shards: str
    output: str
    model: str | None = None
    model_config: str | None = None
    tokenizer: str | None = None
    device: str = "cpu"
    resume: bool = False
    deepspeed: str | None = None
    grad_checkpointing: bool = False
    reset_temperatures: bool = False  # stage 2: regional/hard temperatures := logit_scale, as upstream always does


def decay_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(names with weight decay, names without) among trainable parameters, grouped as upstream FG-CLIP.

    Upstream's ``CLIPTrainer.create_optimizer``: every parameter decays except those of LayerNorm
    modules and those whose name contains ``bias``; embeddings, projections and temperatures decay.
    """
    norm = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}
    decay, keep = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (keep if "bias" in n or id(p) in norm else decay).append(n)
    return decay, keep


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over upstream's two weight-decay groups (see :func:`decay_names`)."""
    decay, keep = decay_names(model)
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in decay], "weight_decay": cfg.weight_decay},
              {"params": [params[n] for n in keep], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from 0 then cosine decay to ``min_lr_ratio`` (or constant).

    Same factors as ``transformers.get_cosine_schedule_with_warmup`` (upstream's HF Trainer): update
    ``step`` (0-based) uses ``step / warmup_steps`` during warmup, so the first update has lr 0.
    """
    if step < cfg.warmup_steps:
        return step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on accelerators (precision auto/bf16), nothing on CPU unless bf16 is asked."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type in ("cuda", "npu"))
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def weights_of(cfg: TrainConfig) -> LossWeights:
    """Loss weights of ``cfg``; stage 1 has no regional/hard terms."""
    if cfg.stage == 1:
        return LossWeights(cfg.w_global, 0.0, 0.0, cfg.max_logit_scale)
    return LossWeights(cfg.w_global, cfg.w_regional, cfg.w_hard, cfg.max_logit_scale)


def train_step(model: nn.Module, batch: dict[str, Any], optimizer: Any, scheduler: Any, cfg: TrainConfig,
               device: torch.device, engine: Any = None) -> dict[str, float]:
    """One optimisation step on ``batch``; returns the loss terms as floats."""
    batch = move_batch(batch, device)
    regional = cfg.stage == 2
    with autocast_for(device, cfg.precision):
        feats = model(batch, regional=regional)
        losses = fgclip_loss(feats, unwrap(model), weights_of(cfg))
    if engine is not None:
        engine.backward(losses["loss"])
        engine.step()
    else:
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        scheduler.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    # the global term is this rank's share (rank-local logits): report the global loss, the mean over ranks
    mean_global = float(mean_over_ranks(losses["global"]))
    out["loss"] += weights_of(cfg).w_global * (mean_global - out["global"])
    out["global"] = mean_global
    out["skipped_regions"] = int(batch.get("skipped_regions", 0))
    return out


def checkpoint_path(output: str, step: int) -> str:
    return os.path.join(output, CKPT_DIR, f"step_{step:08d}.pt")


def latest_checkpoint(output: str) -> str | None:
    """The newest ``checkpoints/step_*.pt`` under ``output``, or None."""
    found = glob.glob(os.path.join(output, CKPT_DIR, "step_*.pt"))
    return max(found, key=lambda p: int(re.findall(r"step_(\d+)", p)[-1])) if found else None


def save_checkpoint(path: str, model: nn.Module, optimizer: Any, scheduler: Any, step: int, cfg: TrainConfig) -> None:
    """Model, optimiser, scheduler, step and RNG state; written to a temp name then renamed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if cfg.stage == 1:
        unwrap(model).tie_temperatures()  # untrained in stage 1: they follow the global temperature
    state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "stage": cfg.stage,
             "torch_rng": torch.get_rng_state()}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, model: nn.Module, optimizer: Any, scheduler: Any) -> int:
    """Restore :func:`save_checkpoint` state (``weights_only=True``); returns the step to continue from."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


BUNDLED_DEEPSPEED = {"zero2": os.path.join(CONFIG_DIR, "zero2.json")}  # --deepspeed zero2


def deepspeed_config_path(name_or_path: str) -> str:
    """A bundled DeepSpeed config by name (``zero2``) or a json file's path."""
    path = BUNDLED_DEEPSPEED.get(name_or_path, name_or_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DeepSpeed config {name_or_path!r} not found; pass --deepspeed zero2 (bundled ZeRO-2) "
                                "or a json file")
    return path


def deepspeed_config(name_or_path: str, cfg: TrainConfig, world_size: int, device_type: str) -> dict[str, Any]:
    """The DeepSpeed config of ``name_or_path`` with its ``"auto"`` values (and missing batch/clipping keys) from ``cfg``.

    Clipping follows the recipe: ``gradient_clipping`` is ``cfg.grad_clip`` (0: none, as upstream's
    zero2.json, which has no such key); a file that sets another number fails rather than being ignored.
    """
    with open(deepspeed_config_path(name_or_path), encoding="utf-8") as f:
        ds = json.load(f)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device_type in ("cuda", "npu"))
    fills = {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": 1,
             "train_batch_size": cfg.batch_size * world_size, "gradient_clipping": cfg.grad_clip}
    for key, value in fills.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif key == "gradient_clipping" and float(ds[key]) != cfg.grad_clip:
            raise ConfigError(f"the DeepSpeed config sets gradient_clipping {ds[key]} but the recipe's grad_clip is "
                              f"{cfg.grad_clip:g}; pass --grad-clip {ds[key]} or set it to \"auto\" in the file")
        elif ds[key] != value:
            raise ConfigError(f"the DeepSpeed config sets {key} {ds[key]} but this run uses {value}; "
                              f"set it to \"auto\" in the file")
    for section, on in (("bf16", bf16), ("fp16", False)):
        if isinstance(ds.get(section), dict) and ds[section].get("enabled") == "auto":
            ds[section]["enabled"] = on
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch AdamW as the client optimizer (as HF Trainer does)
    return ds


def _deepspeed_engine(model: nn.Module, optimizer: Any, scheduler: Any, ds_config: dict[str, Any]) -> Any:
    try:
        import deepspeed
    except ImportError as exc:
        raise RuntimeError("--deepspeed needs the deepspeed package (pip install deepspeed); or drop --deepspeed") from exc
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


def loader_workers(cfg: TrainConfig) -> int:
    """``cfg.workers``, or with -1 the cores' share of this node's training processes (``LOCAL_WORLD_SIZE``)."""
    if cfg.workers >= 0:
        return cfg.workers
    return auto_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@torch.no_grad()
def apply_init_temperature(model: nn.Module, tau: float) -> None:
    """``logit_scale`` := ln(1 / tau) (the paper's stage 1 starts from tau 0.07); the stage-1-untrained ones follow."""
    m = unwrap(model)
    m.clip.logit_scale.fill_(math.log(1.0 / tau))


def run_training(cfg: TrainConfig, opts: RunOptions) -> dict[str, Any]:
    """Train ``cfg.steps`` steps on ``opts.shards``; saves checkpoints and ``<output>/final``; returns a summary."""
    if opts.deepspeed:
        deepspeed_config_path(opts.deepspeed)  # fail before joining a process group
    info: DistInfo = init_distributed(opts.device)
    try:
        return _train(cfg, opts, info)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, opts: RunOptions, info: DistInfo) -> dict[str, Any]:
    seed = cfg.seed + info.rank
    torch.manual_seed(cfg.seed)
    random.seed(seed)
    enable_fast_matmul(info.device)  # TF32 on CUDA, HF32 on NPU
    model, tokenizer, short_len = _prepared_model(cfg, opts, info)
    samples = None
    if cfg.steps == 0:  # one (or `epochs`) pass over the shards at the global batch size
        samples = count_samples(opts.shards)
        cfg = replace(cfg, steps=epoch_steps(samples, cfg.batch_size * info.world_size, cfg.epochs))
    workers = loader_workers(cfg)
    if info.is_main:
        print(start_line(cfg, info, samples), flush=True)
        log.info("recipe %s; RoIAlign: %s; %d loader worker(s) per process; %s shuffling", cfg.recipe,
                 model.roi_impl, workers, cfg.shuffle)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    start, engine, wrapped = _resumed_and_wrapped(model, optimizer, scheduler, cfg, opts, info)
    loader = make_loader(opts.shards, tokenizer, cfg.batch_size, cfg.image_size, cfg.max_regions, cfg.long_text_len,
                         short_len, cfg.shuffle_buffer, workers, seed + 7919 * start,
                         region_texts=cfg.stage == 2, shuffle=cfg.shuffle,
                         order_seed=cfg.seed + 7919 * start)  # the same shard/sample order on every rank
    os.makedirs(opts.output, exist_ok=True)
    metrics_file = open(os.path.join(opts.output, "metrics.jsonl"), "a", encoding="utf-8") if info.is_main else None
    try:
        step, last, skipped = _steps(wrapped, loader, optimizer, scheduler, start, cfg, info, engine, metrics_file,
                                     lambda done: _save(engine, model, optimizer, scheduler, done, cfg, opts, info))
        _save(engine, model, optimizer, scheduler, step, cfg, opts, info)
        final = os.path.join(opts.output, "final")
        if skipped:
            log.warning("skipped %d regions with a degenerate box or no expression (this rank)", skipped)
        if info.is_main:
            if cfg.stage == 1:
                model.tie_temperatures()
            save_fgclip(model, final, tokenizer)
            with open(os.path.join(final, "train_config.json"), "w", encoding="utf-8") as f:
                json.dump(asdict(cfg), f, indent=2)
    finally:
        if metrics_file:
            metrics_file.close()
    return {"steps": step, "start": start, "final": os.path.join(opts.output, "final"), "last": last,
            "skipped_regions": skipped}


def _prepared_model(cfg: TrainConfig, opts: RunOptions, info: DistInfo) -> tuple[Any, Any, int]:
    """The model (built, stage set, on its device, in train mode), its tokenizer and the short text length."""
    model = build_model(opts.model, opts.model_config, cfg.keep_len)
    if cfg.init_temperature > 0:
        apply_init_temperature(model, cfg.init_temperature)
    _log_start_point(model, opts)
    if cfg.stage == 2 and opts.reset_temperatures:
        model.tie_temperatures()
    model.roi_impl = resolve_roi(cfg.roi_align, info.device.type)
    if cfg.long_text_len > model.long_len:
        raise ValueError(f"long_text_len {cfg.long_text_len} exceeds the model's {model.long_len} long positions")
    short_len = min(cfg.short_text_len, model.short_len)
    model.set_stage(cfg.stage)
    if opts.grad_checkpointing:
        model.enable_checkpointing()
    model.to(info.device).train()
    vocab = model.clip.config.text_config.vocab_size
    tokenizer = load_tokenizer(opts.tokenizer, opts.model, vocab_size=vocab)
    tok_size = len(tokenizer) if hasattr(tokenizer, "__len__") else getattr(tokenizer, "vocab_size", vocab)
    if tok_size > vocab:
        raise ValueError(f"tokenizer has {tok_size} tokens but the model only {vocab}; pass the model's own --tokenizer")
    return model, tokenizer, short_len


def _resumed_and_wrapped(model: Any, optimizer: Any, scheduler: Any, cfg: TrainConfig, opts: RunOptions,
                         info: DistInfo) -> tuple[int, Any, Any]:
    """``(start step, DeepSpeed engine or None, the module train_step calls)``: resumed from the output's
    latest checkpoint with ``--resume``, wrapped in DeepSpeed or DDP when the run asks for it."""
    start = 0
    if opts.resume and not opts.deepspeed:
        ckpt = latest_checkpoint(opts.output)
        if ckpt is None:
            log.warning("--resume: no checkpoint under %s, starting from step 0", opts.output)
        else:
            start = load_checkpoint(ckpt, model, optimizer, scheduler)
            log.info("resumed from %s at step %d", ckpt, start)
    engine, wrapped = None, model
    if opts.deepspeed:
        ds_config = deepspeed_config(opts.deepspeed, cfg, info.world_size, info.device.type)
        engine = wrapped = _deepspeed_engine(model, optimizer, scheduler, ds_config)
        if opts.resume:
            engine.load_checkpoint(os.path.join(opts.output, CKPT_DIR, "deepspeed"))
            start = int(engine.global_steps)
    elif info.world_size > 1:
        ids = [info.device.index] if info.device.type != "cpu" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return start, engine, wrapped


def _steps(wrapped: Any, loader: Any, optimizer: Any, scheduler: Any, start: int, cfg: TrainConfig, info: DistInfo,
           engine: Any, metrics_file: Any, save: Any) -> tuple[int, dict[str, float], int]:
    """Steps ``start`` to ``cfg.steps``: a metrics row every ``log_every`` steps (main rank), a checkpoint
    (``save(step)``) every ``save_every``; returns ``(last step, last step's losses, regions skipped)``."""
    last: dict[str, float] = {}
    skipped = 0
    t0 = time.time()
    it = iter(loader)
    for step in range(start, cfg.steps):
        last = train_step(wrapped, next(it), optimizer, scheduler, cfg, info.device, engine)
        skipped += last.pop("skipped_regions", 0)
        done = step + 1
        if metrics_file and (done % cfg.log_every == 0 or done == cfg.steps):
            row = {"step": done, "lr": optimizer.param_groups[0]["lr"], **last, "skipped_regions": skipped,
                   "elapsed_s": round(time.time() - t0, 2)}
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            log.info("step %d %s", done, json.dumps(last))
        if cfg.save_every > 0 and done % cfg.save_every == 0 and done < cfg.steps:
            save(done)
    return cfg.steps, last, skipped


def resolve_roi(impl: str, device_type: str) -> str:
    """The RoIAlign that runs (``torchvision`` or ``torch``); fails fast when torchvision is asked for but has no kernel."""
    from training.roi import resolve_impl, torchvision_has_kernel

    if impl == "torchvision" and not torchvision_has_kernel(device_type):
        raise ConfigError(f"torchvision has no roi_align kernel for {device_type} here; use --roi-align torch or auto")
    return resolve_impl(impl, device_type)


def start_line(cfg: TrainConfig, info: DistInfo, samples: int | None) -> str:
    """The one-line summary printed at start: batch sizes, steps and optimiser settings."""
    how = f"{cfg.epochs} epoch(s) of {samples} samples" if samples is not None else "--steps"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.type in ("cuda", "npu"))
    return (f"finehard train: stage {cfg.stage} ({cfg.recipe} recipe): per-device batch {cfg.batch_size} x {info.world_size} process(es) "
            f"= global batch {cfg.batch_size * info.world_size}; {cfg.steps} steps ({how}); lr {cfg.lr:g}, "
            f"warmup {cfg.warmup_steps}, {cfg.schedule}, AdamW betas ({cfg.betas[0]:g}, {cfg.betas[1]:g}) "
            f"eps {cfg.eps:g} weight decay {cfg.weight_decay:g}; "
            f"{'grad clip ' + format(cfg.grad_clip, 'g') if cfg.grad_clip > 0 else 'no grad clipping'}; "
            f"{'bf16 autocast' if bf16 else 'fp32'} on {info.device.type}")


def _log_start_point(model: nn.Module, opts: RunOptions) -> None:
    """Say what the model continues from (upstream/project FG-CLIP checkpoint, plain CLIP, random init)."""
    m = unwrap(model)
    what = {"upstream": "an upstream FG-CLIP checkpoint: its long positions, text_filip_projection and temperatures",
            "project": "an FG-CLIP checkpoint (project layout): its long positions, long projection and temperatures",
            "clip": "a plain CLIP checkpoint: long positions extended from its 77, long projection copied",
            "config": "random init (--model config:NAME or --model-config)"}[getattr(m, "source_layout", "config")]
    log.info("starting from %s (logit_scale %.4f, regional %.4f, hard %.4f)%s", what, m.clip.logit_scale.item(),
             m.regional_logit_scale.item(), m.hard_logit_scale.item(),
             "; --reset-temperatures sets the last two to logit_scale" if opts.reset_temperatures else "")


def _save(engine: Any, model: nn.Module, optimizer: Any, scheduler: Any, step: int, cfg: TrainConfig,
          opts: RunOptions, info: DistInfo) -> None:
    if engine is not None:
        engine.save_checkpoint(os.path.join(opts.output, CKPT_DIR, "deepspeed"))
    elif info.is_main:
        save_checkpoint(checkpoint_path(opts.output, step), model, optimizer, scheduler, step, cfg)
