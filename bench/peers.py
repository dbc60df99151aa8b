"""Peers: read-to-shard throughput of ``finehard shards --stages ingest`` against the tools users would use.

Makes N local 640x480 noisy JPEGs and a parquet manifest, then times, in alternating rounds, each
as a fresh process (start-up included, the same for all):

* finehard ingest-only (read, full decode check, shard; ``--no-dedup``), in-process and with two
  worker processes (``--direct_running_mode=multi_processing --direct_num_workers=2``);
* img2dataset ``--resize_mode no --skip_reencode True`` with 2 processes, installed into a scratch
  venv (``.cache/img2dataset-venv``) when it can be; the row is skipped with a message otherwise;
* a plain loop: read, fully decode with PIL, write with ``webdataset.TarWriter`` (one process).

Prints images/s medians with min-max and ends with ``peers: ratio=X.XX`` (finehard in-process /
img2dataset, or / plain loop when img2dataset is absent). A second table times, on N synthetic
scenes, ``--stages ingest`` against the whole stub pipeline (all stages, spaCy real): what the
model stages cost on top of reading and writing.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (INPUT_CACHE, ROOT, bench_args, fresh_dir, make_input, markdown_table,  # noqa: E402
                          publish, run_child)

I2D_VENV = os.path.join(ROOT, ".cache", "img2dataset-venv")
I2D_VERSION = "1.47.0"
PER_SHARD = 1000

PLAIN_LOOP = """
import io, sys, os, pyarrow.parquet as pq, webdataset as wds
from PIL import Image
rows = pq.read_table(sys.argv[1]).to_pylist()
out = sys.argv[2]
tw, n = None, 0
for i, row in enumerate(rows):
    if i % int(sys.argv[3]) == 0:
        if tw: tw.close()
        tw = wds.TarWriter(os.path.join(out, f"{i // int(sys.argv[3]):05d}.tar"))
    data = open(row["url"], "rb").read()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # the full decode every checker must do
    tw.write({"__key__": f"{i:09d}", "jpg": data, "txt": row["caption"]})
    n += 1
tw.close()
print(n)
"""


def make_images(n: int, cache: str = INPUT_CACHE) -> tuple[str, str]:
    """N noisy 640x480 JPEGs (cached) and two manifests: paths (finehard, loop) and file:// URLs (img2dataset)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = os.path.join(cache, f"peers_n{n}")
    paths, urls = os.path.join(folder, "manifest.parquet"), os.path.join(folder, "manifest_urls.parquet")
    if os.path.exists(os.path.join(folder, ".complete")):
        return paths, urls
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        base = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None] * np.array([1.0, 0.6, 0.3])
        noise = rng.normal(0, 24, (480, 640, 3))  # noisy: compresses like a photo, not like a flat colour
        pixels = np.clip(base + noise + rng.integers(0, 60), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"img_{i:06d}.jpg")
        Image.fromarray(pixels).save(path, quality=90)
        files.append(path)
    captions = [f"picture number {i}" for i in range(n)]
    pq.write_table(pa.table({"url": files, "caption": captions}), paths)
    pq.write_table(pa.table({"url": ["file://" + f for f in files], "caption": captions}), urls)
    open(os.path.join(folder, ".complete"), "w").close()
    return paths, urls


