"""2-process DDP on CPU (gloo, torch.multiprocessing.spawn) matches one process on the same global batch."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from training.train import build_optimizer, train_step
from training_fixtures import ddp_worker, fixed_batch, make_shards, tiny_model, tiny_train_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process(batch, stage):
    cfg = tiny_train_config(stage)
    model = tiny_model()
    model.set_stage(stage)
    opt = build_optimizer(model, cfg)
    losses = train_step(model, batch, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), cfg,
                        torch.device("cpu"))
    return losses, model.state_dict()


def _run_ddp(tmp_path, batch, stage):
    path = str(tmp_path / "batch.pt")
    torch.save(batch, path)
    mp.spawn(ddp_worker, args=(2, _free_port(), stage, path, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(str(tmp_path / f"rank{r}.pt"), weights_only=False) for r in range(2)]


@pytest.mark.slow  # two training processes
def test_ddp_stage1_loss_and_update_equal_single_process(tmp_path):
    batch = fixed_batch(make_shards(str(tmp_path / "shards"), n=8), 8)
    ref_losses, ref_params = _single_process(batch, 1)
    ranks = _run_ddp(tmp_path, batch, 1)
    for r in ranks:  # gathered global loss: every rank sees the whole 8-image batch
        assert abs(r["losses"]["global"] - ref_losses["global"]) < 1e-5
    for k, v in ref_params.items():
        assert torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]), k
        if k.endswith("k_proj.bias"):
            # Its true gradient is 0 (a key bias shifts every logit of a query alike); Adam's first step turns
            # the rounding noise of 0 into an update of up to lr, which depends on the summation order of the
            # rank-local logits vs one process. Every parameter with a real gradient must agree.
            continue
        assert torch.allclose(ranks[0]["params"][k], v, atol=1e-5), k


@pytest.mark.slow  # two training processes
def test_ddp_stage2_runs_with_a_rank_without_regions_or_negatives(tmp_path):
    batch = fixed_batch(make_shards(str(tmp_path / "shards"), n=8), 8, drop_regions=(4, 5, 6, 7))
    ranks = _run_ddp(tmp_path, batch, 2)
    assert ranks[1]["losses"]["regional"] == 0.0 and ranks[1]["losses"]["hard"] == 0.0
    assert ranks[0]["losses"]["hard"] > 0
    assert abs(ranks[0]["losses"]["global"] - ranks[1]["losses"]["global"]) < 1e-5
    for k, v in ranks[0]["params"].items():
        assert torch.equal(v, ranks[1]["params"][k]), k


@pytest.mark.slow  # two training processes
def test_torchrun_two_cpu_processes_end_to_end(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from training_fixtures import write_model_config

    shards = make_shards(str(tmp_path / "shards"), n=32, per_shard=8)
    cfg = write_model_config(str(tmp_path / "tiny.json"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "training", "train", "--stage", "2", "--model-config", cfg, "--shards", shards, "--output", str(out),
           "--steps", "2", "--batch-size", "4", "--image-size", "64", "--workers", "0", "--log-every", "1",
           "--warmup-steps", "1", "--log-level", "WARNING"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 only writes metrics
    assert (out / "final" / "model.safetensors").exists() and (out / "checkpoints" / "step_00000002.pt").exists()


def test_rank_local_logits_give_the_full_matrix_loss_and_gradients_on_two_gloo_ranks(tmp_path):
    from training.losses import clip_loss
    from training_fixtures import global_features, rank_local_worker

    mp.spawn(rank_local_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(str(tmp_path / f"loss_rank{r}.pt"), weights_only=False) for r in range(2)]
    feats = global_features()
    scale = torch.nn.Parameter(torch.tensor(2.6593))
    ref = clip_loss(feats["image"], feats["long_text"], scale.exp()) + clip_loss(feats["image"], feats["short_text"],
                                                                                 scale.exp())
    ref.backward()
    for r in ranks:
        assert abs(r["full"]["loss"] - float(ref)) < 1e-5  # every rank: the whole (8, 8) problem
        assert abs(r["rank_local"]["reported"] - float(ref)) < 1e-5  # the mean of the ranks' shares
        assert abs(r["rank_local"]["scale_grad"] - r["full"]["scale_grad"]) < 1e-5
        assert abs(r["rank_local"]["scale_grad"] - float(scale.grad)) < 1e-5
        for k in feats:
            assert torch.allclose(r["rank_local"]["grads"][k], r["full"]["grads"][k], atol=1e-6), k
    assert abs(ranks[0]["rank_local"]["loss"] - ranks[1]["rank_local"]["loss"]) > 1e-6  # really per-rank shares
