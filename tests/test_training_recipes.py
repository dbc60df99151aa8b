"""Recipes (upstream, paper) for both stages, clipping, DeepSpeed config, named architectures, loader workers, shuffling."""
import json
import math
import os
import re
import sys
import types

import pytest
import torch

from training.cli import train_main
from training.config import CONFIG_DIR, ConfigError, auto_workers, build_config, default_config_path
from training_fixtures import IMAGE_SIZE, fixed_batch, make_shards, tiny_model, tiny_train_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("shards")), n=16, per_shard=8)


def _args(**kw):
    from training.cli import train_parser

    argv = ["--stage", "1", "--shards", "s", "--output", "o"]
    for k, v in kw.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    return train_parser().parse_args(argv)


def test_upstream_is_the_default_recipe_and_both_stages_hold_its_values():
    s1, s2 = build_config(1, None), build_config(2, None)
    assert s1.recipe == s2.recipe == "upstream"
    # stage 1: the paper's schedule (upstream ships no stage-1 script), upstream's code conventions
    assert (s1.lr, s1.weight_decay, s1.betas, s1.eps, s1.warmup_steps) == (1e-4, 0.05, [0.9, 0.98], 1e-8, 200)
    assert (s1.batch_size, s1.epochs, s1.steps, s1.init_temperature) == (384, 1, 0, 0.0)
    # stage 2: scripts/train.sh + HF Trainer defaults; fgclip.py loss weights
    assert (s2.lr, s2.weight_decay, s2.betas, s2.eps, s2.warmup_steps) == (1e-6, 0.001, [0.9, 0.999], 1e-8, 200)
    assert (s2.batch_size, s2.epochs, s2.w_global, s2.w_regional, s2.w_hard) == (512, 1, 1.0, 0.1, 0.5)
    # scripts/zero2.json sets no gradient_clipping: upstream does not clip
    assert s1.grad_clip == s2.grad_clip == 0.0
    assert s1.precision == s2.precision == "auto" and s1.schedule == s2.schedule == "cosine"


def test_the_paper_recipe_of_both_stages():
    p1, p2 = build_config(1, None, _args(recipe="paper")), build_config(2, None, _args(recipe="paper"))
    assert p1.recipe == p2.recipe == "paper"
    assert (p1.lr, p1.weight_decay, p1.betas, p1.warmup_steps, p1.batch_size) == (1e-4, 0.05, [0.9, 0.98], 200, 384)
    assert p1.init_temperature == 0.07  # tau initialised to 0.07
    assert (p2.lr, p2.weight_decay, p2.betas, p2.warmup_steps, p2.batch_size) == (1e-6, 0.001, [0.9, 0.98], 50, 512)
    assert (p2.w_regional, p2.w_hard, p2.grad_clip) == (0.1, 0.5, 0.0)
    assert build_config(2, None, _args(recipe="paper", warmup_steps=7)).warmup_steps == 7  # flags still win


BOOKKEEPING = {"recipe", "stage", "steps", "seed", "log_every", "save_every", "w_regional", "w_hard"}


