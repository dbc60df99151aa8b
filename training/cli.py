"""``finehard train`` / ``eval`` / ``convert`` command lines (also ``python -m training train|eval|convert``)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from core.cli_help import DefaultsHelpFormatter
from training.config import ConfigError, add_override_args, build_config
from training.named_configs import check_name, is_named

log = logging.getLogger("training")


class UsageError(Exception):
    """A wrong flag or value; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(formatter_class=DefaultsHelpFormatter, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def _fail(prog: str, exc: BaseException) -> int:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="finehard train", description="Train FG-CLIP stage 1 or 2 on FineHARD WebDataset shards.")
    p.add_argument("--stage", type=int, choices=(1, 2), required=True, help="1: global; 2: global+regional+hard")
    p.add_argument("--config", default=None,
                   help="YAML/JSON config of your own (default: training/configs/stage<N>-<recipe>.yaml, see --recipe)")
    p.add_argument("--shards", required=True, help="shards: path, folder, glob, brace list or fsspec URI (s3://..)")
    p.add_argument("--output", required=True, help="output folder (checkpoints/, metrics.jsonl, final/)")
    p.add_argument("--model", default=None, help="local folder to start from: OpenAI/HF CLIP, an upstream FG-CLIP "
                                                 "checkpoint (e.g. fg-clip-base) or a finehard train final/; or a "
                                                 "random-init architecture: config:tiny, config:vit-b-16, "
                                                 "config:vit-l-14, config:vit-l-14-336")
    p.add_argument("--model-config", default=None, help="CLIPConfig json for a random-init model (tests, benches)")
    p.add_argument("--tokenizer", default=None, help="local tokenizer folder (default: the model folder's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "npu"), help="device kind")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--deepspeed", default=None, help="DeepSpeed config: zero2 (bundled ZeRO-2) or a json file; "
                                                     "\"auto\" values and clipping from the recipe; needs deepspeed")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute encoder blocks in backward")
    p.add_argument("--reset-temperatures", action="store_true",
                   help="stage 2: start the regional and hard temperatures from logit_scale even when --model is a "
                        "trained FG-CLIP checkpoint (upstream's train_fgclip.py always does)")
    p.add_argument("--log-level", default="INFO", help="logging level")
    add_override_args(p)
    return p


def check_shards(uri: str) -> None:
    """The argument check of ``--shards`` (without webdataset, which imports torch): local paths, globs,
    folders and brace lists must match something; URIs (s3://, pipe:) are checked when opened."""
    import glob as globlib

    from braceexpand import braceexpand  # webdataset's own brace expansion (a webdataset dependency)

    for part in uri.split("::"):
        for u in braceexpand(part):
            if "://" in u or u.startswith("pipe:"):
                return
            if os.path.isdir(u):
                if globlib.glob(os.path.join(globlib.escape(u), "*.tar")):
                    return
            elif any(c in u for c in "*?["):
                if globlib.glob(u):
                    return
            elif os.path.exists(u):
                return
            else:
                raise UsageError(f"shard {u!r} does not exist; pass --shards an existing .tar, folder, glob or URI")
    raise UsageError(f"no shards match {uri!r}; pass --shards a .tar path, glob, folder or brace list")


