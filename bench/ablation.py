"""Ablation of FG-CLIP's stage-2 losses on synthetic scenes with a tiny random-init CLIP (CPU, minutes).

Trains stage 1 (global only), then from that model stage 2 with L_regional only (w_hard = 0) and the
full stage 2 (L_global + 0.1 L_regional + 0.5 L_hard), all through ``training.cli.train_main`` on
WebDataset shards written from ``core.synthetic``. Held-out scenes (another seed) give:
  fgovd_hard   top-1 of the positive among positive + 10 attribute-swapped negatives, per object box;
  box_cls      top-1 of a held-out box's RoIAlign feature among all "a <colour> <shape>" class texts;
  retrieval_r1 image<->long-caption R@1 (mean of both directions) over the held-out images.
Prints a table and ``ablation: ratio=X.XX`` (fgovd_hard stage2_full / stage1); appends to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import append_section, torch_version  # noqa: E402
from core.synthetic import COLOURS, SHAPES, long_caption, make_scene, short_caption  # noqa: E402
from training.cli import train_main  # noqa: E402
from training.evaluate import image_tensor, region_accuracy, retrieval_r1  # noqa: E402
from training.model import tiny_clip_config  # noqa: E402
from training.weights import load_fgclip  # noqa: E402
from training.synthetic_shards import attribute_negatives, write_synthetic_shards  # noqa: E402
from training.tokenizer import load_tokenizer  # noqa: E402


def heldout_sets(n: int, seed: int, image_size: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(hard-negative entries, box classification entries, retrieval examples) from held-out scenes."""
    classes = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    rng = random.Random(f"heldout-{seed}")
    hard, cls, ret = [], [], []
    for i in range(n):
        img, scene = make_scene(i, seed)
        w, h = scene["width"], scene["height"]
        pix = image_tensor(img, image_size)
        boxes = [[o["box"][0] / w, o["box"][1] / h, o["box"][2] / w, o["box"][3] / h] for o in scene["objects"]]
        hard.append({"pixel_values": pix, "boxes": boxes, "labels": [0] * len(boxes),
                     "candidates": [[o["expr"]] + attribute_negatives(o, rng) for o in scene["objects"]]})
        cls.append({"pixel_values": pix, "boxes": boxes, "candidates": [classes] * len(boxes),
                    "labels": [classes.index(f"a {o['colour']} {o['shape']}") for o in scene["objects"]]})
        ret.append({"pixel_values": pix, "caption": long_caption(scene), "short_caption": short_caption(scene)})
    return hard, cls, ret


def evaluate_model(path: str, sets: tuple[list, list, list]) -> dict[str, float]:
    """fgovd_hard, box_cls and retrieval_r1 of the model saved at ``path``."""
    model = load_fgclip(path).eval()
    tok = load_tokenizer(None, path)
    hard, cls, ret = sets
    r = retrieval_r1(model, tok, ret, "cpu")
    return {"fgovd_hard": region_accuracy(model, tok, hard, "cpu"), "box_cls": region_accuracy(model, tok, cls, "cpu"),
            "retrieval_r1": (r["i2t_r1_long"] + r["t2i_r1_long"]) / 2}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1500, help="training scenes")
    p.add_argument("--heldout", type=int, default=300, help="held-out scenes (another seed)")
    p.add_argument("--steps1", type=int, default=600, help="stage-1 steps")
    p.add_argument("--steps2", type=int, default=300, help="stage-2 steps (each variant)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8, help="patch size (64/8 -> 8x8 grid)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr1", type=float, default=1e-3, help="stage-1 lr for the tiny random-init model")
    p.add_argument("--lr2", type=float, default=3e-4, help="stage-2 lr for the tiny model")
    p.add_argument("--w-regional", type=float, default=0.1)
    p.add_argument("--w-hard", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared 2-core box)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where shards and models go (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the results as json here")
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = args.workdir or tempfile.mkdtemp(prefix="fgclip-ablation-")
    t0 = time.time()
    shards = os.path.join(work, "shards")
    if not os.path.isdir(shards):
        write_synthetic_shards(shards, args.n, seed=args.seed, per_shard=250)
    cfg_path = os.path.join(work, "tiny_clip.json")
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(tiny_clip_config(hidden=args.hidden, layers=args.layers, image_size=args.image_size,
                                   patch_size=args.patch, projection_dim=args.hidden).to_dict(), f)
    common = ["--shards", shards, "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
              "--workers", "0", "--shuffle-buffer", "500", "--log-level", "WARNING", "--seed", str(args.seed),
              "--save-every", "0", "--log-every", "50", "--precision", "fp32",
              "--grad-clip", "1.0"]  # as the figures in docs/benchmarks.md were measured (the recipes clip none now)
    runs = {"stage1": ["--stage", "1", "--model-config", cfg_path, "--steps", str(args.steps1), "--lr", str(args.lr1),
                       "--warmup-steps", "30", "--weight-decay", "0.05", "--eps", "1e-6"],
            "stage2_regional": ["--stage", "2", "--steps", str(args.steps2), "--lr", str(args.lr2), "--warmup-steps",
                                "10", "--w-regional", str(args.w_regional), "--w-hard", "0"],
            "stage2_full": ["--stage", "2", "--steps", str(args.steps2), "--lr", str(args.lr2), "--warmup-steps", "10",
                            "--w-regional", str(args.w_regional), "--w-hard", str(args.w_hard)]}
    sets = heldout_sets(args.heldout, args.seed + 1, args.image_size)
    results, timings = {}, {}
    for name, flags in runs.items():
        t = time.time()
        out = os.path.join(work, name)
        if name != "stage1":
            flags = flags + ["--model", os.path.join(work, "stage1", "final")]
        rc = train_main(flags + common + ["--output", out])
        if rc != 0:
            print(f"ablation: training {name} failed (rc={rc})", file=sys.stderr)
            return rc
        timings[name] = time.time() - t
        results[name] = evaluate_model(os.path.join(out, "final"), sets)
    header = "| run | fgovd_hard | box_cls | retrieval_r1 | train s |\n|---|---|---|---|---|"
    rows = [f"| {k} | {v['fgovd_hard']:.3f} | {v['box_cls']:.3f} | {v['retrieval_r1']:.3f} | {timings[k]:.0f} |"
            for k, v in results.items()]
    ratio = results["stage2_full"]["fgovd_hard"] / max(results["stage1"]["fgovd_hard"], 1e-9)
    setup = (f"n={args.n} heldout={args.heldout} steps1={args.steps1} steps2={args.steps2} bs={args.batch_size} "
             f"image={args.image_size}/{args.patch} hidden={args.hidden} layers={args.layers} lr1={args.lr1} "
             f"lr2={args.lr2} w_regional={args.w_regional} w_hard={args.w_hard} seed={args.seed} "
             f"chance: fgovd_hard={1 / 11:.3f} box_cls={1 / 50:.3f} retrieval_r1={1 / args.heldout:.3f}")
    print(setup)
    print(header)
    print("\n".join(rows))
    print(f"total {time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    if not args.no_doc:
        append_section("FG-CLIP loss ablation (bench/ablation.py)",
                       [f"Setup: {setup}", "", header] + rows + ["", f"ablation: ratio={ratio:.2f}"], [torch_version()])
    print(f"ablation: ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
