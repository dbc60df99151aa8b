"""Training: optimisation step, empty regions/negatives, checkpoints, end-to-end train_main/eval_main, CLI errors."""
import json
import os

import pytest
import torch
from transformers import CLIPModel

from training.cli import eval_main, main, train_main
from training.config import build_config
from training.losses import LossWeights, fgclip_loss
from training.weights import load_fgclip
from training.train import build_optimizer, load_checkpoint, lr_factor, save_checkpoint, train_step
from training_fixtures import IMAGE_SIZE, fixed_batch, make_shards, tiny_model, tiny_train_config, write_model_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("shards")), n=24, per_shard=8)


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    return write_model_config(str(tmp_path_factory.mktemp("cfg") / "tiny_clip.json"))


def _loss(model, batch, stage):
    with torch.no_grad():
        feats = model(batch, regional=stage == 2)
        return fgclip_loss(feats, model, LossWeights(1.0, 0.1 if stage == 2 else 0, 0.5 if stage == 2 else 0))


@pytest.mark.parametrize("stage", [1, 2])
def test_one_step_lowers_the_loss_on_a_fixed_batch(shards, stage):
    batch = fixed_batch(shards, 8)
    model = tiny_model()
    model.set_stage(stage)
    cfg = tiny_train_config(stage)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = _loss(model, batch, stage)
    reported = train_step(model, batch, opt, sched, cfg, CPU)
    after = _loss(model, batch, stage)
    assert abs(reported["loss"] - before["loss"].item()) < 1e-4
    assert after["loss"].item() < before["loss"].item()
    if stage == 2:
        assert before["hard"].item() > 0 and before["regional"].item() > 0


def test_no_hard_negatives_and_images_without_regions_train(shards):
    batch = fixed_batch(shards, 6, drop_regions=(0, 2, 3), drop_negs=True)
    assert batch["hard_index"].numel() == 0 and batch["region_boxes"].shape[0] > 0
    model = tiny_model()
    model.set_stage(2)
    cfg = tiny_train_config(2)
    opt = build_optimizer(model, cfg)
    out = train_step(model, batch, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), cfg, CPU)
    assert out["hard"] == 0.0 and out["regional"] > 0 and torch.isfinite(torch.tensor(out["loss"]))
    assert model.hard_logit_scale.grad is not None  # graph stayed valid for the missing term


def test_batch_with_no_regions_at_all_trains_in_stage2(shards):
    batch = fixed_batch(shards, 4, drop_regions=(0, 1, 2, 3))
    model = tiny_model()
    model.set_stage(2)
    cfg = tiny_train_config(2)
    opt = build_optimizer(model, cfg)
    out = train_step(model, batch, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), cfg, CPU)
    assert out["regional"] == 0.0 and out["hard"] == 0.0 and out["global"] > 0


def test_checkpoint_round_trip(tmp_path, shards):
    batch = fixed_batch(shards, 4)
    cfg = tiny_train_config(2)
    model = tiny_model()
    model.set_stage(2)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    train_step(model, batch, opt, sched, cfg, CPU)
    path = str(tmp_path / "ck" / "step_1.pt")
    save_checkpoint(path, model, opt, sched, 1, cfg)
    fresh = tiny_model(seed=123)
    fresh.set_stage(2)
    opt2 = build_optimizer(fresh, cfg)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5)
    assert load_checkpoint(path, fresh, opt2, sched2) == 1
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    s1 = train_step(model, batch, opt, sched, cfg, CPU)
    s2 = train_step(fresh, batch, opt2, sched2, cfg, CPU)  # same optimiser moments -> same step
    assert s1["global"] == pytest.approx(s2["global"], abs=1e-6)
    assert torch.allclose(model.clip.visual_projection.weight, fresh.clip.visual_projection.weight, atol=1e-6)


def test_lr_schedule_is_hf_cosine_with_warmup_as_upstream_trainer():
    from transformers import get_cosine_schedule_with_warmup

    cfg = tiny_train_config(1, warmup_steps=10, steps=110, schedule="cosine")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=110)
    factors = []
    for _ in range(111):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        hf.step()
    assert [lr_factor(s, cfg) for s in range(111)] == pytest.approx(factors, abs=1e-9)
    assert lr_factor(0, cfg) == 0.0 and lr_factor(5, cfg) == pytest.approx(0.5) and lr_factor(60, cfg) == pytest.approx(0.5)


def test_bundled_configs_stage2_upstream_script_stage1_paper():  # both recipes: tests/test_training_recipes.py
    s1, s2 = build_config(1, None), build_config(2, None)
    assert (s1.lr, s1.weight_decay, s1.betas, s1.warmup_steps) == (1e-4, 0.05, [0.9, 0.98], 200)
    # upstream scripts/train.sh + HF Trainer defaults; scripts/zero2.json clips nothing
    assert (s2.lr, s2.weight_decay, s2.betas, s2.eps, s2.warmup_steps) == (1e-6, 0.001, [0.9, 0.999], 1e-8, 200)
    assert (s2.steps, s2.epochs, s2.batch_size, s2.grad_clip, s2.max_logit_scale) == (0, 1, 512, 0.0, 0.0)
    assert (s2.w_global, s2.w_regional, s2.w_hard) == (1.0, 0.1, 0.5) and s1.schedule == s2.schedule == "cosine"
    assert s1.steps == 0 and s1.epochs == 1 and s1.precision == s2.precision == "auto"