def train_main(argv: list[str]) -> int:
    """Entry point of ``finehard train``; returns the exit code.

    Every argument is checked before torch, torchvision and transformers are imported (seconds to
    a minute on a busy machine): ``--help`` and a wrong flag answer at once.
    """
    try:
        args = train_parser().parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        cfg = build_config(args.stage, args.config, args)
        check_shards(args.shards)
        if args.model is None and args.model_config is None:
            raise UsageError("pass --model PATH (a local CLIP folder), --model config:vit-b-16 (random init; also "
                             "config:tiny, config:vit-l-14-336) or --model-config JSON")
        if is_named(args.model):
            check_name(args.model)
        for flag, path in (("--model", args.model), ("--tokenizer", args.tokenizer)):
            if path and not os.path.isdir(path) and not (flag == "--model" and is_named(path)):
                raise UsageError(f"{flag} {path!r} is not a folder; pass a local HF-format folder")
        if args.model_config and not os.path.isfile(args.model_config):
            raise UsageError(f"--model-config {args.model_config!r} not found; pass a CLIPConfig json file")
        if args.deepspeed:  # the last check: deepspeed imports torch
            try:
                import deepspeed  # noqa: F401
            except ImportError:
                raise UsageError("--deepspeed needs the deepspeed package (pip install deepspeed); or drop --deepspeed")
        from training.data import expand_shards
        from training.train import RunOptions, run_training

        expand_shards(args.shards)
        opts = RunOptions(shards=args.shards, output=args.output, model=args.model, model_config=args.model_config,
                          tokenizer=args.tokenizer, device=args.device, resume=args.resume, deepspeed=args.deepspeed,
                          grad_checkpointing=args.grad_checkpointing, reset_temperatures=args.reset_temperatures)
        summary = run_training(cfg, opts)
    except (UsageError, ConfigError, FileNotFoundError, RuntimeError, ValueError) as exc:
        return _fail("finehard train", exc)
    log.info("done: %s", json.dumps(summary))
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="finehard eval", description="Evaluate an FG-CLIP model: FG-OVD region accuracy and R@1.")
    p.add_argument("--model", required=True, help="folder written by finehard train (…/final), an upstream FG-CLIP "
                                                  "checkpoint or a HF CLIP folder")
    p.add_argument("--shards", default=None, help="held-out shards for image<->text R@1 (long and short captions)")
    p.add_argument("--fgovd", default=None, help="FG-OVD jsonl as upstream ships it (data/fgovd/*.jsonl: img_path, "
                                                 "bbox xywh pixels, pos_expression and neg_expression lists)")
    p.add_argument("--images", default=None, help="folder the FG-OVD img_path values are relative to (the COCO root "
                                                  "for upstream's files; default: the jsonl's folder)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model folder's)")
    p.add_argument("--image-size", type=int, default=None, help="S (default: the model's vision image_size)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "npu"), help="device kind")
    p.add_argument("--limit", type=int, default=None, help="at most this many shard samples")
    p.add_argument("--json", default=None, help="also write the results to this json file")
    return p


def eval_main(argv: list[str]) -> int:
    """Entry point of ``finehard eval``; prints a json of metrics and returns the exit code."""
    try:
        args = eval_parser().parse_args(argv)
        if not args.shards and not args.fgovd:
            raise UsageError("pass --shards (retrieval R@1) and/or --fgovd (region accuracy)")
        if not os.path.isdir(args.model):
            raise UsageError(f"--model {args.model!r} is not a folder; pass the final/ folder written by finehard train")
        from training.distributed import resolve_device
        from training.evaluate import (hard_negative_entries, load_fgovd, region_accuracy, retrieval_r1,
                                       shard_examples)
        from training.weights import load_fgclip
        from training.tokenizer import load_tokenizer
        import torch

        resolve_device(args.device)
        device = torch.device(args.device)
        model = load_fgclip(args.model).to(device).eval()
        size = args.image_size or model.clip.config.vision_config.image_size
        tok = load_tokenizer(args.tokenizer, args.model, model.clip.config.text_config.vocab_size)
        results: dict[str, float] = {}
        if args.fgovd:
            entries, skipped = load_fgovd(args.fgovd, size, args.images)
            results["fgovd_top1"] = region_accuracy(model, tok, entries, device)
            results["fgovd_boxes"] = sum(len(e["boxes"]) for e in entries)
            if skipped:
                results["fgovd_skipped"] = skipped
        if args.shards:
            examples = shard_examples(args.shards, size, args.limit)
            results.update(retrieval_r1(model, tok, examples, device))
            hard = hard_negative_entries(examples)
            if hard:
                results["shard_hard_top1"] = region_accuracy(model, tok, hard, device)
            results["n_samples"] = len(examples)
    except (UsageError, FileNotFoundError, RuntimeError, ValueError, KeyError) as exc:
        return _fail("finehard eval", exc)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


DTYPE_NAMES = ("bfloat16", "float16", "float32")  # training.convert.DTYPES (that module imports torch)


def convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finehard convert",
                                description="Convert FG-CLIP checkpoints between upstream FG-CLIP's layout and this "
                                            "project's (either way; a plain CLIP folder converts too).")
    p.add_argument("src", help="checkpoint folder: upstream FG-CLIP, finehard train final/, project layout or plain CLIP")
    p.add_argument("dst", help="folder to write")
    p.add_argument("--to", choices=("upstream", "project"), default=None,
                   help="layout to write (default: project for an upstream SRC, upstream otherwise)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="weights dtype (default: SRC's)")
    return p


def convert_main(argv: list[str]) -> int:
    """``finehard convert SRC DST [--to upstream|project] [--dtype ...]`` (see :mod:`training.convert`)."""
    args = convert_parser().parse_args(argv)
    try:
        if not os.path.isdir(args.src):  # the checks of training.convert.convert, before torch is imported
            raise FileNotFoundError(f"SRC {args.src!r} is not a folder; pass a local HF-format checkpoint folder")
        if os.path.abspath(args.src) == os.path.abspath(args.dst):
            raise ValueError("DST must differ from SRC")
        from training.convert import convert

        summary = convert(args.src, args.dst, args.to, args.dtype)
    except (FileNotFoundError, ValueError, OSError, KeyError) as exc:
        return _fail("finehard convert", exc)
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``train``, ``eval`` or ``convert`` followed by that command's flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "eval": eval_main, "convert": convert_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m training {train,eval,convert} [flags]  (see python -m training train --help)",
              file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