@pytest.mark.parametrize("name", ["stage1-upstream", "stage1-paper", "stage2-upstream", "stage2-paper"])
def test_every_value_in_a_bundled_recipe_cites_the_paper_upstream_or_the_project(name):
    text = open(os.path.join(CONFIG_DIR, name + ".yaml"), encoding="utf-8").read()
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s*([^#]*?)\s*(#.*)?$", line)
        if not m or m.group(1) in BOOKKEEPING and not (m.group(1).startswith("w_") and name.startswith("stage2")):
            continue
        note = m.group(3) or ""
        assert re.search(r"\b(paper|upstream|project)\b", note), f"{name}: {line!r} names no source"
    assert "910B" not in text or "data processing" in text  # the paper's NPUs processed data, not this training


def test_config_and_recipe_together_fail_with_one_line(capsys, shards):
    with pytest.raises(ConfigError, match="not both"):
        build_config(1, default_config_path(1), _args(recipe="paper"))
    rc = train_main(["--stage", "1", "--shards", shards, "--output", "o", "--model", "config:tiny",
                     "--config", default_config_path(1, "paper"), "--recipe", "paper"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--recipe" in err[0]
    assert build_config(1, default_config_path(1, "paper")).recipe == "paper"


@pytest.mark.parametrize("clip, calls", [(0.0, 0), (1.0, 1)])
def test_gradients_are_clipped_only_when_the_recipe_says_so(shards, monkeypatch, clip, calls):
    import training.train as train_mod

    seen = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(train_mod.nn.utils, "clip_grad_norm_", lambda p, m, *a, **k: seen.append(m) or real(p, m))
    model = tiny_model()
    model.set_stage(1)
    cfg = tiny_train_config(1, grad_clip=clip)
    opt = train_mod.build_optimizer(model, cfg)
    train_mod.train_step(model, fixed_batch(shards, 4), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                         cfg, CPU)
    assert seen == [clip] * calls


def _saved_model_with_logit_scale(path, value):
    from training.weights import save_fgclip

    m = tiny_model()
    with torch.no_grad():
        m.clip.logit_scale.fill_(value)
    save_fgclip(m, path)
    return path


@pytest.mark.parametrize("recipe, expected", [("paper", math.log(1 / 0.07)), ("upstream", 4.6052)])
def test_the_paper_recipe_starts_stage_1_at_tau_0_07_and_upstream_keeps_the_models(tmp_path, shards, recipe, expected):
    from training.weights import load_fgclip

    start = _saved_model_with_logit_scale(str(tmp_path / "start"), 4.6052)
    out = str(tmp_path / recipe)
    assert train_main(["--stage", "1", "--recipe", recipe, "--model", start, "--shards", shards, "--output", out,
                       "--steps", "1", "--batch-size", "4", "--image-size", str(IMAGE_SIZE), "--workers", "0",
                       "--log-level", "WARNING"]) == 0  # one update in warmup: lr 0, the start value is kept
    assert load_fgclip(out + "/final").clip.logit_scale.item() == pytest.approx(expected, abs=1e-4)


def test_deepspeed_config_takes_the_recipes_clipping_batch_and_precision(tmp_path):
    from training.train import deepspeed_config

    up = build_config(2, None)
    ds = deepspeed_config("zero2", up, world_size=8, device_type="cuda")
    assert ds["zero_optimization"]["stage"] == 2
    assert (ds["gradient_clipping"], ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (0.0, 512, 4096)
    assert ds["gradient_accumulation_steps"] == 1 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert deepspeed_config("zero2", build_config(2, None, _args(grad_clip=1.0)), 1, "npu")["gradient_clipping"] == 1.0
    assert deepspeed_config("zero2", up, 1, "cpu")["bf16"]["enabled"] is False
    like_upstream = tmp_path / "zero2.json"  # no gradient_clipping key, "auto" batch sizes
    like_upstream.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"},
                                         "train_micro_batch_size_per_gpu": "auto"}))
    assert deepspeed_config(str(like_upstream), build_config(2, None, _args(grad_clip=0.5)), 2, "cuda")[
        "gradient_clipping"] == 0.5
    clipping = tmp_path / "clip.json"
    clipping.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}))
    with pytest.raises(ConfigError, match="--grad-clip 1.0"):
        deepspeed_config(str(clipping), up, 1, "cuda")  # never silently ignore the recipe's clipping
    with pytest.raises(FileNotFoundError, match="--deepspeed zero2"):
        deepspeed_config("zero3", up, 1, "cuda")


def test_deepspeed_gets_the_filled_config_from_train_main(tmp_path, shards, monkeypatch, capsys):
    seen = {}

    def initialize(model, optimizer, lr_scheduler, config):  # TEST DOUBLE of deepspeed.initialize
        seen.update(config)
        raise RuntimeError("fake deepspeed stops here")

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    rc = train_main(["--stage", "2", "--model", "config:tiny", "--shards", shards, "--output", str(tmp_path / "o"),
                     "--deepspeed", "zero2", "--steps", "1", "--batch-size", "4", "--image-size", str(IMAGE_SIZE),
                     "--workers", "0", "--log-level", "WARNING"])
    assert rc == 2 and "fake deepspeed stops here" in capsys.readouterr().err
    assert seen["gradient_clipping"] == 0.0 and seen["train_micro_batch_size_per_gpu"] == 4
    assert seen["zero_optimization"]["stage"] == 2