def img2dataset_bin() -> tuple[Optional[str], str]:
    """The img2dataset executable of a scratch venv, installed on first use; (None, why) when it cannot be."""
    exe = os.path.join(I2D_VENV, "bin", "img2dataset")
    if os.path.exists(exe):
        return exe, ""
    try:
        subprocess.run([sys.executable, "-m", "venv", I2D_VENV], check=True, capture_output=True, timeout=300)
        subprocess.run([os.path.join(I2D_VENV, "bin", "pip"), "install", "-q", f"img2dataset=={I2D_VERSION}"],
                       check=True, capture_output=True, text=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        shutil.rmtree(I2D_VENV, ignore_errors=True)
        detail = getattr(e, "stderr", "") or str(e)
        return None, f"img2dataset could not be installed ({detail.strip().splitlines()[-1][:160] if detail else e})"
    return (exe, "") if os.path.exists(exe) else (None, "img2dataset installed no executable")


def contenders(paths: str, urls: str, i2d: Optional[str]) -> dict[str, Any]:
    finehard = [sys.executable, "-m", "pipeline", "shards", "--input", paths, "--stages", "ingest", "--no-dedup",
                "--samples-per-shard", str(PER_SHARD), "--progress-every-s", "0"]
    out = {
        "finehard ingest, in-process": lambda o: finehard + ["--output", o],
        "finehard ingest, 2 workers": lambda o: finehard + ["--output", o, "--direct_running_mode=multi_processing",
                                                            "--direct_num_workers=2"],
        "plain loop (PIL decode + TarWriter)": lambda o: [sys.executable, "-c", PLAIN_LOOP, paths, o, str(PER_SHARD)],
    }
    if i2d:
        out["img2dataset --skip_reencode, 2 processes"] = lambda o: [
            i2d, "--url_list", urls, "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
            "--output_format", "webdataset", "--output_folder", o, "--processes_count", "2", "--thread_count", "8",
            "--resize_mode", "no", "--skip_reencode", "True", "--number_sample_per_shard", str(PER_SHARD),
            "--enable_wandb", "False"]
    return out


def measure(n: int, rounds: int, use_img2dataset: bool) -> tuple[dict[str, list[float]], str]:
    paths, urls = make_images(n)
    i2d, why = img2dataset_bin() if use_img2dataset else (None, "img2dataset not asked for (--no-img2dataset)")
    runs = contenders(paths, urls, i2d)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):  # alternating: every contender once per round
        for name, argv in runs.items():
            out = fresh_dir("peers")
            if "finehard" not in name:
                os.makedirs(out, exist_ok=True)
            else:
                shutil.rmtree(out)
            run = run_child(argv(out))
            if run.returncode != 0:
                raise RuntimeError(f"{name} failed (rc={run.returncode}):\n{run.stderr[-3000:]}")
            rates[name].append(n / run.wall_s)
            shutil.rmtree(out, ignore_errors=True)
    return rates, why


def stub_stages(n: int, rounds: int) -> dict[str, list[float]]:
    """images/s of ``--stages ingest`` and of all stages with the stub engines, on N synthetic scenes."""
    manifest = make_input(n)
    base = [sys.executable, "-m", "pipeline", "shards", "--input", manifest, "--samples-per-shard", str(PER_SHARD),
            "--progress-every-s", "0", "--no-dedup"]
    runs = {"ingest only": ["--stages", "ingest"], "all stages, stub engines": []}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, extra in runs.items():
            out = fresh_dir("stages")
            shutil.rmtree(out)
            run = run_child(base + ["--output", out, *extra])
            if run.returncode != 0:
                raise RuntimeError(f"{name} failed (rc={run.returncode}):\n{run.stderr[-3000:]}")
            rates[name].append(n / run.wall_s)
            shutil.rmtree(out, ignore_errors=True)
    return rates


def main(argv: Optional[list[str]] = None) -> int:
    args = bench_args("finehard ingest-only vs img2dataset vs a plain decode-and-write loop", 3000, argv,
                      extra=lambda p: (p.add_argument("--rounds", type=int, default=3),
                                       p.add_argument("--no-img2dataset", action="store_true",
                                                      help="skip the img2dataset row (no scratch venv)")))
    rates, why = measure(args.n, args.rounds, not args.no_img2dataset)
    if why:
        print(f"peers: skipped img2dataset: {why}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = [[name, round(med[name], 1), f"{min(v):.1f}-{max(v):.1f}"] for name, v in rates.items()]
    lines = markdown_table(["contender", "images/s (median)", "min-max"], rows)
    stages = stub_stages(args.n, args.rounds)
    smed = {k: statistics.median(v) for k, v in stages.items()}
    lines += ["", f"On {args.n} synthetic scenes (make_input), --no-dedup:", ""]
    lines += markdown_table(["finehard", "images/s (median)", "min-max"],
                            [[k, round(smed[k], 1), f"{min(v):.1f}-{max(v):.1f}"] for k, v in stages.items()])
    lines += ["", f"all stub stages / ingest only: {smed['all stages, stub engines'] / smed['ingest only']:.2f}"]
    ours = med["finehard ingest, in-process"]
    peer = next((k for k in med if k.startswith("img2dataset")), "plain loop (PIL decode + TarWriter)")
    ratio_line = f"peers: ratio={ours / med[peer]:.2f}"
    extra = "; ".join(f"finehard in-process / {k}: {ours / med[k]:.2f}" for k in med if k != "finehard ingest, in-process")
    setup = (f"n={args.n} local 640x480 noisy JPEGs, parquet manifest, {args.rounds} alternating rounds, each run a "
             f"fresh process (start-up included); ratio = finehard in-process / {peer}. {extra}")
    return publish(args, "Read-to-shard against peers", "bench/peers.py", setup, lines, ratio_line)


if __name__ == "__main__":
    sys.exit(main())
