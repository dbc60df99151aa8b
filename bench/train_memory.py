"""Peak memory per rank of the global loss: rank-local logits (upstream's scheme) vs the full (N, N) matrices.

Each scheme runs in its own set of gloo processes (``--world`` ranks, ``--batch`` rows per rank,
``--dim`` features): forward and backward of ``training.losses.global_loss`` on random normalised
features. Every rank resets its peak resident memory (``/proc/self/clear_refs`` 5) right before the
step and reads ``VmHWM`` after it; the figure is that peak minus the resident memory before the
step. Also prints the logit bytes of both schemes at the paper's sizes. Ends with
``train_memory: ratio=X.XX`` (full-matrix peak / rank-local peak, the largest rank of each).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from bench.common import append_section  # noqa: E402


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rank(rank: int, world: int, port: int, rank_local: bool, batch: int, dim: int, out: str) -> None:
    import torch.distributed as dist

    from training.losses import global_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        feats = [torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_(True)
                 for _ in range(3)]
        scale = torch.nn.Parameter(torch.tensor(4.6052))
        dist.barrier()
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset the peak resident set (VmHWM) to the current one
        before = _status_kib("VmRSS")
        loss = global_loss(*feats, scale, rank_local=rank_local)
        loss.backward()
        peak = _status_kib("VmHWM") - before
        with open(os.path.join(out, f"{int(rank_local)}-{rank}.json"), "w", encoding="utf-8") as f:
            json.dump({"peak_mib": peak / 1024, "loss": float(loss.detach())}, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, batch: int, dim: int, rank_local: bool) -> list[float]:
    """Peak MiB of each rank for one scheme."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(world, _free_port(), rank_local, batch, dim, out), nprocs=world, join=True)
        rows = [json.load(open(os.path.join(out, f"{int(rank_local)}-{r}.json"), encoding="utf-8"))
                for r in range(world)]
    return [r["peak_mib"] for r in rows]


def logit_mib(per_rank: int, world: int, rank_local: bool) -> float:
    """MiB of one fp32 logit matrix of the global loss on one rank."""
    n = per_rank * world
    return (per_rank if rank_local else n) * n * 4 / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2, help="gloo ranks")
    p.add_argument("--batch", "--n", type=int, default=2048, help="rows per rank (make bench's --n sets it)")
    p.add_argument("--dim", type=int, default=512, help="feature width (512: ViT-B/16's projection)")
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args()
    if not os.path.exists("/proc/self/clear_refs"):
        print("train_memory: ratio=n/a (needs Linux /proc to reset the peak resident set)")
        return
    full = measure(args.world, args.batch, args.dim, rank_local=False)
    local = measure(args.world, args.batch, args.dim, rank_local=True)
    ratio = max(full) / max(local)
    setup = (f"global loss forward+backward, {args.world} gloo ranks x {args.batch} rows, dim {args.dim}, fp32 "
             f"on cpu; peak resident memory per rank above the pre-step level (VmHWM after clear_refs)")
    table = ["| scheme | logits per rank (one matrix) | peak per rank (MiB) |", "|---|---|---|",
             f"| full (N, N) on every rank | {logit_mib(args.batch, args.world, False):.0f} MiB | "
             f"{', '.join(f'{v:.0f}' for v in full)} |",
             f"| rank-local (n, N), upstream's | {logit_mib(args.batch, args.world, True):.0f} MiB | "
             f"{', '.join(f'{v:.0f}' for v in local)} |",
             "", "One fp32 logit matrix per rank at the paper's sizes (computed, not measured): "
             + "; ".join(f"{b} x {w} ranks: {logit_mib(b, w, False):.0f} MiB full vs {logit_mib(b, w, True):.0f} MiB "
                         f"rank-local" for b, w in ((384, 8), (512, 8), (384, 64)))]
    print(setup)
    print("\n".join(table))
    line = f"train_memory: ratio={ratio:.2f}"
    if not args.no_doc:
        append_section("Global-loss memory per rank (bench/train_memory.py)", [f"Setup: {setup}", "", *table, "", line])
    print(line)


if __name__ == "__main__":
    main()