def test_named_architectures_build_random_init_models_and_unknown_names_fail_fast(tmp_path, shards, capsys):
    from transformers import CLIPConfig

    from training.weights import build_model
    from training.named_configs import clip_config_dict

    b16 = CLIPConfig(**clip_config_dict("config:vit-b-16"))
    assert (b16.vision_config.hidden_size, b16.vision_config.patch_size, b16.vision_config.image_size) == (768, 16, 224)
    assert (b16.text_config.hidden_size, b16.text_config.vocab_size, b16.projection_dim) == (512, 49408, 512)
    assert b16.text_config.eos_token_id == 49407  # OpenAI CLIP's, so its tokenizer fits
    l14 = CLIPConfig(**clip_config_dict("config:vit-l-14-336"))
    assert (l14.vision_config.hidden_size, l14.vision_config.num_hidden_layers, l14.vision_config.image_size,
            l14.vision_config.patch_size, l14.projection_dim) == (1024, 24, 336, 14, 768)
    tiny = build_model("config:tiny")
    assert tiny.clip.config.vision_config.hidden_size == 64 and tiny.long_len == 248
    out = str(tmp_path / "named")
    assert train_main(["--stage", "1", "--model", "config:tiny", "--shards", shards, "--output", out, "--steps", "1",
                       "--batch-size", "4", "--image-size", str(IMAGE_SIZE), "--workers", "0",
                       "--log-level", "WARNING"]) == 0
    assert os.path.isfile(out + "/final/model.safetensors")
    capsys.readouterr()
    assert train_main(["--stage", "1", "--model", "config:vit-h-14", "--shards", shards, "--output", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config:vit-b-16" in err[0] and "unknown architecture" in err[0]


def test_loader_workers_default_from_the_machines_cores(monkeypatch):
    from training.train import loader_workers

    assert auto_workers(1, cpus=2) == 1 and auto_workers(1, cpus=1) == 0
    assert auto_workers(1, cpus=64) == 8  # upstream's --dataloader_num_workers 8 is the cap
    assert auto_workers(8, cpus=16) == 1 and auto_workers(4, cpus=40) == 8
    cfg = build_config(2, None)
    assert cfg.workers == -1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    assert loader_workers(cfg) == 5  # 12 cores / 2 processes, one kept for the training loop
    assert loader_workers(build_config(2, None, _args(workers=3))) == 3


def _keys(pipe, n):
    out = []
    for e in pipe:
        out.append(e["key"])
        if len(out) == n:
            break
    return out


def test_full_shuffle_reshuffles_every_sample_each_epoch_and_ranks_share_none(shards, monkeypatch):
    from training.data import expand_shards, sample_pipeline

    urls = expand_shards(shards)
    everything = sorted(_keys(sample_pipeline(urls, IMAGE_SIZE, 4, epochs=1, split=False), 100))
    assert len(everything) == 16
    two = _keys(sample_pipeline(urls, IMAGE_SIZE, 4, epochs=2, shuffle="full", order_seed=3, split=False), 100)
    first, second = two[:16], two[16:]
    assert sorted(first) == sorted(second) == everything and first != second  # a new order each epoch
    shard0 = set(_keys(sample_pipeline(urls[:1], IMAGE_SIZE, 4, epochs=1, split=False), 100))
    assert 0 < len(shard0 & set(first[:8])) < 8  # not shard by shard: samples of both shards mixed
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append(_keys(sample_pipeline(urls, IMAGE_SIZE, 4, seed=rank, epochs=1, shuffle="full", order_seed=3),
                            100))
    assert len(shares[0]) == len(shares[1]) == 8 and sorted(shares[0] + shares[1]) == everything


def test_stream_shuffle_ranks_take_disjoint_shards_though_their_buffer_seeds_differ(tmp_path, monkeypatch):
    from training.data import expand_shards, sample_pipeline

    urls = expand_shards(make_shards(str(tmp_path / "many"), n=32, per_shard=4))
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append(_keys(sample_pipeline(urls, IMAGE_SIZE, 4, shuffle_buffer=4, seed=100 + rank, epochs=1,
                                            order_seed=0), 100))
    assert not set(shares[0]) & set(shares[1]) and len(shares[0]) + len(shares[1]) == 32