def test_weight_decay_groups_are_upstreams():
    from torch import nn

    from training.train import decay_names

    model = tiny_model()
    model.set_stage(2)
    decay, keep = decay_names(model)
    norms = {f"{mn}.{pn}" if mn else pn for mn, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
             for pn, _ in mod.named_parameters(recurse=False)}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert set(keep) == {n for n in names if n.endswith(".bias") or n in norms}
    assert set(decay) | set(keep) == set(names) and not set(decay) & set(keep)
    for n in ("clip.logit_scale", "regional_logit_scale", "hard_logit_scale", "long_position_embedding",
              "clip.text_model.embeddings.token_embedding.weight", "clip.vision_model.embeddings.class_embedding",
              "long_text_projection.weight", "clip.visual_projection.weight"):
        assert n in decay, n  # upstream decays embeddings, projections and temperatures too
    assert "clip.vision_model.post_layernorm.weight" in keep and "clip.text_model.encoder.layers.0.mlp.fc1.bias" in keep
    opt = build_optimizer(model, build_config(2, None))
    assert opt.param_groups[0]["weight_decay"] == 0.001 and opt.param_groups[1]["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8


def _common(shards, out, steps):
    return ["--shards", shards, "--output", out, "--steps", str(steps), "--batch-size", "4", "--image-size",
            str(IMAGE_SIZE), "--workers", "0", "--warmup-steps", "1", "--log-every", "1", "--shuffle-buffer", "8",
            "--lr", "1e-4"]


def test_train_main_stage1_then_stage2_writes_reloadable_models(tmp_path, shards, model_config):
    out1, out2 = str(tmp_path / "s1"), str(tmp_path / "s2")
    assert train_main(["--stage", "1", "--model-config", model_config] + _common(shards, out1, 2)) == 0
    assert train_main(["--stage", "2", "--model", out1 + "/final"] + _common(shards, out2, 2)) == 0
    rows = [json.loads(line) for line in open(os.path.join(out2, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2] and all("hard" in r for r in rows)
    clip = CLIPModel.from_pretrained(out2 + "/final")
    assert clip.config.vision_config.image_size == IMAGE_SIZE
    fg = load_fgclip(out2 + "/final")
    assert torch.equal(fg.clip.text_projection.weight, clip.text_projection.weight)
    s1 = load_fgclip(out1 + "/final")
    assert not torch.equal(s1.long_text_projection.weight, fg.long_text_projection.weight)  # stage 2 trained it
    # stage 1 does not train the regional/hard temperatures: they are saved equal to the trained global one,
    # so stage 2 starts them where upstream's train_fgclip.py would (from logit_scale)
    assert s1.regional_logit_scale.item() == s1.hard_logit_scale.item() == s1.clip.logit_scale.item()
    assert s1.clip.logit_scale.item() != pytest.approx(2.6592, abs=1e-6)  # trained away from its init
    assert json.load(open(out2 + "/final/train_config.json"))["stage"] == 2


def test_default_steps_are_one_epoch_and_batch_sizes_are_printed(tmp_path, shards, model_config, capsys):
    out = str(tmp_path / "epoch")
    capsys.readouterr()
    assert train_main(["--stage", "2", "--model-config", model_config, "--shards", shards, "--output", out,
                       "--batch-size", "5", "--image-size", str(IMAGE_SIZE), "--workers", "0", "--log-every", "1",
                       "--shuffle-buffer", "8", "--warmup-steps", "2", "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr().out
    assert "per-device batch 5 x 1 process(es) = global batch 5" in printed
    assert "5 steps (1 epoch(s) of 24 samples)" in printed  # ceil(24 / 5), steps 0 in configs/stage2-upstream.yaml
    assert "betas (0.9, 0.999) eps 1e-08 weight decay 0.001" in printed
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(r["skipped_regions"] == 0 for r in rows)
    assert rows[0]["lr"] == pytest.approx(0.5e-6)  # after update 0 (lr 0), warmup 1/2 of 1e-6
    assert json.load(open(os.path.join(out, "final", "train_config.json")))["steps"] == 5


def test_train_main_resume_continues_from_checkpoint(tmp_path, shards, model_config):
    out = str(tmp_path / "run")
    args = ["--stage", "2", "--model-config", model_config, "--save-every", "2"]
    assert train_main(args + _common(shards, out, 2)) == 0
    assert train_main(args + _common(shards, out, 3) + ["--resume"]) == 0
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert steps == [1, 2, 3]
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["step_00000002.pt", "step_00000003.pt"]


def test_eval_main_fgovd_and_retrieval(tmp_path, shards, model_config, capsys):
    out = str(tmp_path / "m")
    assert train_main(["--stage", "1", "--model-config", model_config] + _common(shards, out, 1)) == 0
    from core.synthetic import make_scene

    img, scene = make_scene(0, 5)
    img.save(tmp_path / "scene.png")
    o = scene["objects"][0]
    x1, y1, x2, y2 = o["box"]
    with open(tmp_path / "fgovd.jsonl", "w") as f:
        f.write(json.dumps({"img_path": "scene.png", "bbox": [x1, y1, x2 - x1, y2 - y1], "pos_expression": o["expr"],
                            "neg_expression": ["a dog", "a cat"]}) + "\n")
    capsys.readouterr()
    rc = eval_main(["--model", out + "/final", "--shards", shards, "--fgovd", str(tmp_path / "fgovd.jsonl"),
                    "--json", str(tmp_path / "r.json")])
    assert rc == 0
    res = json.load(open(tmp_path / "r.json"))
    assert res["n_samples"] == 24 and 0 <= res["fgovd_top1"] <= 1
    assert {"i2t_r1_long", "t2i_r1_long", "i2t_r1_short", "t2i_r1_short", "shard_hard_top1"} <= set(res)
    assert json.loads(capsys.readouterr().out) == res


@pytest.mark.parametrize("argv, needle", [
    (["--stage", "3", "--shards", "x", "--output", "y"], "--stage"),
    (["--stage", "1", "--shards", "/nonexistent/a.tar", "--output", "y", "--model-config", "c"], "does not exist"),
    (["--stage", "1", "--output", "y"], "--shards"),
    (["--stage", "1", "--shards", "SHARDS", "--output", "y"], "--model"),
    (["--stage", "1", "--shards", "SHARDS", "--output", "y", "--model", "/nope"], "not a folder"),
    (["--stage", "1", "--shards", "SHARDS", "--output", "y", "--model-config", "C", "--config", "/no.yaml"], "config file"),
    (["--stage", "1", "--shards", "SHARDS", "--output", "y", "--model-config", "C", "--precision", "fp8"], "precision"),
])
def test_wrong_flags_fail_fast_with_one_line(argv, needle, shards, model_config, capsys):
    argv = [shards if a == "SHARDS" else model_config if a == "C" else a for a in argv]
    capsys.readouterr()
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("finehard train: error:")


def test_deepspeed_flag_without_package_fails_clearly(tmp_path, shards, model_config, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "deepspeed", None)  # import deepspeed -> ImportError
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert train_main(["--stage", "1", "--model-config", model_config, "--deepspeed", str(ds)]
                      + _common(shards, str(tmp_path / "o"), 1)) == 2
    assert "pip install deepspeed" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")  # failed before doing any work


def test_eval_and_module_entry_errors(capsys):
    assert eval_main(["--model", "/nope", "--shards", "x"]) == 2
    assert main(["frobnicate"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_gradients(shards):
    batch = fixed_batch(shards, 4)
    grads = []
    for ckpt in (False, True):
        model = tiny_model()
        model.set_stage(2)
        calls = []
        if ckpt:
            model.enable_checkpointing()
            for layer in model.clip.vision_model.encoder.layers:
                inner = layer._gradient_checkpointing_func
                layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
        model.train()
        loss = fgclip_loss(model(batch, regional=True), model, LossWeights())["loss"]
        loss.backward()
        assert len(calls) == (2 if ckpt else 0)  # both vision blocks went through checkpointing
        grads.append(model.clip.vision_model.encoder.layers[0].mlp.fc1.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_flag_without_gpu_fails_clearly(tmp_path, shards, model_config, capsys):
    rc = train_main(["--stage", "1", "--model-config", model_config, "--device", "cuda"]
                    + _common(shards, str(tmp_path / "o"), 1))
    assert rc == 2 and "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_main_stage2_on_cuda_bf16(tmp_path, shards, model_config):
    out = str(tmp_path / "gpu")
    assert train_main(["--stage", "2", "--model-config", model_config, "--device", "cuda"]
                      + _common(shards, out, 2)) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    loaded = CLIPModel.from_pretrained(out + "/final")
    with open(model_config) as f:
        expected = json.load(f)
    assert loaded.config.projection_dim == expected["projection_dim"]  # the trained model, not a default one
    assert all(torch.isfinite(p).all() for p in loaded.parameters())  # bf16 steps left no NaN/inf weights


def test_python_dash_m_training_entry_prints_usage():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "training"], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "train" in proc.stderr and "eval" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "training", "train", "--help"], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--grad-checkpointing" in proc.stdout and "--warmup-steps" in proc.stdout


def test_every_config_value_is_overridable_from_the_cli():
    from training.cli import train_parser

    args = train_parser().parse_args(["--stage", "2", "--shards", "s", "--output", "o", "--lr", "3e-6", "--betas",
                                      "0.8", "0.9", "--warmup-steps", "7", "--w-hard", "0.25", "--image-size", "336"])
    cfg = build_config(2, None, args)
    assert (cfg.lr, cfg.betas, cfg.warmup_steps, cfg.w_hard, cfg.image_size) == (3e-6, [0.8, 0.9], 7, 0.25, 336)
    assert cfg.weight_decay == 0.001  # untouched values come from configs/stage2-upstream.yaml
