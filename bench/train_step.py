"""Stage-2 vs stage-1 step time on the same tiny CLIP and batch, and loader throughput vs step consumption.

Goals from the issue: stage-2 step <= 1.5x the stage-1 step; the shard loader delivers >= 3x the
samples per second that a stage-2 step consumes. Prints a table, appends it to docs/benchmarks.md and
ends with ``train_step: ratio=X.XX`` (stage-2 / stage-1 step time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import CLIPModel  # noqa: E402

from bench.common import append_section, torch_version  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import make_loader  # noqa: E402
from training.model import FGCLIP, tiny_clip_config  # noqa: E402
from training.synthetic_shards import write_synthetic_shards  # noqa: E402
from training.tokenizer import SimpleWordTokenizer  # noqa: E402
from training.train import build_optimizer, train_step  # noqa: E402


def step_times(stage: int, batches: list[dict], args: argparse.Namespace) -> list[float]:
    """Seconds per optimisation step (after one warm-up step) for ``stage`` on ``batches``."""
    torch.manual_seed(0)
    cfg = TrainConfig(stage=stage, lr=1e-4, warmup_steps=0, schedule="constant", batch_size=args.batch_size,
                      grad_clip=1.0, image_size=args.image_size, precision="fp32", w_regional=0.1 if stage == 2 else 0.0,
                      w_hard=0.5 if stage == 2 else 0.0).validate()
    model = FGCLIP(CLIPModel(tiny_clip_config(hidden=args.hidden, layers=args.layers, image_size=args.image_size,
                                              patch_size=args.patch, projection_dim=args.hidden)))
    model.set_stage(stage)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train_step(model, batches[0], opt, sched, cfg, torch.device("cpu"))
    out = []
    for b in batches[1:]:
        t = time.perf_counter()
        train_step(model, b, opt, sched, cfg, torch.device("cpu"))
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512, help="synthetic scenes written to shards")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--iters", type=int, default=8, help="timed steps per stage (after 1 warm-up)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="fgclip-trainstep-")
    write_synthetic_shards(work, args.n, per_shard=128)
    tok = SimpleWordTokenizer()

    loader = make_loader(work, tok, args.batch_size, args.image_size, shuffle_buffer=256, seed=0)
    it = iter(loader)
    next(it)  # open shards, fill the shuffle buffer
    n_batches = max(4, min(args.iters + 1, args.n // args.batch_size))
    t = time.perf_counter()
    batches = [next(it) for _ in range(n_batches)]
    load_sps = n_batches * args.batch_size / (time.perf_counter() - t)
    while len(batches) < args.iters + 1:
        batches.append(batches[len(batches) % n_batches])

    s1 = statistics.median(step_times(1, batches, args))
    s2 = statistics.median(step_times(2, batches, args))
    consume_sps = args.batch_size / s2
    regions = sum(int(b["box_valid"].sum()) for b in batches) / len(batches)
    hard = sum(int(b["hard_index"].numel()) for b in batches) / len(batches)
    texts = sum(int(b["expr_ids"].shape[0]) for b in batches) / len(batches)
    ratio, load_ratio = s2 / s1, load_sps / consume_sps
    setup = (f"n={args.n} bs={args.batch_size} image={args.image_size}/{args.patch} hidden={args.hidden} "
             f"layers={args.layers} threads={args.threads}; per batch: {regions:.0f} regions, {hard:.0f} with "
             f"10 negatives, {texts:.0f} distinct region texts (of {regions + 11 * hard:.0f})")
    table = ["| measure | value | goal |", "|---|---|---|",
             f"| stage-1 step (s, median) | {s1:.3f} | |",
             f"| stage-2 step (s, median) | {s2:.3f} | |",
             f"| stage-2 / stage-1 step time | {ratio:.2f} | <= 1.5 |",
             f"| loader samples/s (1 process, decode+resize+tokenise) | {load_sps:.0f} | |",
             f"| stage-2 step consumes samples/s | {consume_sps:.0f} | |",
             f"| loader / consumption | {load_ratio:.2f} | >= 3 |"]
    print(setup)
    print("\n".join(table))
    if not args.no_doc:
        append_section("FG-CLIP train step (bench/train_step.py)",
                       [f"Setup: {setup}", ""] + table + ["", f"train_step: ratio={ratio:.2f}"], [torch_version()])
    print(f"train_step: ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
